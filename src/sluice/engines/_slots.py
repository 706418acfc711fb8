"""How many requests a pool may have at its engines at once: ``engine.max_connections``.

Every request in flight holds one upstream connection (HTTP/1.1: one request at a time on a connection) from the
moment it is sent until its answer is read or closed, so the cap on requests is the cap on connections. A request
that finds every slot taken waits for one, in arrival order, at most ``engine.connection_wait_s``; then it is
refused with a 503 ``upstream_saturated``: never an unbounded wait. With admission on, the gate's window is capped
at the same number (gateway/_gates.py) and a request gives its slot back before its place in the window, so a
request the gate dispatches finds a slot at once: the wait is for pools without a gate.
"""

from __future__ import annotations

import asyncio
from collections import deque

from sluice.clock import Clock
from sluice.errors import EngineUnavailableError

RETRY_AFTER_S = 1


class ConnectionSlots:
    def __init__(self, capacity: int, wait_s: float, clock: Clock) -> None:
        if capacity < 1:
            raise ValueError("a pool needs at least one connection")
        self.capacity = capacity
        self.wait_s = wait_s
        self._clock = clock
        self.in_use = 0
        self.waiting = 0
        self._waiters: deque[asyncio.Future[bool]] = deque()  # True: a slot was handed over; False: waited too long

    async def acquire(self) -> None:
        """Take a slot, waiting at most ``wait_s`` for one; raise ``EngineUnavailableError`` (503
        ``upstream_saturated``) when none came in time."""
        if self.in_use < self.capacity:  # a free slot means nobody waits: a release hands its slot to a waiter
            self.in_use += 1
            return
        if self.wait_s <= 0:
            raise self._saturated()
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self.waiting += 1
        expiry = asyncio.ensure_future(self._expire(waiter))
        try:
            granted = await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.result():
                self.release()  # handed a slot in the same instant its request was cancelled: pass it on
            elif not waiter.done():
                waiter.cancel()
            raise
        finally:
            expiry.cancel()
            self._forget(waiter)
        if not granted:
            raise self._saturated()

    def release(self) -> None:
        """Give a slot back: to the longest waiting request, else to the pool."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)  # the slot changes hands: ``in_use`` stays
                return
        self.in_use -= 1

    def snapshot(self) -> dict[str, float]:
        return {"capacity": self.capacity, "in_use": self.in_use, "waiting": self.waiting, "wait_s": self.wait_s}

    async def _expire(self, waiter: asyncio.Future[bool]) -> None:
        await self._clock.sleep(self.wait_s)
        if not waiter.done():
            waiter.set_result(False)

    def _forget(self, waiter: asyncio.Future[bool]) -> None:
        """A waiter is done with (served, expired or cancelled): it no longer counts, and the queue sheds those
        done waiters it still holds once they outnumber the live ones (so it never grows with requests refused)."""
        self.waiting -= 1
        if len(self._waiters) > 2 * self.waiting + 16:
            self._waiters = deque(w for w in self._waiters if not w.done())

    def _saturated(self) -> EngineUnavailableError:
        return EngineUnavailableError(
            f"Every upstream connection of this model is in use ({self.capacity}, engine.max_connections) and none "
            f"came free within {self.wait_s:g} s; retry shortly.",
            status=503, code="upstream_saturated", reason="upstream_saturated",
            headers={"retry-after": str(RETRY_AFTER_S)},
        )
