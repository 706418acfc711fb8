"""Preemption through a live gateway and the simulator (vLLM dialect, which never preempts for a seat itself):
a premium request takes a running standard request's place at once, and the standard stream goes on afterwards
as one uninterrupted answer, with usage counted once and the stopped request's prefix read back from the cache."""

from __future__ import annotations

import asyncio
import re

import httpx
import orjson
import pytest
from aiohttp import web

from sluice.clock import MonotonicClock
from sluice.config import parse_settings
from sluice.errors import ConfigError
from sluice.gateway._runtime import open_service
from sluice.identity import hash_key
from sluice.protocol import ChatMessage
from sluice.sim import count_chat
from sluice.telemetry import GatewayMetrics
from tests.conftest import metric_value, serve_gateway, wait_until

PREMIUM, STANDARD = "sk-sluice-premium-key-0123456789", "sk-sluice-standard-key-0123456789"
OUTPUT = 120
STORY = "tell me a long story about " + " ".join(f"item{i}" for i in range(24))  # a prompt of two full blocks
LONG = {"model": "m", "messages": [{"role": "user", "content": STORY}], "max_tokens": OUTPUT,
        "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
SHORT = {"model": "m", "messages": [{"role": "user", "content": "quick"}], "max_tokens": 4}


def settings(**preemption):
    return parse_settings({
        # slow enough that a long answer is still running when the premium request comes
        "models": [{"name": "m", "sim": {"max_num_seqs": 2, "decode_base_s": 0.02},
                    "admission": {"window": {"kind": "fixed", "initial": 2}, "watch_load": False,
                                  "preemption": {"enabled": True, **preemption}}}],
        "tiers": {"premium": {"priority": 10, "max_queue_s": 1.0}, "standard": {"priority": 0, "max_queue_s": 30}},
        "keys": [{"id": "p", "hash": hash_key(PREMIUM), "tier": "premium"},
                 {"id": "s", "hash": hash_key(STANDARD), "tier": "standard"}],
    })


@pytest.fixture(scope="module")
def gateway():
    with serve_gateway(settings()) as live:
        yield live


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def started_stream(http: httpx.AsyncClient, body: dict, first_events: int = 3):
    """A standard stream, read until it has produced a few tokens; returns (its events so far, the rest)."""
    cm = http.stream("POST", "/v1/chat/completions", json=body, headers=auth(STANDARD))
    resp = await cm.__aenter__()
    assert resp.status_code == 200
    lines = resp.aiter_lines()
    events: list = []
    while sum(1 for e in events if isinstance(e, dict) and _content(e)) < first_events:
        line = await anext(lines)
        if line.startswith("data: "):
            events.append(line[6:] if line[6:] == "[DONE]" else orjson.loads(line[6:]))
    return cm, lines, events


async def rest_of(cm, lines, events: list) -> list:
    async for line in lines:
        if line.startswith("data: "):
            events.append(line[6:] if line[6:] == "[DONE]" else orjson.loads(line[6:]))
    await cm.__aexit__(None, None, None)
    return events


def _content(event: dict) -> str:
    return "".join(c.get("delta", {}).get("content") or "" for c in event.get("choices", []))


def sim_url(gateway_url: str) -> str:
    return re.search(r'replica="(http://127\.0\.0\.1:\d+)"', httpx.get(gateway_url + "/metrics").text).group(1)


async def test_a_premium_request_takes_a_running_place_and_the_stopped_stream_goes_on(gateway):
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as http:
        first = await started_stream(http, LONG)
        second = await started_stream(http, LONG)
        premium = await http.post("/v1/chat/completions", json=SHORT, headers=auth(PREMIUM))
        assert premium.status_code == 200, premium.text  # the window's two places were taken: one was given up
        streams = await asyncio.gather(rest_of(*first), rest_of(*second))
    for events in streams:
        assert events[-1] == "[DONE]"
        chunks = [e for e in events if isinstance(e, dict)]
        assert {c["id"] for c in chunks} == {chunks[0]["id"]} and {c["object"] for c in chunks} == {
            "chat.completion.chunk"}
        text = "".join(map(_content, chunks))
        assert len(text.split()) == OUTPUT  # every token once: none lost, none repeated at the seam
        assert all("token_ids" not in c and "prompt_token_ids" not in c for c in chunks)
        assert all("token_ids" not in choice for c in chunks for choice in c["choices"])
        [usage] = [c["usage"] for c in chunks if c.get("usage")]
        assert usage["completion_tokens"] == OUTPUT and usage["prompt_tokens"] == count_chat(
            [ChatMessage(role="user", content=STORY)])
    assert metric_value(gateway.url, "sluice_admission_preemptions_total", model="m", priority="0") == 1.0
    sim = sim_url(gateway.url)
    # the rest's prefill read back at least the stopped stream's two prompt blocks from the cache
    assert wait_until(lambda: (metric_value(sim, "vllm:prefix_cache_hits_total", model_name="m", engine="0") or 0)
                      >= 2 * 16)


async def test_a_stream_that_could_not_be_resumed_exactly_is_never_stopped(gateway):
    stop = {**LONG, "stop": ["never said"]}  # stop strings: text held back could be lost at the seam
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as http:
        first = await started_stream(http, stop)
        second = await started_stream(http, stop)
        premium = await http.post("/v1/chat/completions", json=SHORT, headers=auth(PREMIUM))
        for stream in (first, second):
            await stream[0].__aexit__(None, None, None)
    assert premium.status_code == 503 and premium.headers["x-sluice-reason"] == "queue_timeout"


async def test_preemption_needs_an_engine_that_resumes_from_token_ids():
    config = settings().model_dump()
    config["models"][0]["sim"]["dialect"] = "sglang"
    with pytest.raises(ConfigError, match="preemption"):
        async with open_service(parse_settings(config), MonotonicClock(), GatewayMetrics()):
            pass


class HoldingEngine:
    """A vLLM-shaped engine that holds its answer (headers included) to the first request for ``hold``, as a
    busy engine does between its steps, and answers everything else at once with a short stream carrying token
    ids. It records every request body and whether a held request was withdrawn."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.withdrawn = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> HoldingEngine:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/health", self.health)
        self._runner = web.AppRunner(app, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def health(self, request: web.Request) -> web.Response:
        return web.Response()

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.bodies.append(body)
        if body["messages"][0]["content"] == "hold" and len(self.bodies) == 1:
            try:
                await asyncio.Event().wait()  # until the gateway withdraws it
            except asyncio.CancelledError:
                self.withdrawn.set()
                raise
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        head = {"id": f"chatcmpl-{len(self.bodies)}", "object": "chat.completion.chunk", "created": 1, "model": "m"}
        words = ["one", " two", " three"]
        chunks = [{**head, "prompt_token_ids": [1, 2], "choices": [
            {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
        chunks += [{**head, "choices": [{"index": 0, "delta": {"content": w}, "token_ids": [10 + i],
                                         "finish_reason": "length" if i == len(words) - 1 else None}]}
                   for i, w in enumerate(words)]
        chunks.append({**head, "choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 3,
                                                        "total_tokens": 5}})
        for chunk in chunks:
            await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp


async def test_a_stream_the_engine_has_not_answered_yet_gives_its_place_and_is_sent_again():
    """A standard stream just sent (the engine has not answered, not even its headers) is the cheapest place to
    take back: nothing was generated. The premium request gets it at once, and the standard request is sent
    again, whole, when a place frees; its client sees one ordinary answer."""
    async with HoldingEngine() as engine:
        config = parse_settings({
            "models": [{"name": "m", "engine": {"urls": [engine.url]},
                        "admission": {"window": {"kind": "fixed", "initial": 1}, "watch_load": False,
                                      "preemption": {"enabled": True}}}],
            "tiers": {"premium": {"priority": 10, "max_queue_s": 5.0},
                      "standard": {"priority": 0, "max_queue_s": 30}},
            "keys": [{"id": "p", "hash": hash_key(PREMIUM), "tier": "premium"},
                     {"id": "s", "hash": hash_key(STANDARD), "tier": "standard"}],
        })
        held = {"model": "m", "messages": [{"role": "user", "content": "hold"}], "stream": True}
        with serve_gateway(config) as gw:
            async with httpx.AsyncClient(base_url=gw.url, timeout=30) as http:
                standard = asyncio.ensure_future(http.post("/v1/chat/completions", json=held, headers=auth(STANDARD)))
                assert await wait_for_async(lambda: len(engine.bodies) == 1)
                premium = await http.post("/v1/chat/completions", json={**SHORT, "stream": True},
                                          headers=auth(PREMIUM))
                assert premium.status_code == 200 and premium.text.endswith("data: [DONE]\n\n")
                await asyncio.wait_for(engine.withdrawn.wait(), 5)
                answer = await standard
            metrics = httpx.get(gw.url + "/metrics").text
    assert answer.status_code == 200
    events = [orjson.loads(line[6:]) for line in answer.text.splitlines()
              if line.startswith("data: ") and line != "data: [DONE]"]
    assert "".join(map(_content, events)) == "one two three" and answer.text.endswith("data: [DONE]\n\n")
    assert all("token_ids" not in c for e in events for c in e["choices"]) and "prompt_token_ids" not in answer.text
    held_again, = [b for b in engine.bodies[1:] if b["messages"][0]["content"] == "hold"]
    assert held_again == engine.bodies[0] and held_again["return_token_ids"] is True  # sent again whole
    assert 'sluice_admission_preemptions_total{model="m",priority="0"} 1.0' in metrics


async def wait_for_async(predicate, timeout_s: float = 5.0) -> bool:
    for _ in range(int(timeout_s / 0.01)):
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()
