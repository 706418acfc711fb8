"""The in-memory store: one process's buckets and permits, with exactly the Redis store's semantics, decision
markers included (see lua/quota.lua: a re-run grant charges nothing twice, a settle applies once, a void gives a
grant back and refuses an acquire that comes after it).

Atomic by construction: nothing here awaits, so one event loop never interleaves two decisions.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Literal

from sluice.clock import Clock
from sluice.quota import _gcra
from sluice.quota._model import Bucket, Decision, Lease, Stretch, flexible

# Forget buckets that have been full this long (the Redis store lets such keys expire).
IDLE_SWEEP_EVERY = 4096
DEFAULT_MARKER_TTL_S = 60.0

Mark = Literal["granted", "settled", "void"]


class MemoryStore:
    def __init__(self, clock: Clock, *, marker_ttl_s: float = DEFAULT_MARKER_TTL_S) -> None:
        self._clock = clock
        self._tats: dict[str, tuple[float, float]] = {}  # bucket key -> (tat, the interval it was written with)
        self._leases: dict[str, dict[str, float]] = {}  # set key -> lease id -> deadline
        self._marks: dict[str, tuple[Mark, float]] = {}  # decision id -> (what became of it, until when)
        self._mark_order: deque[tuple[float, str]] = deque()  # (expiry, id): the TTL is one, so in expiry order
        self._marker_ttl_s = marker_ttl_s
        self._extras: dict[str, int] = {}  # decision id -> the extra units its stretch charged, while granted
        self._ops = 0

    async def acquire(self, buckets: Sequence[Bucket], leases: Sequence[Lease], lease_id: str,
                      stretch: Stretch | None = None) -> Decision:
        return self.acquire_now(buckets, leases, lease_id, stretch)

    def acquire_now(self, buckets: Sequence[Bucket], leases: Sequence[Lease], lease_id: str,
                    stretch: Stretch | None = None) -> Decision:
        now = self._clock.now()
        self._sweep(now)
        was = self._mark(lease_id, now)
        if was is not None:  # decided before: granted again without charging twice, or voided (-1 in Lua)
            states = [_gcra.current(self._tat(b, now), now, b.interval_s, b.capacity) for b in buckets]
            return Decision(was == "granted", states, voided=was != "granted", extra=self._extras.get(lease_id))
        states, new_tats, tats, fitting = [], [], [], []
        refused, worst = None, 0.0
        for i, b in enumerate(buckets):
            tat = self._tat(b, now)
            fits, new_tat, state = _gcra.check(tat, now, b.cost, b.interval_s, b.capacity)
            states.append(state)
            new_tats.append(new_tat)
            tats.append(tat)
            fitting.append(fits)
            if not fits and (refused is None or state.retry_after_s > worst):
                refused, worst = i, state.retry_after_s
        refused_lease = next((i for i, lease in enumerate(leases) if not self._has_room(lease, lease_id, now)), None)
        if refused is not None or refused_lease is not None:
            # Nothing is charged: the buckets that would have fit report themselves as they stand.
            states = [_gcra.current(tat, now, b.interval_s, b.capacity) if fits else state
                      for b, tat, fits, state in zip(buckets, tats, fitting, states, strict=True)]
            if refused is not None:
                return Decision(False, states, refused_bucket=refused, retry_after_s=worst)
            return Decision(False, states, refused_lease=refused_lease, retry_after_s=1.0)
        extra = None
        if stretch is not None:  # the floors fit: charge the flexible buckets as far as the stretch goes
            extra = stretch.extra if stretch.overrun else min(
                [stretch.extra, *(_gcra.room(t, now, b.interval_s, b.capacity)
                                  for b, t in zip(buckets, new_tats, strict=True) if flexible(b))])
            new_tats = [t + flexible(b) * extra * b.interval_s for b, t in zip(buckets, new_tats, strict=True)]
            states = [_gcra.charged(t, now, b.interval_s, b.capacity) if flexible(b) else state
                      for b, t, state in zip(buckets, new_tats, states, strict=True)]
        for b, new_tat in zip(buckets, new_tats, strict=True):
            self._tats[b.key] = (new_tat, b.interval_s)
        self.hold(leases, lease_id)
        if leases or any(b.cost for b in buckets) or extra:
            self._set_mark(lease_id, "granted", now)
            if extra:
                self._extras[lease_id] = extra
        return Decision(True, states, extra=extra)

    async def settle(self, buckets: Sequence[Bucket], deltas: Sequence[int], leases: Sequence[Lease],
                     lease_id: str) -> None:
        self.settle_now(buckets, deltas, leases, lease_id)

    def settle_soon(self, buckets: Sequence[Bucket], deltas: Sequence[int], leases: Sequence[Lease],
                    lease_id: str, landed: Callable[[], None]) -> None:
        self.settle_now(buckets, deltas, leases, lease_id)
        landed()

    def settle_now(self, buckets: Sequence[Bucket], deltas: Sequence[int], leases: Sequence[Lease],
                   lease_id: str) -> None:
        now = self._clock.now()
        if self._mark(lease_id, now) in ("settled", "void"):
            return
        self._adjust(buckets, deltas, now)
        self.release(leases, lease_id)
        self._set_mark(lease_id, "settled", now)

    async def void(self, buckets: Sequence[Bucket], leases: Sequence[Lease], lease_id: str) -> None:
        now = self._clock.now()
        was = self._mark(lease_id, now)
        if was in ("settled", "void"):
            return
        if was == "granted":
            extra = self._extras.get(lease_id, 0)
            self._adjust(buckets, [-b.cost - flexible(b) * extra for b in buckets], now)
        self.release(leases, lease_id)
        self._set_mark(lease_id, "void", now)

    async def renew(self, leases: Sequence[Lease], lease_id: str) -> None:
        now = self._clock.now()
        if self._mark(lease_id, now) in ("settled", "void"):
            return
        self.hold(leases, lease_id)

    def granted(self, lease_id: str) -> bool:
        """Whether this store granted the decision (and nothing settled or voided it since)."""
        return self._mark(lease_id, self._clock.now()) == "granted"

    def hold(self, leases: Sequence[Lease], lease_id: str) -> None:
        """Hold the leases for ``lease_id`` (their limits unchecked), ``ttl_s`` from now."""
        now = self._clock.now()
        for lease in leases:
            self._leases.setdefault(lease.key, {})[lease_id] = now + lease.ttl_s

    def release(self, leases: Sequence[Lease], lease_id: str) -> None:
        for lease in leases:
            holders = self._leases.get(lease.key)
            if holders is not None:
                holders.pop(lease_id, None)

    async def close(self) -> None:
        self._tats.clear()
        self._leases.clear()
        self._marks.clear()
        self._mark_order.clear()

    def _adjust(self, buckets: Sequence[Bucket], deltas: Sequence[int], now: float) -> None:
        for b, delta in zip(buckets, deltas, strict=True):
            if delta:
                self._tats[b.key] = (_gcra.adjust(self._tat(b, now), now, delta, b.interval_s), b.interval_s)

    def _tat(self, bucket: Bucket, now: float) -> float:
        stored = self._tats.get(bucket.key)
        if stored is None:
            return now
        return _gcra.rescale(stored[0], now, stored[1], bucket.interval_s)

    def _has_room(self, lease: Lease, lease_id: str, now: float) -> bool:
        holders = self._live(lease.key, now)
        return len(holders) < lease.limit or lease_id in holders

    def _live(self, key: str, now: float) -> dict[str, float]:
        holders = self._leases.setdefault(key, {})
        for expired in [lid for lid, deadline in holders.items() if deadline <= now]:
            del holders[expired]
        return holders

    def _mark(self, decision: str, now: float) -> Mark | None:
        stored = self._marks.get(decision)
        return stored[0] if stored is not None and stored[1] > now else None

    def _set_mark(self, decision: str, mark: Mark, now: float) -> None:
        if mark != "granted":
            self._extras.pop(decision, None)
        until = now + self._marker_ttl_s
        self._marks[decision] = (mark, until)
        self._mark_order.append((until, decision))

    def _sweep(self, now: float) -> None:
        order, marks = self._mark_order, self._marks
        while order and order[0][0] <= now:
            until, decision = order.popleft()
            stored = marks.get(decision)
            if stored is not None and stored[1] == until:
                del marks[decision]
                self._extras.pop(decision, None)
        self._ops += 1
        if self._ops % IDLE_SWEEP_EVERY == 0:
            self._tats = {k: stored for k, stored in self._tats.items() if stored[0] > now}
