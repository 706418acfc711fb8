"""Four gateway processes on one real Redis: the limits hold exactly, across all of them."""

from __future__ import annotations

import asyncio
import itertools

import aiohttp
import pytest
import yaml

from sluice.config import SimSettings
from sluice.identity import hash_key
from tests.conftest import LiveSim
from tests.gateway_process import GatewayProcess

KEYS = {"burst": "sk-sluice-mp-burst-0123456789", "tpm": "sk-sluice-mp-tpm-0123456789"}
BURST = 12
TOKEN_BUDGET = 1000
MAX_TOKENS = 100


@pytest.fixture(scope="module")
def gateways(redis_server, tmp_path_factory):
    redis_server.flush()
    tmp = tmp_path_factory.mktemp("mp")
    with LiveSim(SimSettings(speed=1e6), model_name="m") as sim:
        config = {
            "state": redis_server.url,
            "models": [{"name": "m", "engine": {"urls": [sim.url]}}],
            "tiers": {
                # burst 12, then one request every 10 minutes: within the test, exactly 12 get through
                "burst": {"requests": {"rate": "6/hour", "burst": BURST}},
                # requests are plentiful, tokens are not: the token bucket refuses, and must take nothing else
                "tpm": {"requests": "1000/hour", "tokens": f"{TOKEN_BUDGET}/hour"},
            },
            "quota": {"gateway_replicas": 4, "store_timeout_s": 1.0},
            "keys": [{"id": f"mp-{t}", "hash": hash_key(k), "tier": t} for t, k in KEYS.items()],
        }
        path = tmp / "sluice.yaml"
        path.write_text(yaml.safe_dump(config))
        procs = [GatewayProcess(path, tmp / f"gateway{i}.log") for i in range(4)]
        try:
            for p in procs:
                p.wait_healthy()
            yield procs
        finally:
            for p in procs:
                p.stop()


async def flood(gateways, key: str, count: int, body: dict) -> list[tuple[int, dict, dict]]:
    """``count`` concurrent requests, spread over the gateways round-robin."""
    urls = itertools.cycle(g.url for g in gateways)
    async with aiohttp.ClientSession(headers={"authorization": f"Bearer {key}"}) as http:
        async def one(url: str) -> tuple[int, dict, dict]:
            async with http.post(url + "/v1/chat/completions", json=body) as r:
                return r.status, await r.json(), dict(r.headers)

        return await asyncio.gather(*(one(next(urls)) for _ in range(count)))


async def test_the_burst_is_admitted_exactly_across_four_processes(gateways):
    results = await flood(gateways, KEYS["burst"], 80, {
        "model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
    statuses = [status for status, _, _ in results]
    assert statuses.count(200) == BURST, statuses
    assert statuses.count(429) == 80 - BURST
    assert all(h["x-sluice-reason"] == "quota_requests" for s, _, h in results if s == 429)


async def test_tokens_admitted_never_exceed_the_budget_and_refusals_take_nothing(gateways):
    body = {"model": "m", "messages": [{"role": "user", "content": "count to a hundred"}],
            "max_tokens": MAX_TOKENS, "ignore_eos": True}
    results = await flood(gateways, KEYS["tpm"], 40, body)
    admitted = [doc for status, doc, _ in results if status == 200]
    refused = [(doc, h) for status, doc, h in results if status == 429]
    used = sum(doc["usage"]["total_tokens"] for doc in admitted)
    assert admitted and refused
    assert len(admitted) + len(refused) == len(results), [s for s, _, _ in results]
    assert used <= TOKEN_BUDGET
    assert all(h["x-sluice-reason"] == "quota_tokens" for _, h in refused)
    # One more, too big for what is left of the tokens: its refusal reports the request bucket, which all the
    # token refusals before it left untouched.
    (status, _, headers), = await flood(gateways[:1], KEYS["tpm"], 1, {**body, "max_tokens": 500})
    assert status == 429
    assert int(headers["x-ratelimit-remaining-requests"]) == 1000 - len(admitted)
