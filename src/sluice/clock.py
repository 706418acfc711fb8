"""Time, injected: nothing in Sluice reads the system clock directly.

``now()`` is monotonic seconds (for durations, deadlines and buckets); ``wall()`` is Unix time (for
``created`` fields and logs). ``FakeClock`` lets tests move time by hand and wakes sleepers in deadline order.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float: ...

    def wall(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class FakeClock:
    """A clock that moves only when told to.

    ``advance(dt)`` moves time forward at once, waking every sleeper whose deadline passed.
    ``await run_for(dt)`` moves time in steps from deadline to deadline, letting woken tasks run (and go back
    to sleep) in between, so that chains of sleeps behave as they would in real time.
    """

    def __init__(self, start: float = 0.0, wall_start: float = 1_750_000_000.0) -> None:
        self._t = start
        self._wall_offset = wall_start - start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._t

    def wall(self) -> float:
        return self._t + self._wall_offset

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._t + seconds, next(self._seq), fut))
        await fut

    def advance(self, seconds: float) -> None:
        self._t += seconds
        self._wake_due()

    async def run_for(self, seconds: float, *, settle_rounds: int = 20) -> None:
        target = self._t + seconds
        await _settle(settle_rounds)
        while self._sleepers and self._sleepers[0][0] <= target:
            self._t = max(self._t, self._sleepers[0][0])
            self._wake_due()
            await _settle(settle_rounds)
        self._t = target
        await _settle(settle_rounds)

    def _wake_due(self) -> None:
        while self._sleepers and self._sleepers[0][0] <= self._t:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)


async def _settle(rounds: int) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)
