"""Choosing the store from the process's state: memory for one process, Redis (behind failover) for every replica."""

from __future__ import annotations

from sluice.clock import Clock
from sluice.config import QuotaSettings
from sluice.quota._failover import DegradedObserver, FailoverStore
from sluice.quota._memory import MemoryStore
from sluice.quota._redis import RedisStore
from sluice.quota._store import QuotaStore
from sluice.state import MemoryState, State, open_state


def open_store(state: State | str, quota: QuotaSettings, clock: Clock,
               observer: DegradedObserver | None = None) -> QuotaStore:
    """The quota store on ``state`` (the gateway's one state layer; a URL opens a state of the store's own, for
    tools and benchmarks). A decision's marker lives ``quota.lease_ttl_s``: voids are retried that long, after
    which its permits have expired anyway."""
    owns_state = isinstance(state, str)
    if isinstance(state, str):
        state = open_state(state, quota, clock)
    if isinstance(state, MemoryState):
        return MemoryStore(clock, marker_ttl_s=quota.lease_ttl_s)
    shared = RedisStore(state, clock, marker_ttl_s=quota.lease_ttl_s, owns_state=owns_state)
    return FailoverStore(shared, clock, replicas=quota.gateway_replicas, observer=observer)
