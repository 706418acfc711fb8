"""Preemption in front of a real vLLM: a greedy stream stopped for a premium request and resumed from its token ids
says exactly what it says uninterrupted, with vLLM's own usage, and its prefix is read back from vLLM's cache."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sluice.config import parse_settings
from sluice.identity import hash_key
from tests.conftest import LiveServer, metric_value, serve_gateway, wait_until
from tests.vllm.engine_process import VllmProcess

pytestmark = pytest.mark.vllm

PREMIUM, STANDARD = "sk-sluice-premium-key-0123456789", "sk-sluice-standard-key-0123456789"
CHAT = "/v1/chat/completions"
LONG = {"model": "tiny", "messages": [{"role": "user", "content": "count from one to a thousand"}],
        "max_tokens": 900, "ignore_eos": True, "temperature": 0, "stream": True,
        "stream_options": {"include_usage": True}}


@pytest.fixture(scope="module")
def gateway(vllm_server: VllmProcess) -> Iterator[LiveServer]:
    settings = parse_settings({
        "models": [{"name": "tiny", "engine": {"dialect": "vllm", "urls": [vllm_server.url]},
                    "admission": {"window": {"kind": "fixed", "initial": 1}, "watch_load": False,
                                  "preemption": {"enabled": True}}}],
        "tiers": {"premium": {"priority": 10, "max_queue_s": 30}, "standard": {"priority": 0, "max_queue_s": 60}},
        "keys": [{"id": "p", "hash": hash_key(PREMIUM), "tier": "premium"},
                 {"id": "s", "hash": hash_key(STANDARD), "tier": "standard"}],
    })
    with serve_gateway(settings) as live:
        yield live


def events_of(lines: Iterator[str], until_tokens: int | None = None) -> list[Any]:
    events: list[Any] = []
    for line in lines:
        if line.startswith("data: "):
            payload = line[6:]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
            if until_tokens is not None and len([e for e in events if _text(e)]) >= until_tokens:
                break
    return events


def cache_hits(url: str) -> float:
    """vLLM's prefix cache hits (tokens), over all its engines."""
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "vllm:prefix_cache_hits_total")


def _text(event: Any) -> str:
    if not isinstance(event, dict):
        return ""
    return "".join(c.get("delta", {}).get("content") or "" for c in event.get("choices", []))


def preemptions(gateway: LiveServer) -> float:
    return metric_value(gateway.url, "sluice_admission_preemptions_total", model="tiny", priority="0") or 0.0


async def through_gateway(gateway: LiveServer) -> tuple[list[Any], int, float]:
    """The long answer through the gateway, with a premium request sent while it runs: once 150 of its tokens have
    arrived, or after a second if none has (vLLM may hold an answer, headers included, until it is done, when the
    machine is starved). Returns the answer's events, how many of its tokens had arrived when the premium request
    was answered, and how long the answer went on streaming after that."""
    events: list[tuple[float, Any]] = []
    async with httpx.AsyncClient(base_url=gateway.url, timeout=120) as http:
        async def standard() -> None:
            async with http.stream("POST", CHAT, json=LONG, headers={"authorization": f"Bearer {STANDARD}"}) as resp:
                assert resp.status_code == 200
                async for line in resp.aiter_lines():
                    if line.startswith("data: "):
                        payload = line[6:]
                        events.append((time.monotonic(), payload if payload == "[DONE]" else json.loads(payload)))

        answer = asyncio.ensure_future(standard())
        sent = time.monotonic()
        while not answer.done():
            tokens = sum(1 for _, e in events if _text(e))
            if tokens >= 150 or (tokens == 0 and time.monotonic() - sent >= 1.0):
                break
            await asyncio.sleep(0.01)
        premium = await http.post(CHAT, headers={"authorization": f"Bearer {PREMIUM}"},
                                  json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                                        "max_tokens": 4})
        assert premium.status_code == 200, premium.text
        answered = time.monotonic()
        await answer
    before = sum(1 for t, e in events if t <= answered and _text(e))
    return [e for _, e in events], before, events[-1][0] - answered


async def test_a_stopped_greedy_stream_resumes_into_the_same_answer(gateway: LiveServer,
                                                                    vllm_server: VllmProcess) -> None:
    """A running answer gives its place to the premium request (exactly once) and says what it says uninterrupted:
    stopped before vLLM answered, it is sent again whole; stopped mid-stream, its rest is sent from its token ids
    and reads its prefix back from vLLM's cache. Tried until one stop came mid-stream; a try in which the premium
    request came only once the answer was over (the machine stalled) must not have stopped anything."""
    with httpx.stream("POST", vllm_server.url + CHAT, json=LONG, timeout=120) as resp:
        direct = events_of(resp.iter_lines())
    stopped_before_answer = 0
    for _ in range(6):
        stopped_before, hits_before = preemptions(gateway), cache_hits(vllm_server.url)
        via, tokens_before, streamed_after_s = await through_gateway(gateway)
        same_answer(via, direct)
        stopped = preemptions(gateway) - stopped_before
        assert stopped <= 1
        if not stopped:
            assert streamed_after_s < 0.2, "the answer went on streaming, yet the premium request did not stop it"
        elif tokens_before >= 150:
            # the rest's prompt (19 + at least 150 tokens) starts with a full block (128 tokens on vLLM's CPU
            # backend) that its prefill read back from the cache instead of computing it again
            assert wait_until(lambda hits_before=hits_before: cache_hits(vllm_server.url) - hits_before >= 128)
            return
        else:
            stopped_before_answer += 1
    pytest.skip(f"no stop came mid-stream in six tries ({stopped_before_answer} came before vLLM answered, and "
                "were sent again whole, checked above): resuming from token ids was not exercised")


def same_answer(via: list[Any], direct: list[Any]) -> None:
    """What the gateway streamed says what vLLM says uninterrupted, with vLLM's usage, as one stream."""
    assert via[-1] == "[DONE]"
    assert "".join(map(_text, via)) == "".join(map(_text, direct))
    [via_usage] = [e["usage"] for e in via if isinstance(e, dict) and e.get("usage")]
    [direct_usage] = [e["usage"] for e in direct if isinstance(e, dict) and e.get("usage")]
    assert via_usage == direct_usage
    chunks = [e for e in via if isinstance(e, dict)]
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}
    assert all("token_ids" not in choice for c in chunks for choice in c["choices"])
