"""A slow Redis, still within the default store timeout: decisions stay exact across two gateway processes.

Redis is kept busy in slices of 80 ms (a script spinning on its clock), with short gaps: every decision waits
behind a slice (the old default timeout, 20 ms, counted such a Redis as down), none longer than the default timeout.
No gateway goes to degraded mode (whose local buckets would admit on top of the shared one), and each burst admits
exactly its bucket's capacity."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from sluice.config import QuotaSettings, SimSettings
from sluice.identity import hash_key
from tests.conftest import LiveSim
from tests.multiprocess.state_load import burst, degraded_events, gateway_processes

CAPACITY, ROUNDS = 6, 3
SLICE_S = 0.08
KEYS = {f"burst{i}": f"sk-sluice-slow-burst{i}-0123456789" for i in range(ROUNDS)}
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
SPIN = ("local t0 = redis.call('TIME') repeat local t = redis.call('TIME') "
        "until (t[1] - t0[1]) * 1000000 + (t[2] - t0[2]) > tonumber(ARGV[1]) return 1")


async def keep_busy(url: str, slice_s: float, stop: asyncio.Event) -> int:
    client = aioredis.from_url(url)
    slices = 0
    try:
        while not stop.is_set():
            await client.eval(SPIN, 0, int(slice_s * 1_000_000))
            slices += 1
            await asyncio.sleep(0.01)
    finally:
        await client.aclose()
    return slices


async def test_a_slow_redis_within_the_default_timeout_keeps_bursts_exact(redis, tmp_path):
    slice_s = SLICE_S
    assert slice_s < QuotaSettings().store_timeout_s / 2  # slow, and within the default timeout with room to spare
    with LiveSim(SimSettings(speed=1e6), model_name="m") as sim:
        config = {
            "state": redis.url,
            "models": [{"name": "m", "engine": {"urls": [sim.url]}}],
            "tiers": {"burst": {"requests": {"rate": "1/hour", "burst": CAPACITY}}},
            "quota": {"gateway_replicas": 2},
            "keys": [{"id": name, "hash": hash_key(key), "tier": "burst"} for name, key in KEYS.items()],
        }
        with gateway_processes(config, tmp_path, 2) as gateways:
            stop = asyncio.Event()
            busy = asyncio.create_task(keep_busy(redis.url, slice_s, stop))
            await asyncio.sleep(slice_s / 2)  # the first burst meets Redis busy
            try:
                admitted = []
                for key in KEYS.values():
                    statuses = await burst(gateways, key, 4 * CAPACITY, BODY)
                    assert set(statuses) <= {200, 429}, statuses
                    admitted.append(statuses.count(200))
            finally:
                stop.set()
                slices = await busy
            assert slices >= 1, "Redis was not kept busy: nothing tested"
            assert admitted == [CAPACITY] * ROUNDS
            assert degraded_events(gateways) == [0, 0]
