"""A stretched acquire (quota/_over_budget.py): what is left of the token buckets is read and charged in the same
atomic step, on every store (memory, a real Redis, Redis behind the failover wrapper)."""

from __future__ import annotations

import uuid

import pytest

from sluice.clock import MonotonicClock
from sluice.quota import Bucket, FailoverStore, LimitInfo, MemoryStore
from sluice.quota._model import Stretch
from sluice.quota._redis import RedisStore

HOUR = 3600.0  # one unit drips back per hour: nothing refills while a test runs


@pytest.fixture(params=["memory", "redis", "failover"])
async def store(request):
    if request.param == "memory":
        yield MemoryStore(MonotonicClock())
        return
    shared = RedisStore.from_url(request.getfixturevalue("redis_server").url, timeout_s=2.0)
    yield shared if request.param == "redis" else FailoverStore(shared, MonotonicClock(), replicas=1)
    await shared.close()


def bucket(capacity: int, cost: int, kind: str = "tokens", key: str | None = None) -> Bucket:
    info = LimitInfo(kind, "test", capacity, HOUR * capacity)  # type: ignore[arg-type]
    return Bucket(key or f"{{test}}:{uuid.uuid4().hex}", HOUR, capacity, cost, info)


def rid() -> str:
    return uuid.uuid4().hex


def with_cost(b: Bucket, cost: int) -> Bucket:
    return Bucket(b.key, b.interval_s, b.capacity, cost, b.info)


async def test_the_extra_is_what_every_flexible_bucket_has_left(store):
    tokens, requests = bucket(100, 70), bucket(10, 1, "requests")
    assert (await store.acquire([tokens, requests], [], rid())).allowed  # 30 tokens left
    decision = await store.acquire([with_cost(tokens, 20), requests], [], rid(), Stretch(50))
    assert decision.allowed and decision.extra == 10  # floor 20, then 10 of the 50 asked for
    assert [s.remaining for s in decision.states] == [0, 8]
    assert not (await store.acquire([with_cost(tokens, 1)], [], rid())).allowed  # charged exactly to the edge
    output = bucket(100, 5, "output_tokens")  # two flexible buckets: the extra fits in both
    decision = await store.acquire([bucket(100, 25), output], [], rid(), Stretch(90))
    assert decision.extra == 75 and decision.states[0].remaining == 0 and decision.states[1].remaining == 20


async def test_a_floor_that_does_not_fit_is_refused_and_takes_nothing(store):
    tokens = bucket(100, 95)
    assert (await store.acquire([tokens], [], rid())).allowed
    refused = await store.acquire([with_cost(tokens, 10)], [], rid(), Stretch(50))
    assert not refused.allowed and refused.extra is None and refused.refused_bucket == 0
    assert (await store.acquire([with_cost(tokens, 5)], [], rid())).states[0].remaining == 0


async def test_an_overrun_charges_it_all_and_the_debt_refuses_until_repaid(store):
    tokens = bucket(100, 90)
    assert (await store.acquire([tokens], [], rid())).allowed
    decision = await store.acquire([with_cost(tokens, 5)], [], rid(), Stretch(45, overrun=True))
    assert decision.allowed and decision.extra == 45
    assert decision.states[0].remaining == 0 and decision.states[0].reset_s == pytest.approx(140 * HOUR, rel=1e-6)
    refused = await store.acquire([with_cost(tokens, 1)], [], rid(), Stretch(10, overrun=True))
    assert not refused.allowed  # 40 in debt: not even the floor of the next one fits
    assert refused.retry_after_s == pytest.approx(41 * HOUR, rel=1e-4)
    later = rid()
    await store.settle([with_cost(tokens, 5)], [-45], [], later)  # a refund repays it (another decision's)
    assert (await store.acquire([with_cost(tokens, 5)], [], rid())).allowed


async def test_a_rerun_answers_the_same_extra_and_a_void_gives_it_all_back(store):
    tokens = bucket(100, 60)
    assert (await store.acquire([tokens], [], rid())).allowed
    decision_id, floor = rid(), with_cost(tokens, 10)
    first = await store.acquire([floor], [], decision_id, Stretch(100))
    again = await store.acquire([floor], [], decision_id, Stretch(100))  # a retry after a lost reply
    assert first.extra == again.extra == 30 and again.allowed
    await store.void([floor], [], decision_id)  # floor and extra refunded
    assert (await store.acquire([with_cost(tokens, 40)], [], rid())).states[0].remaining == 0
