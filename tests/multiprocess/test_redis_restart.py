"""Redis killed and restarted (empty) under load: a concurrency limit of 8 never runs a 9th request, and the
gateway counts one outage, not one per stale pooled connection.

Counted at the engine (a simulator in this process): a request reaches it only once admitted, and leaves it before
its permit is given back, so what the engine runs at once never exceeds what holds permits. Through the outage the
gateway's local limit counts the permits it took in Redis and still holds; when Redis is back (empty), every permit
in flight is taken again there before Redis decides again; the pool is reset on the first connection error."""

from __future__ import annotations

import asyncio

import httpx

from sluice.config import SimSettings
from sluice.identity import hash_key
from tests.conftest import LiveSim
from tests.multiprocess.state_load import Load, burst, degraded, degraded_events, gateway_processes, wait_for

KEY = "sk-sluice-restart-eight-0123456789"
LIMIT = 8
BODY = {"model": "m", "messages": [{"role": "user", "content": "count"}], "max_tokens": 24, "ignore_eos": True}


class PeakInEngine:
    """The most requests the simulated engine held at once (running or waiting), from the moment it is watched."""

    def __init__(self, sim: LiveSim) -> None:
        self.peak = 0
        engine, submit = sim.engine, sim.engine.submit

        def watched(seqs):  # runs on the simulator's loop, as the engine does
            submit(seqs)
            self.peak = max(self.peak, engine.num_running + engine.num_waiting)

        engine.submit = watched


async def test_a_restart_admits_no_ninth_request_and_is_one_outage(redis, tmp_path):
    with LiveSim(SimSettings(speed=2.0, max_num_seqs=64), model_name="m") as sim:
        config = {
            "state": redis.url,
            "auth": {"mode": "api_key"},
            "models": [{"name": "m", "engine": {"urls": [sim.url]}}],
            "tiers": {"eight": {"concurrent": LIMIT, "requests": "100000/minute"}},
            "quota": {"store_retry_s": 0.2},
            "keys": [{"id": "eight", "hash": hash_key(KEY), "tier": "eight"}],
        }
        with gateway_processes(config, tmp_path, 1) as gateways:
            peak = PeakInEngine(sim)
            load = Load(gateways, KEY, BODY, workers=2 * LIMIT)
            stop = asyncio.Event()
            running = asyncio.create_task(load.run(stop))
            await asyncio.sleep(1.0)
            redis.kill()
            await asyncio.sleep(1.5)
            redis.start()  # same port, empty
            assert await asyncio.to_thread(wait_for, lambda: degraded(gateways) == [0])
            await asyncio.sleep(1.5)
            stop.set()
            await running

            statuses = load.statuses()
            assert set(statuses) <= {200, 429}, statuses
            assert peak.peak >= LIMIT, "the load never filled the limit: nothing tested"
            assert peak.peak <= LIMIT, f"{peak.peak} requests ran at once under a concurrency limit of {LIMIT}"
            assert degraded_events(gateways) == [1]
            log = (tmp_path / "gateway0.log").read_text()
            assert log.count("state store unavailable") == 1, log
            # Nothing left held: the limit's every permit is free again.
            assert await burst(gateways, KEY, LIMIT, BODY) == [200] * LIMIT
            assert httpx.get(gateways[0].url + "/health", timeout=10).status_code == 200
