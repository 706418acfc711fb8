"""Which replica gets a request: the order in which a pool tries its replicas.

``least_outstanding`` (default): fewest requests in flight, relative to weight. ``least_kv``: lowest KV-cache use
as last scraped (unknown counts as full), then fewest in flight. ``prefix_affinity``: the replica a consistent-hash
ring assigns to the conversation's leading messages, so a multi-turn chat keeps hitting the KV cache that holds
its prefix; it gives way to the least loaded replica when it is much busier than the rest, and the ring moves
only the keys of a replica that leaves. The router follows its pool's ``ReplicaSet``: the ring is rebuilt when the
set changes.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Callable, Sequence
from typing import Literal

from sluice.engines._replica import Replica
from sluice.engines._replica_set import ReplicaSet

RoutingPolicy = Literal["least_outstanding", "least_kv", "prefix_affinity"]
VIRTUAL_NODES = 64  # per unit of weight, on the ring
AFFINITY_SLACK = 4  # the affine replica may have this many more in flight than the least busy before giving way


def _load(replica: Replica) -> float:
    return replica.outstanding / replica.weight


class Router:
    def __init__(self, replicas: Sequence[Replica] | ReplicaSet, policy: RoutingPolicy = "least_outstanding",
                 kv_usage: Callable[[str], float | None] | None = None) -> None:
        self._set = replicas if isinstance(replicas, ReplicaSet) else ReplicaSet.of(replicas)
        self._policy = policy
        self._kv_usage = kv_usage or (lambda url: None)
        self._ring_version = -1
        self._ring: list[tuple[int, Replica]] = []
        self._ring_keys: list[int] = []

    def order(self, usable: Sequence[Replica], affinity: str | None = None) -> list[Replica]:
        """The replicas to try, best first."""
        by_load = sorted(usable, key=_load)
        if self._policy == "least_kv":
            return sorted(usable, key=lambda r: (_kv_or_full(self._kv_usage(r.url)), _load(r)))
        if self._policy == "prefix_affinity" and affinity is not None and by_load:
            preferred = self._affine(affinity, usable)
            if preferred is not None and preferred.outstanding <= by_load[0].outstanding + AFFINITY_SLACK:
                return [preferred, *(r for r in by_load if r is not preferred)]
        return by_load

    def _affine(self, key: str, usable: Sequence[Replica]) -> Replica | None:
        """Walk the ring clockwise from the key's hash to the first replica that can take traffic."""
        if self._ring_version != self._set.version:
            self._build_ring()
        allowed = {id(r) for r in usable}
        start = bisect.bisect(self._ring_keys, _hash(key))
        for step in range(len(self._ring)):
            replica = self._ring[(start + step) % len(self._ring)][1]
            if id(replica) in allowed:
                return replica
        return None

    def _build_ring(self) -> None:
        """Virtual nodes by URL: a replica that joins or leaves moves only its own share of the keys."""
        self._ring = sorted(((_hash(f"{r.url}#{v}"), r) for r in self._set.all()
                             for v in range(max(1, round(VIRTUAL_NODES * r.weight)))), key=lambda node: node[0])
        self._ring_keys = [h for h, _ in self._ring]
        self._ring_version = self._set.version


def _kv_or_full(value: float | None) -> float:
    return 1.0 if value is None else value


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
