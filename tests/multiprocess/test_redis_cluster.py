"""Two gateway processes on a real Redis Cluster (three masters, three replicas; tests/redis_cluster.py), with the
default quota settings: limits shared exactly, cache, usage and the key directory across gateways, and a master
failover under load (SIGSTOP on the master serving the ``{sluice}`` slot, its replica promoted, then the old master
resumed: it rejoins as a replica).

During the failover the gateways decide by the fail-open allowance: each gateway a local bucket of the limit
divided by ``quota.gateway_replicas``; after it, Redis decides exactly again, on the promoted master, and every
concurrency permit held across the failover is released there."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx
import pytest

from sluice.config import SimSettings
from sluice.identity import hash_key
from sluice.quota._redis import load_script
from tests.conftest import LiveSim
from tests.multiprocess.state_load import burst, degraded, degraded_events, gateway_processes, wait_for
from tests.redis_cluster import command

ADMIN = "sk-sluice-cluster-admin-0123456789"
REPLICAS = 2
BURST = 12  # "burst" and "after": a full bucket admits exactly this many, then one per 10 minutes
GAP = 10  # "gap": its Redis bucket is spent before the failover; during it each gateway has ceil(GAP / 2) locally
HELD = 3  # "held": concurrent permits, held by slow requests across the failover
KEYS = {tier: f"sk-sluice-cluster-{tier}-0123456789" for tier in ("burst", "after", "gap", "held", "user")}
SHORT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
SLOW = {"model": "m", "messages": [{"role": "user", "content": "count slowly"}], "max_tokens": 16, "ignore_eos": True}


@pytest.fixture(scope="module")
def gateways(redis_cluster, tmp_path_factory):
    redis_cluster.flush()
    with LiveSim(SimSettings(speed=4.0, output_len_min=4, output_len_max=16), model_name="m") as sim:
        config = {
            "state": redis_cluster.url,
            "auth": {"admin_key_hash": hash_key(ADMIN)},
            "models": [{"name": "m", "engine": {"urls": [sim.url]}, "cache": {"enabled": True}}],
            "tiers": {
                "burst": {"requests": {"rate": "6/hour", "burst": BURST}},
                "after": {"requests": {"rate": "6/hour", "burst": BURST}},
                "gap": {"requests": {"rate": "1/day", "burst": GAP}},
                "held": {"requests": "100000/hour", "concurrent": HELD},
                "user": {"requests": "1000/hour"},
            },
            "quota": {"gateway_replicas": REPLICAS},  # otherwise the defaults (store timeout, retry, leases)
            "keys": [{"id": tier, "hash": hash_key(key), "tier": tier} for tier, key in KEYS.items()],
        }
        with gateway_processes(config, tmp_path_factory.mktemp("cluster"), REPLICAS) as procs:
            yield procs


def admin(gateway, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, gateway.url + path, headers={"authorization": f"Bearer {ADMIN}"}, timeout=10,
                         **kwargs)


def post(gateway, key: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(gateway.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"},
                      timeout=30)


async def test_two_gateways_share_a_limit_exactly_on_the_cluster(gateways):
    statuses = await burst(gateways, KEYS["burst"], 80, SHORT)
    assert statuses.count(200) == BURST, statuses
    assert statuses.count(429) == 80 - BURST, statuses


def test_cache_usage_and_key_directory_work_across_gateways_on_the_cluster(gateways):
    a, b = gateways
    issued = admin(a, "POST", "/admin/keys", json={"id": "issued-on-a", "tier": "user"})
    assert issued.status_code == 201, issued.text
    key = issued.json()["key"]
    assert wait_for(lambda: post(b, key, SHORT).status_code == 200)  # B reads the directory A wrote

    ask = {**SHORT, "messages": [{"role": "user", "content": "a cached question"}], "temperature": 0}
    first = post(a, key, ask)
    assert first.status_code == 200 and "x-sluice-cache" not in first.headers
    assert wait_for(lambda: post(b, key, ask).headers.get("x-sluice-cache") == "hit")  # A's answer, from B

    def requests_counted() -> int:
        return int(admin(b, "GET", "/admin/usage", params={"scope": "key", "id": "issued-on-a"}).json()["requests"])

    assert wait_for(lambda: requests_counted() >= 2)  # A's and B's uncached answers, flushed by each gateway

    revoked = admin(b, "POST", "/admin/keys/revoke", json={"id": "issued-on-a"})
    assert revoked.status_code == 200, revoked.text
    assert wait_for(lambda: post(a, key, SHORT).status_code == 401)  # revoked on B, refused on A


@dataclass
class Load:
    """Clients posting round-robin over the gateways until stopped; every answer kept with its key's name."""

    gateways: list[Any]
    answers: list[tuple[str, int, float]] = field(default_factory=list)  # (key name, status, answered at)

    async def run(self, stop: asyncio.Event, key: str, body: dict[str, Any], workers: int) -> None:
        urls = itertools.cycle(g.url for g in self.gateways)
        timeout = aiohttp.ClientTimeout(total=20)  # a hung connection fails the test
        async with aiohttp.ClientSession(headers={"authorization": f"Bearer {KEYS[key]}"}, timeout=timeout) as http:
            async def worker() -> None:
                while not stop.is_set():
                    async with http.post(next(urls) + "/v1/chat/completions", json=body) as r:
                        await r.read()
                        self.answers.append((key, r.status, time.monotonic()))
                    if r.status != 200:
                        await asyncio.sleep(0.02)

            await asyncio.gather(*(worker() for _ in range(workers)))

    def admitted(self, key: str, before: float = math.inf) -> int:
        return sum(1 for k, status, at in self.answers if k == key and status == 200 and at < before)


