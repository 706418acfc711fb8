"""Waiting for quota through a live gateway, on memory and on Redis state: of three simultaneous requests with a
budget of one request a second and ``max_wait_s: 1.5``, one is served, one waits its turn and is served, and the
third, whose turn would come after 2 s, is refused at once (while the second still waits) and told so."""

from __future__ import annotations

import asyncio
import re
import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sluice.config import parse_settings
from sluice.identity import hash_key
from tests.conftest import serve_gateway

KEY = "sk-sluice-test-waiter-0123456789"
BODY = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}


@pytest.fixture(params=["memory", "redis"])
def gateway(request):
    state = "memory://" if request.param == "memory" else request.getfixturevalue("redis_server").url
    settings = parse_settings({
        "state": state,
        "models": [{"name": "m", "sim": {"speed": 100, "output_len_min": 2, "output_len_max": 2}}],
        "tiers": {"wait": {"requests": {"rate": "1/second", "burst": 1}, "max_wait_s": 1.5}},
        # a key id of its own: the Redis server is shared by the whole test session
        "keys": [{"id": f"waiter-{uuid.uuid4().hex[:8]}", "hash": hash_key(KEY), "tier": "wait"}],
    })
    with serve_gateway(settings) as live:
        yield live


def waiting_now(metrics_text: str) -> float:
    return next(s.value for f in text_string_to_metric_families(metrics_text) for s in f.samples
                if s.name == "sluice_quota_waiting")


async def test_two_of_three_simultaneous_waiters_are_served_and_the_third_is_refused_at_once(gateway):
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        calls = [asyncio.ensure_future(http.post("/v1/chat/completions", json=BODY,
                                                 headers={"authorization": f"Bearer {KEY}"})) for _ in range(3)]
        answered: list[httpx.Response] = []
        refused_while = None
        for next_answer in asyncio.as_completed(calls):
            response = await next_answer
            answered.append(response)
            if response.status_code == 429:
                # refused at once: the request served second is still waiting for its turn
                refused_while = waiting_now((await http.get("/metrics")).text)
        assert sorted(r.status_code for r in answered) == [200, 200, 429]
        assert answered[-1].status_code == 200  # the waiter is answered last
        assert refused_while == 1
        refused = next(r for r in answered if r.status_code == 429)
        assert refused.headers["retry-after"] == "2"  # its turn: after the one waiting (at 1 s), at 2 s
        assert refused.headers["x-sluice-reason"] == "quota_requests"
        error = refused.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["code"] == "rate_limit_exceeded"
        assert re.search(r"Please try again in (1\.\d+|2)s\.$", error["message"]), error["message"]
        metrics = (await http.get("/metrics")).text
    waited = [s.value for f in text_string_to_metric_families(metrics) for s in f.samples
              if s.name == "sluice_quota_wait_seconds_count"]
    assert waited == [1.0] and waiting_now(metrics) == 0
