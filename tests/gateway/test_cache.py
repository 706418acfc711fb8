"""The response cache: repeated deterministic requests are answered without an engine, per tenant."""

from __future__ import annotations

import httpx
import pytest

from sluice.cache import MemoryCache, RedisCache
from sluice.clock import FakeClock
from sluice.config import parse_settings
from sluice.identity import hash_key
from tests.conftest import metric_value, serve_gateway, wait_until

KEYS = {"acme": "sk-sluice-cache-acme-0123456789", "beta": "sk-sluice-cache-beta-0123456789"}
ASK = {"model": "m", "messages": [{"role": "user", "content": "what is a sluice?"}], "max_tokens": 8}


@pytest.fixture(scope="module")
def gateway():
    settings = parse_settings({
        "models": [{"name": "m", "sim": {"speed": 100}, "cache": {"enabled": True, "ttl_s": 60}}],
        "tiers": {"t": {"requests": "2/hour"}},
        "keys": [{"id": t, "hash": hash_key(k), "tenant": t, "tier": "t"} for t, k in KEYS.items()],
    })
    with serve_gateway(settings) as live:
        yield live


def post(gw, tenant, body):
    return httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=10,
                      headers={"authorization": f"Bearer {KEYS[tenant]}"})


def test_a_repeated_deterministic_request_is_a_hit_that_spends_no_quota(gateway):
    first = post(gateway, "acme", {**ASK, "temperature": 0})
    assert first.status_code == 200 and "x-sluice-cache" not in first.headers

    def hit() -> bool:
        r = post(gateway, "acme", {**ASK, "temperature": 0})
        return r.status_code == 200 and r.headers.get("x-sluice-cache") == "hit" and r.json() == first.json()

    assert wait_until(hit)
    assert all(hit() for _ in range(3))  # 2 requests an hour, and still answered: hits spend no quota
    assert wait_until(lambda: (metric_value(gateway.url, "sluice_cache_requests_total", model="m", result="hit")
                               or 0) >= 4)


def test_sampled_streamed_and_other_tenants_requests_are_not_served_from_it(gateway):
    post(gateway, "beta", {**ASK, "seed": 7})
    assert post(gateway, "beta", {**ASK, "seed": 7}).headers.get("x-sluice-cache") == "hit"
    sampled = [post(gateway, "beta", {**ASK, "temperature": 0.8}) for _ in range(2)]
    assert sampled[0].status_code == 200 and "x-sluice-cache" not in sampled[0].headers
    assert sampled[1].status_code == 429  # never answered from the cache: the second spends quota it no longer has
    other = post(gateway, "acme", {**ASK, "seed": 7})  # acme never asked with this seed: not beta's answer
    assert other.headers.get("x-sluice-cache") != "hit"


async def test_memory_cache_expires_and_stays_bounded():
    clock = FakeClock()
    cache = MemoryCache(clock, max_entries=2)
    await cache.set("a", b"1", ttl_s=10)
    await cache.set("b", b"2", ttl_s=10)
    await cache.get("a")
    await cache.set("c", b"3", ttl_s=10)  # evicts the least recently used: b
    assert await cache.get("b") is None and await cache.get("a") == b"1"
    clock.advance(11)
    assert await cache.get("a") is None


async def test_redis_cache_round_trip_and_ttl(redis_server):
    cache = RedisCache(redis_server.url)
    await cache.set("{sluice}:cache:test", b"answer", ttl_s=0.2)
    assert await cache.get("{sluice}:cache:test") == b"answer"
    import asyncio
    await asyncio.sleep(0.35)
    assert await cache.get("{sluice}:cache:test") is None
    await cache.close()
