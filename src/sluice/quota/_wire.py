"""How quota operations travel to lua/quota.lua: one JSON argument for a whole batch, plus its distinct keys.

Every operation names its keys inline; ``KEYS`` declares each distinct key of the batch once (Redis Cluster routes
the script by them, and the script refuses a key that was not declared). Under load a batch repeats the same few
keys many times, so this keeps a script call to a handful of arguments instead of ~20 per decision: packing and
encoding arguments one by one was most of the client's CPU per decision.

    ["A", lease_id, [[key, interval_us, capacity, cost], ...], [[key, limit, ttl_us], ...]]   acquire
    ["J", [[key, interval_us, delta], ...]]                                                     adjust
    ["R", lease_id, [key, ...]]                                                                 release
    ["N", lease_id, [[key, ttl_us], ...]]                                                       renew
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from sluice.quota._model import Bucket, Lease

_US = 1_000_000


def acquire(buckets: Sequence[Bucket], leases: Sequence[Lease], lease_id: str) -> list[Any]:
    return ["A", lease_id, [[b.key, b.interval_s * _US, b.capacity, b.cost] for b in buckets],
            [[lease.key, lease.limit, lease.ttl_s * _US] for lease in leases]]


def adjust(buckets: Sequence[Bucket], deltas: Sequence[int]) -> list[Any]:
    return ["J", [[b.key, b.interval_s * _US, delta] for b, delta in zip(buckets, deltas, strict=True) if delta]]


def release(leases: Sequence[Lease], lease_id: str) -> list[Any]:
    return ["R", lease_id, [lease.key for lease in leases]]


def renew(leases: Sequence[Lease], lease_id: str) -> list[Any]:
    return ["N", lease_id, [[lease.key, lease.ttl_s * _US] for lease in leases]]


def settle(buckets: Sequence[Bucket], deltas: Sequence[int], leases: Sequence[Lease], lease_id: str) -> list[list[Any]]:
    """The operations that settle a reservation: adjust the buckets that need it, release the permits."""
    ops: list[list[Any]] = []
    if any(deltas):
        ops.append(adjust(buckets, deltas))
    if leases:
        ops.append(release(leases, lease_id))
    return ops


def encode(ops: Iterable[list[Any]], keys: Iterable[str]) -> tuple[list[str], list[bytes]]:
    """KEYS (each distinct key once, in first-seen order) and ARGV (the operations as one JSON array)."""
    return list(dict.fromkeys(keys)), [orjson.dumps(list(ops))]
