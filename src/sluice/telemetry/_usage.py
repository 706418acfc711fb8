"""Usage per principal per day (requests, tokens in and out), per key, per user and per tenant, kept in the
state store so every gateway replica adds to the same numbers and the admin API can read them.

Increments are summed in memory and written every ``flush_s`` (one round trip per flush, whatever the load), and
at shutdown; a gateway that dies loses at most that last interval. While the state store is unavailable the
increments are kept (and logged once) and written when it is back; reading usage then answers 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Literal, Protocol, cast

from sluice.clock import Clock
from sluice.state import Client, MemoryState, RedisState, State

log = logging.getLogger("sluice")

UsageScope = Literal["key", "user", "tenant"]
FIELDS = ("requests", "tokens_in", "tokens_out")
RETAIN_DAYS = 400
_DAY_S = 86_400.0
WRITE_TIMEOUT_S = 2.0  # a flush is background work, and may carry many principals: no request waits on it


@dataclass(frozen=True, slots=True)
class Usage:
    requests: int = 0
    tokens_in: int = 0
    tokens_out: int = 0


Counts = dict[str, dict[str, int]]  # store key -> field -> increment


class UsageBackend(Protocol):
    async def add(self, counts: Counts) -> None: ...

    async def get(self, key: str) -> dict[str, int]: ...

    async def close(self) -> None: ...


class MemoryUsage:
    def __init__(self) -> None:
        self._data: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(FIELDS, 0))

    async def add(self, counts: Counts) -> None:
        for key, fields in counts.items():
            for name, n in fields.items():
                self._data[key][name] += n

    async def get(self, key: str) -> dict[str, int]:
        return dict(self._data.get(key, {}))

    async def close(self) -> None:
        return None


class RedisUsage:
    """Usage in the process's state store. A write is not retried on a fresh connection (an increment sent twice
    would count twice): it stays pending in the ledger for the next flush. A read while Redis is unavailable raises
    ``StateUnavailableError`` (503)."""

    def __init__(self, state: RedisState) -> None:
        self._state = state

    async def add(self, counts: Counts) -> None:
        async def write(client: Client) -> None:
            async with client.pipeline(transaction=False) as pipe:
                for key, fields in counts.items():
                    for name, n in fields.items():
                        pipe.hincrby(key, name, n)
                    pipe.expire(key, RETAIN_DAYS * 86400)
                await pipe.execute()

        await self._state.run(write, "usage write", idempotent=False, timeout_s=WRITE_TIMEOUT_S)

    async def get(self, key: str) -> dict[str, int]:
        async def read(client: Client) -> dict[bytes, bytes]:
            return cast("dict[bytes, bytes]", await client.hgetall(key))

        return {k.decode(): int(v) for k, v in (await self._state.run(read, "usage read")).items()}

    async def close(self) -> None:
        return None  # the state store is the process's, closed by its owner


class UsageLedger:
    kept_days = RETAIN_DAYS  # a day's counts expire this long after its last write

    def __init__(self, backend: UsageBackend, clock: Clock, *, flush_s: float = 1.0, prefix: str = "{sluice}") -> None:
        self._backend = backend
        self._clock = clock
        self._flush_s = flush_s
        self._prefix = prefix
        self._pending: Counts = {}
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self._day, self._day_from_s = "", float("inf")  # today's date, and the wall time it began at

    @classmethod
    def for_state(cls, state: State, clock: Clock) -> UsageLedger:
        return cls(MemoryUsage() if isinstance(state, MemoryState) else RedisUsage(state), clock)

    def add(self, key_id: str, user: str, tenant: str, tokens_in: int, tokens_out: int) -> None:
        day = self.today()
        pending = self._pending
        for scope, ident in (("key", key_id), ("user", user), ("tenant", tenant)):
            key = self._key(day, scope, ident)
            fields = pending.get(key)
            if fields is None:
                fields = pending[key] = dict.fromkeys(FIELDS, 0)
            fields["requests"] += 1
            fields["tokens_in"] += tokens_in
            fields["tokens_out"] += tokens_out

    async def read(self, scope: UsageScope, ident: str, day: str | None = None) -> Usage:
        await self.flush()
        fields = await self._backend.get(self._key(day or self.today(), scope, ident))
        return Usage(**{name: fields.get(name, 0) for name in FIELDS})

    def today(self) -> str:
        """The UTC day of the clock's wall time (worked out once a day: it is asked once a request)."""
        wall = self._clock.wall()
        if not self._day_from_s <= wall < self._day_from_s + _DAY_S:
            date = dt.datetime.fromtimestamp(wall, dt.UTC).date()
            self._day_from_s = dt.datetime(date.year, date.month, date.day, tzinfo=dt.UTC).timestamp()
            self._day = date.isoformat()
        return self._day

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._flush_forever())

    async def flush(self) -> None:
        if not self._pending:
            return
        counts, self._pending = self._pending, {}
        try:
            await self._backend.add(counts)
        except Exception as exc:  # noqa: BLE001 - keep the counts for the next flush rather than lose them
            if not self._failing:  # once until a write lands again, not once a flush
                log.warning("could not write usage (%s); keeping it until it can be written", exc)
            self._failing = True
            for key, fields in counts.items():
                mine = self._pending.setdefault(key, dict.fromkeys(FIELDS, 0))
                for name, n in fields.items():
                    mine[name] += n
            return
        if self._failing:
            self._failing = False
            log.warning("usage written again")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
        await self._backend.close()

    async def _flush_forever(self) -> None:
        while True:
            await self._clock.sleep(self._flush_s)
            await self.flush()

    def _key(self, day: str, scope: str, ident: str) -> str:
        return f"{self._prefix}:usage:{day}:{scope}={ident}"
