"""Admission through a live gateway: queue timeouts as 503 (never 429), priority hints, priority to the engine."""

from __future__ import annotations

import asyncio
import threading

import httpx
import orjson
import pytest
from aiohttp import web

from sluice.config import parse_settings
from sluice.identity import hash_key
from tests.conftest import metric_value, serve_gateway, wait_until

KEY = "sk-sluice-admission-test-0123456789"
AUTH = {"authorization": f"Bearer {KEY}"}
LONG = {"messages": [{"role": "user", "content": "go on"}], "max_tokens": 3000, "ignore_eos": True, "stream": True}


@pytest.fixture(scope="module")
def gateway():
    settings = parse_settings({
        "models": [{"name": "m", "sim": {"max_num_seqs": 4},
                    "admission": {"window": {"kind": "fixed", "initial": 1}}}],
        "tiers": {"impatient": {"priority": 5, "max_queue_s": 0.3}},
        "keys": [{"id": "k", "hash": hash_key(KEY), "tier": "impatient"}],
    })
    with serve_gateway(settings) as live:
        yield live


def test_a_request_that_waits_too_long_gets_503_queue_timeout(gateway):
    with httpx.Client(base_url=gateway.url, headers=AUTH, timeout=30) as http:
        with http.stream("POST", "/v1/chat/completions", json={"model": "m", **LONG}) as first:
            lines = first.iter_lines()
            next(lines)  # the window's only place is taken
            r = http.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 503
    assert r.headers["x-sluice-reason"] == "queue_timeout" and int(r.headers["retry-after"]) >= 1
    assert r.json()["error"]["code"] == "overloaded"
    assert wait_until(lambda: metric_value(gateway.url, "sluice_rejections_total", reason="queue_timeout", model="m"))
    assert metric_value(gateway.url, "sluice_admission_limit", model="m") == 1.0
    text = httpx.get(gateway.url + "/metrics").text
    assert 'sluice_engine_replica_up{model="m",replica="http://127.0.0.1:' in text
    assert 'state="closed"} 1.0' in text and "sluice_engine_replica_breaker" in text
    assert metric_value(gateway.url, "sluice_engine_saturation", model="m") is not None


def test_a_priority_hint_that_is_not_a_number_is_400(gateway):
    r = httpx.post(gateway.url + "/v1/chat/completions", headers={**AUTH, "x-sluice-priority": "urgent"},
                   json={"model": "m", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "x-sluice-priority"


class RecordingEngine:
    """An engine stand-in that records the bodies it gets and answers like vLLM (for checking what is sent)."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _chat(self, request: web.Request) -> web.Response:
        self.bodies.append(orjson.loads(await request.read()))
        return web.json_response({"id": "x", "object": "chat.completion", "model": "m", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response()

    async def _start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/health", self._health)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    def __enter__(self) -> RecordingEngine:
        self.thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.mark.parametrize("dialect, to_engine, expected", [
    ("vllm", True, -5),      # vLLM runs lower values first
    ("sglang", True, 5),     # SGLang runs higher values first
    ("lmdeploy", True, None),  # LMDeploy takes none: stripped
    ("vllm", False, None),   # not scheduling by priority: a client's own field never reaches it
])
def test_priority_reaches_the_engine_in_its_own_convention(dialect, to_engine, expected):
    with RecordingEngine() as engine:
        settings = parse_settings({
            "models": [{"name": "m", "engine": {"dialect": dialect, "urls": [engine.url]},
                        "admission": {"priority_to_engine": to_engine, "watch_load": False}}],
            "tiers": {"t": {"priority": 5}},
            "keys": [{"id": "k", "hash": hash_key(KEY), "tier": "t"}],
        })
        with serve_gateway(settings) as gw:
            r = httpx.post(gw.url + "/v1/chat/completions", headers=AUTH, json={
                "model": "m", "messages": [{"role": "user", "content": "x"}], "priority": 99})
            assert r.status_code == 200, r.text
            lowered = httpx.post(gw.url + "/v1/chat/completions", headers={**AUTH, "x-sluice-priority": "-3"},
                                 json={"model": "m", "messages": [{"role": "user", "content": "x"}]})
            assert lowered.status_code == 200
    assert engine.bodies[0].get("priority") == expected
    if expected is not None:
        assert engine.bodies[1]["priority"] == (3 if dialect == "vllm" else -3)  # lowered, in the convention