def concurrent_held(master_port: int) -> int:
    """Permits held in Redis, over every concurrency key (each a sorted set of decisions)."""
    keys = command(master_port, "--scan", "--pattern", "*:concurrent").split()
    return sum(int(command(master_port, "zcard", k).strip()) for k in keys)


async def test_a_master_failover_under_load_fails_open_within_the_allowance_then_limits_are_exact(
        gateways, redis_cluster):
    old = redis_cluster.master_of("{sluice}")
    others = [n for n in redis_cluster.nodes if n is not old]
    load = Load(gateways)
    stop = asyncio.Event()
    running = [asyncio.create_task(load.run(stop, "gap", SHORT, workers=4)),
               asyncio.create_task(load.run(stop, "held", SLOW, workers=6))]
    try:
        assert await asyncio.to_thread(wait_for, lambda: load.admitted("gap") == GAP and load.admitted("held") > HELD)
        await asyncio.sleep(0.5)
        paused_at = time.monotonic()
        old.pause()
        try:
            promoted = await asyncio.to_thread(
                wait_for, lambda: redis_cluster.serving("{sluice}", asking=others[0]) not in (None, old), 30.0)
            assert promoted, "no replica took over the {sluice} slot"
            assert await asyncio.to_thread(wait_for, lambda: degraded(gateways) == [0, 0], 30.0)
            recovered_at = time.monotonic()
            await asyncio.sleep(1.0)  # Redis decides again, under load
        finally:
            stop.set()
            old.resume()
        await asyncio.gather(*running)
    finally:
        stop.set()
        old.resume()

    statuses = {status for _, status, _ in load.answers}
    assert statuses <= {200, 429}, statuses  # no 500, no 503: the gap is absorbed by the local allowance
    assert all(e >= 1 for e in degraded_events(gateways)), "the failover was not noticed: nothing tested"
    assert load.admitted("gap", before=paused_at) == GAP  # exact before: Redis spent the bucket
    allowance = REPLICAS * math.ceil(GAP / REPLICAS)  # each gateway's local bucket, full when the gap began
    in_gap = load.admitted("gap") - GAP  # Redis' bucket was spent: every admission since was a local one
    assert 0 < in_gap <= allowance, (in_gap, allowance, paused_at, recovered_at)

    new = redis_cluster.master_of("{sluice}", asking=others[0])
    # Nothing charged twice, nothing leaked: every permit held across the failover is released on the new master.
    assert await asyncio.to_thread(wait_for, lambda: concurrent_held(new.port) == 0), concurrent_held(new.port)
    for gateway in gateways:  # and the full concurrent budget is there again, on each gateway
        async with aiohttp.ClientSession(headers={"authorization": f"Bearer {KEYS['held']}"}) as http:
            async def one(url: str = gateway.url) -> int:
                async with http.post(url + "/v1/chat/completions", json=SLOW) as r:
                    await r.read()
                    return r.status

            assert await asyncio.gather(*(one() for _ in range(HELD))) == [200] * HELD

    # The old master, resumed, rejoins as a replica of the new one (and is in sync: no full resync, a fork on the
    # new master, left to overlap the next burst).
    assert await asyncio.to_thread(
        wait_for, lambda: "slave" in redis_cluster.role(old, seen_by=new), 30.0), redis_cluster.role(old, new)
    await asyncio.to_thread(redis_cluster.wait_ok)

    # Exact again after the failover: a fresh bucket admits exactly its burst, decided by the promoted master
    # (which loaded the script itself: scripts are not replicated).
    episodes = degraded_events(gateways)
    statuses_after = await burst(gateways, KEYS["after"], 80, SHORT)
    assert statuses_after.count(200) == BURST, (statuses_after, episodes, degraded_events(gateways))
    sha = hashlib.sha1(load_script().encode()).hexdigest()
    assert command(new.port, "script", "exists", sha).strip() == "1"
