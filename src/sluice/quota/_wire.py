"""How quota operations travel to lua/quota.lua: one JSON argument for a whole batch, plus its distinct keys.

Every operation names its keys inline; ``KEYS`` declares each distinct key of the batch once (Redis Cluster routes
the script by them, and the script refuses a key that was not declared). Under load a batch repeats the same few
keys many times, so this keeps a script call to a handful of arguments instead of ~20 per decision: packing and
encoding arguments one by one was most of the client's CPU per decision.

Every operation names its decision (the reservation id) and the decision's marker key, which says what became of
it (granted, settled, void) and makes each operation idempotent or fenced (see lua/quota.lua):

    ["A", id, marker, marker_ttl_ms, [[key, interval_us, capacity, cost], ...], [[key, limit, ttl_us], ...]]  acquire
    ["A", ..., [[key, interval_us, capacity, cost, flexible], ...], [...], [extra, overrun]]       stretched acquire
    ["S", id, marker, marker_ttl_ms, [[key, interval_us, delta], ...], [lease_key, ...]]                     settle
    ["V", id, marker, marker_ttl_ms, [[key, interval_us, cost, flexible], ...], [lease_key, ...]]            void
    ["N", id, marker, [[key, ttl_us], ...]]                                                                  renew
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from sluice.quota._model import Bucket, Lease, Stretch, flexible

_US = 1_000_000
# Replies to an acquire: its first element.
GRANTED, REFUSED, VOIDED = 1, 0, -1


def marker_key(keys: Sequence[str], decision: str, default_tag: str = "{sluice}") -> str:
    """The decision's marker, under the hash tag of its first key (Redis Cluster runs a script on one slot)."""
    first = keys[0] if keys else ""
    end = first.find("}")
    tag = first[:end + 1] if first.startswith("{") and end > 1 else default_tag
    return f"{tag}:decision:{decision}"


def acquire(buckets: Sequence[Bucket], leases: Sequence[Lease], decision: str, marker: str,
            marker_ttl_ms: int, stretch: Stretch | None = None) -> list[Any]:
    lease_specs = [[lease.key, lease.limit, lease.ttl_s * _US] for lease in leases]
    if stretch is None:
        return ["A", decision, marker, marker_ttl_ms,
                [[b.key, b.interval_s * _US, b.capacity, b.cost] for b in buckets], lease_specs]
    return ["A", decision, marker, marker_ttl_ms,
            [[b.key, b.interval_s * _US, b.capacity, b.cost, flexible(b)] for b in buckets], lease_specs,
            [stretch.extra, 1 if stretch.overrun else 0]]


def settle(buckets: Sequence[Bucket], deltas: Sequence[int], leases: Sequence[Lease], decision: str, marker: str,
           marker_ttl_ms: int) -> list[Any]:
    """Reconcile the buckets (charge or refund ``deltas``) and release the leases, once: a settled decision is
    never settled again."""
    return ["S", decision, marker, marker_ttl_ms,
            [[b.key, b.interval_s * _US, delta] for b, delta in zip(buckets, deltas, strict=True) if delta],
            [lease.key for lease in leases]]


def void(buckets: Sequence[Bucket], leases: Sequence[Lease], decision: str, marker: str,
         marker_ttl_ms: int) -> list[Any]:
    """Give back a decision nobody waits for: refund and release it if it was granted, and refuse it if it was
    not executed yet. A stretched grant also gives back its extra units (the marker keeps how many)."""
    return ["V", decision, marker, marker_ttl_ms,
            [[b.key, b.interval_s * _US, b.cost, flexible(b)] for b in buckets if b.cost or flexible(b)],
            [lease.key for lease in leases]]


def renew(leases: Sequence[Lease], decision: str, marker: str) -> list[Any]:
    """Hold the leases ``ttl_s`` longer (taking them again if Redis lost them), unless the decision is over."""
    return ["N", decision, marker, [[lease.key, lease.ttl_s * _US] for lease in leases]]


def encode(ops: Iterable[list[Any]], keys: Iterable[str]) -> tuple[list[str], list[bytes]]:
    """KEYS (each distinct key once, in first-seen order) and ARGV (the operations as one JSON array)."""
    return list(dict.fromkeys(keys)), [orjson.dumps(list(ops))]
