"""Choosing the store from the ``state`` URL: memory:// for one process, redis:// for every replica."""

from __future__ import annotations

from sluice.clock import Clock
from sluice.config import QuotaSettings
from sluice.quota._failover import DegradedObserver, FailoverStore
from sluice.quota._memory import MemoryStore
from sluice.quota._store import QuotaStore


def open_store(state_url: str, quota: QuotaSettings, clock: Clock,
               observer: DegradedObserver | None = None) -> QuotaStore:
    if state_url.startswith("memory://"):
        return MemoryStore(clock)
    import redis.exceptions

    from sluice.quota._redis import RedisStore

    shared = RedisStore.from_url(state_url, timeout_s=quota.store_timeout_s)
    return FailoverStore(shared, clock, replicas=quota.gateway_replicas, retry_s=quota.store_retry_s,
                         observer=observer, errors=(redis.exceptions.RedisError,))
