"""GCRA (the generic cell rate algorithm): a token bucket kept as one number, the theoretical arrival time.

A bucket of ``capacity`` units refilling one unit every ``interval_s`` is full when ``tat <= now``. Charging
``cost`` units moves ``tat`` to ``max(tat, now) + cost * interval_s``; the charge fits when that is at most
``capacity * interval_s`` ahead of now. The Lua script (lua/quota.lua) is this same arithmetic, line for line.
"""

from __future__ import annotations

import math

from sluice.quota._model import BucketState

# Float slack: a charge landing exactly on the bucket's edge must fit, whatever the rounding.
EPSILON_S = 1e-9


def check(tat: float, now: float, cost: int, interval_s: float, capacity: int) -> tuple[bool, float, BucketState]:
    """Decide one charge. Returns (fits, the new tat if it is applied, the bucket's state)."""
    tau = capacity * interval_s
    base = max(tat, now)
    new_tat = base + cost * interval_s
    if cost * interval_s > tau + EPSILON_S:
        return False, tat, BucketState(_units(tau - (base - now), interval_s), base - now, math.inf)
    allow_at = new_tat - tau
    if allow_at <= now + EPSILON_S:
        return True, new_tat, BucketState(_units(tau - (new_tat - now), interval_s), new_tat - now, 0.0)
    return False, tat, BucketState(_units(tau - (base - now), interval_s), base - now, allow_at - now)


def current(tat: float, now: float, interval_s: float, capacity: int) -> BucketState:
    """The bucket as it stands, charging nothing: what a refused decision reports for its fitting buckets."""
    base = max(tat, now)
    return BucketState(_units(capacity * interval_s - (base - now), interval_s), base - now, 0.0)


def room(tat: float, now: float, interval_s: float, capacity: int) -> int:
    """Units that would still fit in a bucket standing at ``tat`` (0 when it is full or in debt): the most a
    stretched charge may take from it."""
    return _units(capacity * interval_s + EPSILON_S - (max(tat, now) - now), interval_s)


def charged(tat: float, now: float, interval_s: float, capacity: int) -> BucketState:
    """The bucket once charged up to ``tat`` (past its capacity, when a charge overran it)."""
    return BucketState(_units(capacity * interval_s - (tat - now), interval_s), tat - now, 0.0)


def adjust(tat: float, now: float, delta: int, interval_s: float) -> float:
    """Charge ``delta`` more units (or refund them when negative) without asking: reconciliation."""
    if delta >= 0:
        return max(tat, now) + delta * interval_s
    return max(tat + delta * interval_s, now)


def rescale(tat: float, now: float, stored_interval_s: float, interval_s: float) -> float:
    """A bucket whose rate changed (a configuration reload) keeps the units it had used, not the time they
    stood for: its debt ``(tat - now) / old interval`` is restated at the new interval."""
    if tat <= now or stored_interval_s == interval_s:
        return tat
    return now + (tat - now) / stored_interval_s * interval_s


def _units(seconds: float, interval_s: float) -> int:
    return max(0, math.floor(seconds / interval_s + EPSILON_S))
