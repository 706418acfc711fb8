"""Redis paused for a few seconds (SIGSTOP, then SIGCONT) under load through two gateway processes: nothing leaks
and nothing is settled twice.

Decisions that timed out at the gateway still run when Redis resumes: they are voided (refunded, released), so a
``concurrent: 1`` key can make a request at once after recovery, not a minute later. Settlements that timed out
and were kept for replay also run when Redis resumes: each applies once. Checked on Redis' own bucket: the tokens
it holds charged are exactly the tokens the requests it granted were served (non-streamed answers carry their
usage, and a settlement reconciles the reservation to it exactly)."""

from __future__ import annotations

import asyncio
import os
import signal

import httpx

from sluice.config import SimSettings
from sluice.identity import hash_key
from tests.conftest import LiveSim
from tests.multiprocess.state_load import Load, degraded, degraded_events, gateway_processes, wait_for

KEY, ADMIN = "sk-sluice-pause-one-0123456789", "sk-sluice-pause-admin-0123456789"
CAPACITY = 10_000_000  # tokens, one dripping back a day: over the test, what Redis holds charged is what was charged
# 64 tokens reserved for answers of 4 to 16: every settlement refunds most of its reservation (twice, if replayed)
BODY = {"model": "m", "messages": [{"role": "user", "content": "count"}], "max_tokens": 64}


def charged_in_redis(gateway) -> int:
    """Tokens Redis' bucket holds charged, read through the admin API (a peek that charges nothing)."""
    rows = httpx.get(gateway.url + "/admin/budget", params={"key_id": "one", "model": "m"},
                     headers={"authorization": f"Bearer {ADMIN}"}, timeout=10).json()["limits"]
    (tokens,) = [r for r in rows if r["kind"] == "tokens"]
    return CAPACITY - int(tokens["remaining"])


async def test_a_pause_leaks_no_permit_and_settles_every_reservation_once(redis, tmp_path):
    with LiveSim(SimSettings(speed=4.0, output_len_min=4, output_len_max=16), model_name="m") as sim:
        config = {
            "state": redis.url,
            "auth": {"admin_key_hash": hash_key(ADMIN)},
            "models": [{"name": "m", "engine": {"urls": [sim.url]}}],
            "tiers": {"one": {"concurrent": 1, "tokens": {"rate": "1/day", "burst": CAPACITY}}},
            "quota": {"gateway_replicas": 2, "store_retry_s": 0.2},
            "keys": [{"id": "one", "hash": hash_key(KEY), "tier": "one"}],
        }
        with gateway_processes(config, tmp_path, 2) as gateways:
            load = Load(gateways, KEY, BODY, workers=6)
            stop = asyncio.Event()
            running = asyncio.create_task(load.run(stop))
            await asyncio.sleep(1.5)
            os.kill(redis.proc.pid, signal.SIGSTOP)
            try:
                await asyncio.sleep(3.0)
            finally:
                os.kill(redis.proc.pid, signal.SIGCONT)
            assert await asyncio.to_thread(wait_for, lambda: degraded(gateways) == [0, 0])
            await asyncio.sleep(1.0)
            stop.set()
            await running

            statuses = load.statuses()
            assert set(statuses) <= {200, 429}, statuses
            assert all(e >= 1 for e in degraded_events(gateways)), "the pause was not noticed: nothing tested"
            # Granted by Redis, or locally in degraded mode (a local bucket holds half the capacity: 2 gateways).
            by_redis = [a for a in load.answers if a.status == 200
                        and int(a.headers["x-ratelimit-remaining-tokens"]) > CAPACITY // 2]
            served = sum(a.doc["usage"]["total_tokens"] for a in by_redis)
            assert by_redis and len(by_redis) < statuses[200], "no request was granted locally: nothing tested"

            for gateway in gateways:  # no permit left behind: the one permit is free at once, on both gateways
                r = httpx.post(gateway.url + "/v1/chat/completions", json=BODY,
                               headers={"authorization": f"Bearer {KEY}"}, timeout=30)
                assert r.status_code == 200, r.text
                served += r.json()["usage"]["total_tokens"]
            wait_for(lambda: charged_in_redis(gateways[0]) == served)  # settlements travel after the answers
            assert charged_in_redis(gateways[0]) == served
