"""Virtual time: an asyncio event loop whose clock jumps to the next timer instead of waiting for it.

The replay runs the gateway's own quota limiter and gate, which wait on futures and on ``Clock.sleep``. On this
loop, ``loop.time()`` is virtual: when nothing is ready to run, the selector, asked to block until the next
timer, moves time forward by exactly that long and returns at once. So every sleep, tick and engine step happens
in the order of its deadline, without wall time passing and without guessing when the loop has settled (as
``FakeClock.run_for`` must): a replay is deterministic and as fast as the code it runs. ``VirtualClock`` is the
``sluice.clock.Clock`` the replayed components get; it reads and sleeps on the loop's time.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine, Sized
from typing import Any, TypeVar

T = TypeVar("T")

WALL_START = 1_750_000_000.0  # what wall() says at virtual time 0


class Stalled(RuntimeError):
    """Nothing is ready and no timer is set, yet the replay has not finished: a future nobody will set."""


class _Now:
    __slots__ = ("t",)

    def __init__(self) -> None:
        self.t = 0.0


class _JumpingSelector(selectors.DefaultSelector):
    def __init__(self, now: _Now) -> None:
        super().__init__()
        self._now = now

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        """Nothing but the loop's own wake-up pipe is registered, and nothing writes to it (no threads, no signal
        handlers): no file is ever asked whether it is ready."""
        if timeout == 0:
            return []
        if timeout is None:
            raise Stalled("the replay waits for something that will never happen")
        self._now.t += timeout
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._virtual = _Now()
        super().__init__(_JumpingSelector(self._virtual))

    def time(self) -> float:
        return self._virtual.t

    def skip_to(self, deadline: float) -> bool:
        """Move time to ``deadline`` at once, if nothing else would run before it: no callback is ready and no
        timer is due by then. The caller runs alone until it next awaits; what it does then happens at
        ``deadline``, as if it had slept until then. False (time unmoved) otherwise."""
        ready: Sized = self._ready  # type: ignore[attr-defined]  # asyncio's own queues, read only
        timers: list[asyncio.TimerHandle] = self._scheduled  # type: ignore[attr-defined]
        if ready or (timers and timers[0].when() <= deadline):
            return False
        self._virtual.t = max(self._virtual.t, deadline)
        return True


class VirtualClock:
    """``sluice.clock.Clock`` on a ``VirtualTimeLoop``'s time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def now(self) -> float:
        return self._loop.time()

    def wall(self) -> float:
        return WALL_START + self._loop.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def skip(self, seconds: float) -> bool:
        """``VirtualTimeLoop.skip_to`` now + ``seconds``: a sleep without the trip through the loop, when nothing
        could happen meanwhile."""
        loop = self._loop
        return isinstance(loop, VirtualTimeLoop) and loop.skip_to(loop.time() + seconds)


def run_virtual(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to its end on a fresh virtual-time loop (closed afterwards)."""
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(main)
    finally:
        loop.close()
