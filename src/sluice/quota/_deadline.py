"""A deadline for one store call that counts only time in which the gateway could have read the answer.

``asyncio.timeout`` fires when the event loop reaches its timer. On a gateway whose loop is saturated (a burst of
requests, a long callback), the loop may reach the timer well after the deadline while the store's answer has been
sitting unread in the socket: a healthy Redis would count as slow, and the gateway would drop to degraded mode (local
limits) exactly at its peak load. Measured: 6–8 such episodes in 5 s of `bench/limiter.py`'s CPU-bound gateway.

So a timer that fires late, by more than ``LATE_FRACTION`` of the timeout, proves the loop was busy, not that the
store was slow: it is re-armed for another timeout (at most ``MAX_EXTENSIONS`` times), which gives the loop turns to
read what arrived. A timer that fires on time cancels the call, which then raises ``TimeoutError``, as
``asyncio.timeout`` does.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

LATE_FRACTION = 0.5
MAX_EXTENSIONS = 4


class StoreDeadline:
    """``async with StoreDeadline(0.02): await call()``: raises ``TimeoutError`` when the call is not answered in time."""

    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._task: asyncio.Task[object] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._extensions = 0
        self._expired = False

    @property
    def extensions(self) -> int:
        """How many times a late timer was re-armed (the loop was busy at the deadline)."""
        return self._extensions

    async def __aenter__(self) -> StoreDeadline:
        loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._arm(loop, loop.time() + self._timeout_s)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._expired and exc_type is asyncio.CancelledError and self._task is not None \
                and self._task.uncancel() == 0:
            raise TimeoutError from exc

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        self._deadline = when
        self._handle = loop.call_at(when, self._expire, loop)

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._handle = None
        if loop.time() - self._deadline > LATE_FRACTION * self._timeout_s and self._extensions < MAX_EXTENSIONS:
            self._extensions += 1
            self._arm(loop, loop.time() + self._timeout_s)
            return
        self._expired = True
        if self._task is not None:
            self._task.cancel()
