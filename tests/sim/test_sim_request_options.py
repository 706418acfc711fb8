"""The simulator honours ``stop``, returns well-formed ``logprobs``, and refuses (400, the field named) what it does
not do (tools, structured output), in every dialect, streamed and not."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from sluice.config import SimSettings
from sluice.protocol import SSEParser, sse_data
from sluice.sim import SimServer

MODEL = "sim-model"
DIALECTS = ["vllm", "sglang", "lmdeploy"]
MESSAGES = [{"role": "user", "content": "Tell me a story."}]


@pytest.fixture(params=DIALECTS)
async def url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    settings = SimSettings(dialect=request.param, speed=1e9, max_model_len=512, output_len_min=20,
                           output_len_max=40, num_kv_blocks=1024)
    srv = await SimServer.start(settings, model_name=MODEL)
    yield srv.url
    await srv.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with http.post(url, json=body) as resp:
        return resp.status, orjson.loads(await resp.read())


async def chunks(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    parser = SSEParser()
    async with http.post(url, json=body | {"stream": True, "stream_options": {"include_usage": True}}) as resp:
        assert resp.status == 200
        events = parser.feed(await resp.read())
    data = [d for d in map(sse_data, events) if d is not None]
    assert data[-1] == b"[DONE]"
    return [orjson.loads(d) for d in data[:-1]]


def chat(**kw: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": MESSAGES, "seed": 7, "max_tokens": 30, "ignore_eos": True} | kw


def completion(**kw: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": "Once upon a time,", "seed": 7, "max_tokens": 30, "ignore_eos": True} | kw


def text_of(kind: str, choice: dict[str, Any]) -> str:
    return choice["message"]["content"] if kind == "chat" else choice["text"]


def streamed_text(kind: str, parts: list[dict[str, Any]]) -> str:
    key = "delta" if kind == "chat" else None
    return "".join((c["delta"].get("content") or "") if key else c["text"] for p in parts for c in p["choices"])


# -- stop ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["chat", "completion"])
async def test_a_stop_string_ends_the_text_before_it_with_finish_reason_stop(
    kind: str, url: str, http: aiohttp.ClientSession
) -> None:
    path = f"{url}/v1/chat/completions" if kind == "chat" else f"{url}/v1/completions"
    make = chat if kind == "chat" else completion
    status, plain = await post(http, path, make())
    assert status == 200
    full = text_of(kind, plain["choices"][0])
    words = full.split(" ")[1:]  # every generated token is " word"
    assert len(words) == 30
    stop = words[12][1:3]  # a piece of the 13th word: it may first appear earlier, inside another word
    cut = full.index(stop)
    completing = next(k for k in range(30) if len(" " + " ".join(words[: k + 1])) >= cut + len(stop))

    status, body = await post(http, path, make(stop=["never appears", stop]))
    assert status == 200
    choice = body["choices"][0]
    assert text_of(kind, choice) == full[:cut]  # the stop string itself is not returned
    assert choice["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == completing + 1 < 30  # generation ended there

    parts = await chunks(http, path, make(stop=stop))  # a single string works too
    assert streamed_text(kind, parts) == full[:cut]
    reasons = [c["finish_reason"] for p in parts for c in p["choices"] if c["finish_reason"]]
    assert reasons == ["stop"]
    assert parts[-1]["usage"]["completion_tokens"] == completing + 1


async def test_a_stop_string_that_never_appears_changes_nothing(url: str, http: aiohttp.ClientSession) -> None:
    _, plain = await post(http, f"{url}/v1/chat/completions", chat())
    _, stopped = await post(http, f"{url}/v1/chat/completions", chat(stop=["no such text", "\n", "!", "?"]))
    assert stopped["choices"][0]["message"] == plain["choices"][0]["message"]
    assert stopped["choices"][0]["finish_reason"] == "length"
    assert stopped["usage"] == plain["usage"]


async def test_the_first_stop_to_complete_wins_among_several(url: str, http: aiohttp.ClientSession) -> None:
    _, plain = await post(http, f"{url}/v1/completions", completion())
    full = plain["choices"][0]["text"]
    late, early = full[-8:], full[5:9]
    _, body = await post(http, f"{url}/v1/completions", completion(stop=[late, early]))
    assert body["choices"][0]["text"] == full[: full.index(early)]


async def test_an_empty_stop_string_is_refused(url: str, http: aiohttp.ClientSession) -> None:
    status, body = await post(http, f"{url}/v1/chat/completions", chat(stop=[""]))
    assert status == 400 and body["error"]["param"] == "stop"


# -- logprobs ------------------------------------------------------------------------------------------------------

async def test_chat_logprobs_have_openais_shape_whole_and_streamed(url: str, http: aiohttp.ClientSession) -> None:
    status, body = await post(http, f"{url}/v1/chat/completions", chat(max_tokens=8, logprobs=True, top_logprobs=3))
    assert status == 200
    choice = body["choices"][0]
    content = choice["logprobs"]["content"]
    assert len(content) == body["usage"]["completion_tokens"] == 8
    assert "".join(e["token"] for e in content) == choice["message"]["content"]
    for entry in content:
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
        assert entry["bytes"] == list(entry["token"].encode())
        assert entry["logprob"] <= 0
        top = entry["top_logprobs"]
        assert len(top) == 3 and top[0]["token"] == entry["token"] and top[0]["logprob"] == entry["logprob"]
        assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
        assert len({t["token"] for t in top}) == 3
        assert sum(math.exp(t["logprob"]) for t in top) <= 1 + 1e-9
        assert all(t["bytes"] == list(t["token"].encode()) for t in top)

    parts = await chunks(http, f"{url}/v1/chat/completions", chat(max_tokens=8, logprobs=True, top_logprobs=3))
    streamed = [e for p in parts for c in p["choices"] if c.get("logprobs") for e in c["logprobs"]["content"]]
    assert streamed == content  # the same numbers, one chunk per token


async def test_chat_logprobs_without_top_logprobs_list_none(url: str, http: aiohttp.ClientSession) -> None:
    _, body = await post(http, f"{url}/v1/chat/completions", chat(max_tokens=4, logprobs=True))
    assert all(e["top_logprobs"] == [] for e in body["choices"][0]["logprobs"]["content"])
    _, body = await post(http, f"{url}/v1/chat/completions", chat(max_tokens=4))
    assert body["choices"][0]["logprobs"] is None


async def test_completion_logprobs_have_openais_shape_whole_and_streamed(
    url: str, http: aiohttp.ClientSession
) -> None:
    status, body = await post(http, f"{url}/v1/completions", completion(max_tokens=6, logprobs=2))
    assert status == 200
    choice = body["choices"][0]
    lp = choice["logprobs"]
    assert set(lp) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"]) == 6
    text = choice["text"]
    assert "".join(lp["tokens"]) == text
    for token, logprob, top, offset in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"], lp["text_offset"],
                                           strict=True):
        assert text[offset:offset + len(token)] == token
        assert top[token] == logprob <= 0  # the sampled token is always listed
        assert len(top) == 2 and max(top.values()) == logprob

    parts = await chunks(http, f"{url}/v1/completions", completion(max_tokens=6, logprobs=2))
    merged: dict[str, list[Any]] = {k: [] for k in lp}
    for p in parts:
        for c in p["choices"]:
            if c.get("logprobs"):
                for k in merged:
                    merged[k] += c["logprobs"][k]
    assert merged == lp  # streamed offsets continue where the chunk before ended


async def test_logprobs_follow_a_stop_cut(url: str, http: aiohttp.ClientSession) -> None:
    _, plain = await post(http, f"{url}/v1/chat/completions", chat())
    stop = plain["choices"][0]["message"]["content"].split(" ")[10]
    _, body = await post(http, f"{url}/v1/chat/completions", chat(stop=stop, logprobs=True))
    assert len(body["choices"][0]["logprobs"]["content"]) == body["usage"]["completion_tokens"]


@pytest.mark.parametrize(("path", "field", "value", "param"), [
    ("chat", "top_logprobs", 3, "top_logprobs"),  # without logprobs: true
    ("chat", "logprobs", 3, "logprobs"),
    ("chat", "top_logprobs", 21, "top_logprobs"),
    ("completion", "logprobs", 21, "logprobs"),
    ("completion", "logprobs", True, "logprobs"),
    ("completion", "logprobs", -1, "logprobs"),
])
async def test_bad_logprobs_are_400_naming_the_field(
    path: str, field: str, value: Any, param: str, url: str, http: aiohttp.ClientSession
) -> None:
    extra = {field: value} | ({"logprobs": True} if field == "top_logprobs" and value == 21 else {})
    body = chat(**extra) if path == "chat" else completion(**extra)
    endpoint = "/v1/chat/completions" if path == "chat" else "/v1/completions"
    status, answer = await post(http, url + endpoint, body)
    assert status == 400
    assert set(answer["error"]) == {"message", "type", "param", "code"}
    assert answer["error"]["param"] == param


# -- what the simulator does not do ----------------------------------------------------------------------------------

TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


@pytest.mark.parametrize(("extra", "param"), [
    ({"tools": [TOOL]}, "tools"),
    ({"tools": [TOOL], "tool_choice": "required"}, "tools"),
    ({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}, "tool_choice"),
    ({"functions": [TOOL["function"]]}, "functions"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}, "response_format"),
    ({"guided_json": {"type": "object"}}, "guided_json"),
    ({"regex": "[a-z]+"}, "regex"),
])
async def test_what_it_cannot_do_is_a_plain_400(
    extra: dict[str, Any], param: str, url: str, http: aiohttp.ClientSession
) -> None:
    status, body = await post(http, f"{url}/v1/chat/completions", chat(**extra))
    assert status == 400
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["param"] == param
    assert "simulator" in body["error"]["message"]


@pytest.mark.parametrize("extra", [
    {"response_format": {"type": "text"}},
    {"tools": [TOOL], "tool_choice": "none"},
    {"tool_choice": "auto"},
    {"tools": []},
])
async def test_what_changes_nothing_is_accepted(extra: dict[str, Any], url: str, http: aiohttp.ClientSession) -> None:
    status, body = await post(http, f"{url}/v1/chat/completions", chat(**extra))
    assert status == 200, body


async def test_completions_refuse_structured_output_too(url: str, http: aiohttp.ClientSession) -> None:
    status, body = await post(http, f"{url}/v1/completions", completion(response_format={"type": "json_object"}))
    assert status == 400 and body["error"]["param"] == "response_format"
