"""The default configuration holds limits exactly across four busy gateway processes on one Redis.

No ``quota`` section at all: the store timeout is the default, chosen from bench/store_timeout.py, and
``gateway_replicas`` is 1, so a gateway that counted a healthy Redis as down would admit a whole burst from its own
local bucket. While every gateway serves a background load (its CPU busy), bursts on keys of their own are admitted
exactly (the old default, 20 ms, admitted up to twice the capacity here)."""

from __future__ import annotations

import asyncio

from sluice.config import SimSettings
from sluice.identity import hash_key
from tests.conftest import LiveSim
from tests.multiprocess.state_load import Load, burst, degraded_events, gateway_processes

CAPACITY, ROUNDS, GATEWAYS = 12, 3, 4
LOAD_KEY = "sk-sluice-default-load-0123456789"
KEYS = {f"burst{i}": f"sk-sluice-default-burst{i}-0123456789" for i in range(ROUNDS)}
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "ignore_eos": True}


async def test_four_busy_gateways_with_the_default_configuration_admit_each_burst_exactly(redis_server, tmp_path):
    redis_server.flush()
    with LiveSim(SimSettings(speed=1e6, max_num_seqs=256), model_name="m") as sim:
        config = {
            "state": redis_server.url,
            "models": [{"name": "m", "engine": {"urls": [sim.url]}}],
            "tiers": {"load": {"requests": "100000000/minute", "tokens": "10000000000/minute", "concurrent": 100000},
                      "burst": {"requests": {"rate": "1/hour", "burst": CAPACITY}}},
            "keys": [{"id": "load", "hash": hash_key(LOAD_KEY), "tier": "load"}]
            + [{"id": name, "hash": hash_key(key), "tier": "burst"} for name, key in KEYS.items()],
        }
        with gateway_processes(config, tmp_path, GATEWAYS) as gateways:
            load = Load(gateways, LOAD_KEY, BODY, workers=8 * GATEWAYS)
            stop = asyncio.Event()
            running = asyncio.create_task(load.run(stop))
            admitted = []
            try:
                await asyncio.sleep(1.0)
                for key in KEYS.values():
                    admitted.append((await burst(gateways, key, 2 * CAPACITY, BODY)).count(200))
                    await asyncio.sleep(0.5)
            finally:
                stop.set()
                await running
            assert load.statuses().get(200, 0) > 100, "the gateways were not kept busy: nothing tested"
            assert admitted == [CAPACITY] * ROUNDS
            assert degraded_events(gateways) == [0] * GATEWAYS
