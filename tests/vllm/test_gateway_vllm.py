"""Sluice in front of a real vLLM: answers, streams and usage pass through as vLLM gives them."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sluice.config import parse_settings
from tests.conftest import LiveServer, serve_gateway
from tests.vllm.engine_process import VllmProcess

pytestmark = pytest.mark.vllm

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
GREEDY = {"model": "tiny", "max_tokens": 12, "temperature": 0}
MESSAGES = [{"role": "user", "content": "count from one to ten"}]


@pytest.fixture(scope="module")
def gateway(vllm_server: VllmProcess) -> Iterator[LiveServer]:
    settings = parse_settings({
        "models": [{"name": "tiny", "engine": {"dialect": "vllm", "urls": [vllm_server.url]}}],
        "auth": {"mode": "open"},
    })
    with serve_gateway(settings) as live:
        yield live


def post(base: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = httpx.post(base + path, json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    return resp.json()


def stream(base: str, body: dict[str, Any]) -> list[dict[str, Any] | str]:
    """Every SSE data payload, decoded (``"[DONE]"`` kept as a string)."""
    events: list[dict[str, Any] | str] = []
    with httpx.stream("POST", base + CHAT, json={**body, "stream": True}, timeout=60) as resp:
        assert resp.status_code == 200, resp.read()
        for line in resp.iter_lines():
            if line.startswith("data: "):
                payload = line[6:]
                events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def text_of(events: list[dict[str, Any] | str]) -> str:
    return "".join(e["choices"][0]["delta"].get("content") or "" for e in events
                   if isinstance(e, dict) and e.get("choices"))


def usage_chunks(events: list[dict[str, Any] | str]) -> list[dict[str, Any]]:
    return [e for e in events if isinstance(e, dict) and e.get("usage")]


def test_chat_answer_and_usage_are_vllms(gateway: LiveServer, vllm_server: VllmProcess) -> None:
    body = {**GREEDY, "messages": MESSAGES}
    direct = post(vllm_server.url, CHAT, body)
    via = post(gateway.url, CHAT, body)
    assert via["usage"] == direct["usage"] and via["usage"]["completion_tokens"] > 0
    assert via["choices"][0]["message"]["content"] == direct["choices"][0]["message"]["content"]
    assert via["model"] == "tiny" and via["object"] == "chat.completion"


def test_streamed_chat_carries_vllms_usage_when_asked(gateway: LiveServer, vllm_server: VllmProcess) -> None:
    body = {**GREEDY, "messages": MESSAGES, "stream_options": {"include_usage": True}}
    direct, via = stream(vllm_server.url, body), stream(gateway.url, body)
    assert via[-1] == "[DONE]"
    assert text_of(via) == text_of(direct) and text_of(via)
    [via_usage], [direct_usage] = usage_chunks(via), usage_chunks(direct)
    assert via_usage["usage"] == direct_usage["usage"] and via_usage["choices"] == []
    assert via.index(via_usage) == len(via) - 2  # last, before [DONE], as OpenAI sends it


def test_usage_chunk_is_hidden_when_not_asked_but_still_counted(gateway: LiveServer) -> None:
    before = _output_tokens(gateway)
    events = stream(gateway.url, {**GREEDY, "messages": MESSAGES})
    assert events[-1] == "[DONE]" and text_of(events)
    assert usage_chunks(events) == [] and all(e["choices"] for e in events if isinstance(e, dict))
    assert _output_tokens(gateway) - before == 12  # the gateway read vLLM's usage chunk, and dropped it


def test_completions(gateway: LiveServer, vllm_server: VllmProcess) -> None:
    body = {**GREEDY, "prompt": "one two three four", "max_tokens": 8}
    direct, via = post(vllm_server.url, COMPLETIONS, body), post(gateway.url, COMPLETIONS, body)
    assert via["usage"] == direct["usage"] and via["usage"]["completion_tokens"] == 8
    assert via["choices"][0]["text"] == direct["choices"][0]["text"]
    assert via["object"] == "text_completion"


def test_models_and_readiness(gateway: LiveServer) -> None:
    models = httpx.get(gateway.url + "/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["tiny"]


def _output_tokens(gateway: LiveServer) -> float:
    """Output tokens counted so far, once no chat request is in flight: a stream's client may read its [DONE] before
    the gateway has recorded the request (its accounting comes after the last write)."""
    deadline = time.monotonic() + 10
    while True:
        text = httpx.get(gateway.url + "/metrics", timeout=10).text
        samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
        busy = any(s.name == "sluice_requests_in_flight" and s.labels == {"route": CHAT} and s.value
                   for s in samples)
        if not busy or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    output = {"model": "tiny", "tenant": "default", "direction": "output"}
    return next((s.value for s in samples if s.name == "sluice_tokens_total" and s.labels == output), 0.0)
