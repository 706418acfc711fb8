"""A request's settlement is handed to the store without waiting (``QuotaLimiter.settle_soon``): on Redis it rides
in the store's next script calls, many settlements a call, and what is still queued when the store closes is sent
before it does: nothing is lost at shutdown, nothing is applied twice."""

from __future__ import annotations

import redis as redis_client

from sluice.clock import MonotonicClock
from sluice.config import QuotaSettings, TierSettings
from sluice.identity import Principal
from sluice.quota import Price, QuotaLimiter, QuotaPolicy, RedisStore
from sluice.quota._redis import MAX_BATCH, MAX_CALLS_IN_FLIGHT

PRICE = Price(prompt_tokens=10, max_output_tokens=90)
CALLER = Principal(key_id="k", user="k", tenant="acme", tier="t")
REQUESTS = 4 * MAX_BATCH * MAX_CALLS_IN_FLIGHT  # more than the store sends at once: some wait in its queue


def _policy(prefix: str) -> QuotaPolicy:
    tier = TierSettings.model_validate({"tokens": "1000000/day", "concurrent": REQUESTS})
    return QuotaPolicy({"t": tier}, QuotaSettings(), key_prefix=prefix)


def _evalsha_calls(client: redis_client.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


async def test_settlements_queued_when_the_store_closes_all_land_once_in_few_calls(redis_server):
    prefix = "{settle-soon}"
    limiter = QuotaLimiter(_policy(prefix), RedisStore.from_url(redis_server.url), MonotonicClock())
    plan = limiter.policy.plan(CALLER, "m", PRICE)
    (tokens,), (lease,) = plan.buckets, plan.leases
    client = redis_client.Redis.from_url(redis_server.url)
    reservations = [await limiter.reserve(CALLER, "m", PRICE) for _ in range(REQUESTS)]
    assert client.zcard(lease.key) == REQUESTS
    calls_before = _evalsha_calls(client)
    landed: list[int] = []
    for i, reservation in enumerate(reservations):  # each used 10 + 40 of the 100 tokens it reserved
        limiter.settle_soon(reservation, 10, 40, lambda i=i: landed.append(i))
        limiter.settle_soon(reservation, 10, 40)  # a second settlement of the same request is a no-op
    await limiter.close()
    await limiter.store.close()  # sends what is still queued, then closes
    assert sorted(landed) == list(range(REQUESTS))
    assert client.zcard(lease.key) == 0  # every permit given back
    calls = _evalsha_calls(client) - calls_before
    assert calls <= REQUESTS // MAX_BATCH + MAX_CALLS_IN_FLIGHT  # batched, not a call per settlement

    # The bucket holds exactly what was used (50 tokens a request): each refund applied once.
    fresh = QuotaLimiter(_policy(prefix), RedisStore.from_url(redis_server.url), MonotonicClock())
    probe = await fresh.reserve(CALLER, "m", PRICE)
    remaining = int(probe.ratelimit.headers()["x-ratelimit-remaining-tokens"])
    expected = tokens.capacity - REQUESTS * 50 - PRICE.total
    assert expected <= remaining <= expected + 50  # what refilled while the test ran (12 tokens a second)
    await fresh.settle(probe, 0, 0)
    await fresh.close()
    await fresh.store.close()
