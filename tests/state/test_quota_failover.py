"""The failover quota store across Redis outages and restarts (a real redis-server): a concurrency permit stays
counted once, whichever store granted it, on either side of the switch."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from sluice.clock import MonotonicClock
from sluice.quota import FailoverStore, Lease
from sluice.quota._redis import RedisStore
from tests.conftest import wait_until


@pytest.fixture
async def store(redis):
    store = FailoverStore(RedisStore.from_url(redis.url, timeout_s=1.0, retry_s=0.05), MonotonicClock(), replicas=1)
    yield store
    await store.close()


def lease(limit: int) -> Lease:
    return Lease(f"{{sluice}}:test:{uuid.uuid4().hex}", limit, 60.0, "test")


def rid() -> str:
    return uuid.uuid4().hex


async def recovered(store: FailoverStore) -> bool:
    return await asyncio.to_thread(wait_until, lambda: not store.degraded)


async def test_permits_granted_on_either_side_of_an_outage_count_once(redis, store):
    two = lease(2)
    in_redis, local, third = rid(), rid(), rid()
    assert (await store.acquire([], [two], in_redis)).allowed
    redis.kill()
    assert (await store.acquire([], [two], local)).allowed  # degraded: the local limit counts the one held
    assert not (await store.acquire([], [two], third)).allowed
    assert store.degraded
    redis.start()  # empty: the permit taken in Redis before is gone with it
    assert await recovered(store)
    refused = await store.acquire([], [two], third)  # decided in Redis again, which holds both permits again
    assert not refused.allowed and refused.refused_lease == 0
    await store.settle([], [], [two], in_redis)
    await store.settle([], [], [two], local)
    await store.shared.give_back.drained()
    assert (await store.acquire([], [two], rid())).allowed
    assert (await store.acquire([], [two], rid())).allowed


async def test_a_restart_between_two_calls_takes_the_permits_in_flight_again(redis, store):
    """No outage is seen (Redis is back before the next call), but the connection was lost: Redis may have
    restarted empty, so the permits in flight are taken again before it decides."""
    one = lease(1)
    assert (await store.acquire([], [one], rid())).allowed
    redis.kill()
    redis.start()
    other = await store.acquire([], [lease(1)], rid())  # meets a stale connection, sent again on a fresh one
    assert other.allowed
    assert await recovered(store)
    assert not (await store.acquire([], [one], rid())).allowed, "a restart let a second request take the permit"
