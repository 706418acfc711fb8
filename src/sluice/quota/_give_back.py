"""What the Redis store still owes Redis after its caller moved on: voids of decisions whose caller stopped waiting
(a timeout, a lost connection, a client gone) and settlements that could not reach Redis.

Each is fenced by its decision's marker (lua/quota.lua), so sending one twice is harmless: they are retried, with
backoff and only while the state layer says Redis is up, until they land, or until they are moot (``give_up_at``:
a void's leases have expired by then, and over-charging is the safe side). Bounded: past ``limit`` the oldest is
dropped. Logged at most once per outage, not once per operation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sluice.clock import Clock
from sluice.errors import StateUnavailableError
from sluice.state import DOWN_ERRORS, RedisState

log = logging.getLogger("sluice.quota")

GIVE_BACK_LIMIT = 10_000
FIRST_BACKOFF_S = 0.05
MAX_ANSWERED_FAILURES = 5  # an operation Redis itself refuses (an error reply, not an outage) is dropped after these


@dataclass(slots=True)
class GiveBack:
    keys: list[str]
    ops: list[list[Any]]
    give_up_at: float | None  # clock time after which it is moot; None: until it lands
    attempts: int = 0


class GiveBackQueue:
    def __init__(self, send: Callable[[GiveBack], Awaitable[object]], state: RedisState, clock: Clock, *,
                 limit: int = GIVE_BACK_LIMIT) -> None:
        self._send = send
        self._state = state
        self._clock = clock
        self._limit = limit
        self._items: list[GiveBack] = []
        self._task: asyncio.Task[None] | None = None
        self._logged_outage = -1
        self.dropped = 0  # given up: moot, or pushed out by newer ones

    @property
    def waiting(self) -> int:
        """Operations not delivered yet (not counting a batch on its way)."""
        return len(self._items)

    def put(self, item: GiveBack) -> None:
        if len(self._items) >= self._limit:
            self._items.pop(0)
            self.dropped += 1
        self._items.append(item)
        if self._logged_outage != self._state.outages and not self._state.available:
            self._logged_outage = self._state.outages
            log.warning("quota operations wait for the state store (voids of decisions nobody waited for, "
                        "settlements): retried until they land")
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._deliver())

    async def drained(self) -> None:
        """Wait until everything queued landed or was given up (tests, shutdown)."""
        while self._task is not None:
            await asyncio.shield(self._task)

    async def close(self, grace_s: float = 1.0) -> None:
        """Deliver what can be within ``grace_s`` (nothing waits on a Redis known to be down), drop the rest."""
        if self._task is not None and self._state.available:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace_s):
                    await self.drained()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._items:
            log.warning("%d quota operation(s) never reached the state store", len(self._items))

    async def _deliver(self) -> None:
        backoff_s = FIRST_BACKOFF_S
        try:
            while self._items:
                await self._state.until_available()
                now = self._clock.now()
                items, self._items = self._items, []
                live = [i for i in items if i.give_up_at is None or i.give_up_at > now]
                self.dropped += len(items) - len(live)
                results = await asyncio.gather(*(self._send(i) for i in live), return_exceptions=True)
                failed = []
                for item, result in zip(live, results, strict=True):
                    if not isinstance(result, BaseException):
                        continue
                    item.attempts += 1
                    if isinstance(result, StateUnavailableError) and (
                            isinstance(result.__cause__, DOWN_ERRORS) or item.attempts < MAX_ANSWERED_FAILURES):
                        failed.append(item)
                    else:  # Redis answered, and refused it again and again: a bug, not an outage
                        self.dropped += 1
                        log.error("a quota give-back failed for good: %r (%r)", result, result.__cause__)
                if failed:
                    self._items[:0] = failed
                    await self._clock.sleep(backoff_s)
                    backoff_s = min(2 * backoff_s, self._state.retry_s)
                else:
                    backoff_s = FIRST_BACKOFF_S
        finally:
            self._task = None
