"""Requests waiting for their quota to refill (a tier's ``max_wait_s``), served in arrival order.

Each bucket with waiters has a line: the waiters in arrival order, and the bucket's theoretical arrival time as the
store last reported it (``reset_s`` after a decision, on this process's clock). A waiter's turn comes when the bucket
has refilled enough for everything queued ahead of it plus its own cost: the same GCRA arithmetic as the stores,
run on that shadow with the costs of the waiters ahead added. So a newcomer learns at once when it would get
through, and one that cannot make it within its wait is told so at once, with that time as its retry-after.

The line is this process's: every grant is still one atomic decision of the store (limits stay exact), but waiters
in other gateways sharing the store are not in it. They take refills this line did not count on; a waiter then
finds the store's fresh state when it tries, and waits longer or is refused then (across gateways, the order and
the early answer are best-effort).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

from sluice.clock import Clock
from sluice.quota import _gcra
from sluice.quota._model import Bucket, BucketState, Decision

# A shadow this close to the store's view is the same view: no need to wake the line.
_SAME_S = 1e-6


@dataclass(eq=False, slots=True)
class Waiter:
    """One request in line: its arrival number orders it in the line of every bucket it charges."""

    arrival: int
    buckets: tuple[Bucket, ...]
    changed: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(slots=True)
class _Line:
    tat: float  # the bucket's theoretical arrival time, as last seen (this process's clock)
    waiters: list[Waiter] = field(default_factory=list)  # by arrival


class WaitQueue:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._lines: dict[str, _Line] = {}
        self._arrivals = itertools.count()

    def arrival(self) -> int:
        """A number for a request as it arrives: waiters are served in the order of these numbers."""
        return next(self._arrivals)

    def busy(self, buckets: Sequence[Bucket]) -> bool:
        """Whether a request charging these buckets has someone waiting ahead of it (in this process)."""
        lines = self._lines
        return bool(lines) and any(b.key in lines for b in buckets)

    def join(self, arrival: int, buckets: Sequence[Bucket]) -> Waiter:
        """Put a request in line, behind every waiter that arrived before it (it may have arrived before some)."""
        waiter = Waiter(arrival, tuple(buckets))
        now = self._clock.now()
        for b in buckets:
            line = self._lines.setdefault(b.key, _Line(now))
            position = next((i for i, w in enumerate(line.waiters) if w.arrival > arrival), len(line.waiters))
            line.waiters.insert(position, waiter)
            _wake(line.waiters[position + 1:])  # they have one more ahead of them now
        return waiter

    def leave(self, waiter: Waiter) -> None:
        """Take a waiter out of line (served, refused or gone): those behind it may go sooner."""
        for b in waiter.buckets:
            line = self._lines.get(b.key)
            if line is None or waiter not in line.waiters:
                continue
            line.waiters.remove(waiter)
            if not line.waiters:
                del self._lines[b.key]
            else:
                _wake([w for w in line.waiters if w.arrival > waiter.arrival])

    def observe(self, buckets: Sequence[Bucket], decision: Decision, by: Waiter | None = None) -> None:
        """What the store said about these buckets: the lines' shadows follow it."""
        if len(decision.states) != len(buckets):
            return
        now = self._clock.now()
        for b, state in zip(buckets, decision.states, strict=True):
            line = self._lines.get(b.key)
            if line is None:
                continue
            tat = now + state.reset_s
            if abs(max(tat, now) - max(line.tat, now)) > _SAME_S:
                _wake([w for w in line.waiters if w is not by])
            line.tat = tat

    def refund(self, buckets: Sequence[Bucket], deltas: Sequence[int]) -> None:
        """A request of this process settled: what it gave back (or owed) moves the lines' turns."""
        if not self._lines:
            return
        now = self._clock.now()
        for b, delta in zip(buckets, deltas, strict=True):
            line = self._lines.get(b.key)
            if line is not None and delta:
                line.tat = _gcra.adjust(line.tat, now, delta, b.interval_s)
                _wake(line.waiters)

    def turn(self, waiter: Waiter) -> Decision:
        """When the waiter's turn comes, counting every waiter ahead of it in each of its buckets' lines:
        ``allowed`` when it would fit now, else ``retry_after_s`` from now and the bucket that holds it longest."""
        return self.projection(waiter.arrival, waiter.buckets)

    def projection(self, arrival: int, buckets: Sequence[Bucket]) -> Decision:
        now = self._clock.now()
        states: list[BucketState] = []
        refused, worst = None, 0.0
        for i, b in enumerate(buckets):
            line = self._lines.get(b.key)
            tat, ahead = now, 0
            if line is not None:
                tat = line.tat
                ahead = sum(_cost(w, b.key) for w in line.waiters if w.arrival < arrival)
            _, _, state = _gcra.check(max(tat, now) + ahead * b.interval_s, now, b.cost, b.interval_s, b.capacity)
            if state.retry_after_s > 0 and (refused is None or state.retry_after_s > worst):
                refused, worst = i, state.retry_after_s  # does not fit yet (or never can)
            states.append(state)
        return Decision(refused is None, states, refused_bucket=refused, retry_after_s=worst)

    async def wait(self, waiter: Waiter, seconds: float) -> bool:
        """Sleep until ``seconds`` have passed or the line changed (someone ahead left, a refund, news from the
        store), whichever comes first; True when the line changed."""
        waiter.changed.clear()
        loop = asyncio.get_running_loop()
        sleeper = loop.create_task(self._clock.sleep(seconds))
        woken = loop.create_task(waiter.changed.wait())
        try:
            await asyncio.wait((sleeper, woken), return_when=asyncio.FIRST_COMPLETED)
            return waiter.changed.is_set()
        finally:
            sleeper.cancel()
            woken.cancel()


def _cost(waiter: Waiter, key: str) -> int:
    return next(b.cost for b in waiter.buckets if b.key == key)


def _wake(waiters: Sequence[Waiter]) -> None:
    for w in waiters:
        w.changed.set()
