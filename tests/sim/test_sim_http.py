"""The simulator over HTTP on a real socket."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sluice.config import SimSettings
from sluice.protocol import ChatMessage, SSEParser, sse_data
from sluice.sim import SimServer, count_chat, count_prompt, count_text, serve_sim

MODEL = "sim-model"
FAST = SimSettings(speed=1e9, max_model_len=256, output_len_min=5, output_len_max=40, num_kv_blocks=1024)
SLOW = SimSettings(decode_base_s=0.05, max_model_len=4096, max_num_seqs=1, max_waiting=0)
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello, how are you?"}]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def server() -> AsyncIterator[SimServer]:
    srv = await SimServer.start(FAST, model_name=MODEL)
    yield srv
    await srv.stop()


async def post(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with http.post(url, json=body) as resp:
        raw = await resp.read()
        return resp.status, orjson.loads(raw)


async def stream(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> list[bytes]:
    """The data payloads of an SSE response, [DONE] included."""
    parser = SSEParser()
    async with http.post(url, json=body | {"stream": True}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        events = parser.feed(await resp.read())
    assert parser.tail() == b""
    return [data for data in map(sse_data, events) if data is not None]


def chat(**kw: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": MESSAGES} | kw


def completion(**kw: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": "Once upon a time,"} | kw


async def test_chat_non_streamed(server: SimServer, http: aiohttp.ClientSession) -> None:
    status, body = await post(http, server.url + "/v1/chat/completions", chat(max_tokens=30))
    assert status == 200
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
    assert isinstance(body["created"], int) and body["model"] == MODEL
    [choice] = body["choices"]
    assert choice["index"] == 0 and choice["logprobs"] is None
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] in ("stop", "length")
    text = choice["message"]["content"]
    usage = body["usage"]
    assert usage["completion_tokens"] == count_text(text) >= 1
    assert usage["completion_tokens"] <= 30
    assert usage["prompt_tokens"] == 3 + 2 * 4 + count_text("Be brief.") + count_text("Hello, how are you?")
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_completion_non_streamed(server: SimServer, http: aiohttp.ClientSession) -> None:
    status, body = await post(http, server.url + "/v1/completions", completion())
    assert status == 200
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion"
    [choice] = body["choices"]
    assert body["usage"]["completion_tokens"] == count_text(choice["text"]) <= 16  # the completions default
    assert body["usage"]["prompt_tokens"] == count_prompt("Once upon a time,") == 5


async def test_token_id_prompt_counts_its_length(server: SimServer, http: aiohttp.ClientSession) -> None:
    _, body = await post(http, server.url + "/v1/completions", completion(prompt=[1, 2, 3, 4, 5, 6, 7]))
    assert body["usage"]["prompt_tokens"] == 7


async def test_chat_streamed_with_usage(server: SimServer, http: aiohttp.ClientSession) -> None:
    opts = {"stream_options": {"include_usage": True}}
    events = await stream(http, server.url + "/v1/chat/completions", chat(max_tokens=30, **opts))
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    first, *tokens, last = chunks
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == first["id"] for c in chunks)
    assert all("usage" in c and c["usage"] is None for c in [first, *tokens])
    assert last["choices"] == []
    texts = [c["choices"][0]["delta"]["content"] for c in tokens]
    assert all(count_text(t) == 1 for t in texts)  # one chunk per token
    assert [c["choices"][0]["finish_reason"] for c in tokens[:-1]] == [None] * (len(tokens) - 1)
    assert tokens[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert last["usage"]["completion_tokens"] == len(tokens) == count_text("".join(texts))
    assert last["usage"]["prompt_tokens"] == count_chat_messages()


def count_chat_messages() -> int:
    return count_chat([ChatMessage(**m) for m in MESSAGES])


async def test_completion_streamed_without_usage(server: SimServer, http: aiohttp.ClientSession) -> None:
    events = await stream(http, server.url + "/v1/completions", completion(max_tokens=12))
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert all("usage" not in c for c in chunks)
    assert all(len(c["choices"]) == 1 and c["object"] == "text_completion" for c in chunks)
    assert 1 <= len(chunks) <= 12


async def test_ignore_eos_gives_exactly_max_tokens(server: SimServer, http: aiohttp.ClientSession) -> None:
    for max_tokens in (1, 37, 100):
        _, body = await post(
            http, server.url + "/v1/completions", completion(max_tokens=max_tokens, ignore_eos=True)
        )
        assert body["usage"]["completion_tokens"] == max_tokens
        assert body["choices"][0]["finish_reason"] == "length"
        assert count_text(body["choices"][0]["text"]) == max_tokens


async def test_max_tokens_caps_and_reports_length(server: SimServer, http: aiohttp.ClientSession) -> None:
    _, body = await post(http, server.url + "/v1/chat/completions", chat(max_tokens=3))
    assert body["usage"]["completion_tokens"] == 3  # output_len_min is 5
    assert body["choices"][0]["finish_reason"] == "length"
    _, body = await post(
        http, server.url + "/v1/chat/completions", chat(max_tokens=100, max_completion_tokens=2)
    )
    assert body["usage"]["completion_tokens"] == 2


async def test_natural_length_stops(server: SimServer, http: aiohttp.ClientSession) -> None:
    _, body = await post(http, server.url + "/v1/chat/completions", chat(max_tokens=200))
    assert 5 <= body["usage"]["completion_tokens"] <= 40
    assert body["choices"][0]["finish_reason"] == "stop"


async def test_same_seed_same_text(server: SimServer, http: aiohttp.ClientSession) -> None:
    url = server.url + "/v1/chat/completions"
    texts = []
    for seed in (7, 7, 8):
        _, body = await post(http, url, chat(seed=seed, max_tokens=200))
        texts.append(body["choices"][0]["message"]["content"])
    assert texts[0] == texts[1]
    assert texts[0] != texts[2]
    events = await stream(http, url, chat(seed=7, max_tokens=200))
    streamed = "".join(orjson.loads(e)["choices"][0]["delta"]["content"] for e in events[:-1])
    assert streamed == texts[0]


async def test_n_choices_are_separate_sequences(server: SimServer, http: aiohttp.ClientSession) -> None:
    _, body = await post(http, server.url + "/v1/chat/completions", chat(n=3, max_tokens=50, seed=1))
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    lengths = [count_text(c["message"]["content"]) for c in body["choices"]]
    assert body["usage"]["completion_tokens"] == sum(lengths)
    assert body["usage"]["prompt_tokens"] == count_chat_messages()  # the prompt once
    events = await stream(http, server.url + "/v1/completions", completion(n=2, max_tokens=5, ignore_eos=True))
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert sorted(c["choices"][0]["index"] for c in chunks) == [0] * 5 + [1] * 5


async def test_too_long_is_400(server: SimServer, http: aiohttp.ClientSession) -> None:
    status, body = await post(http, server.url + "/v1/completions", completion(max_tokens=300))
    assert status == 400
    assert body == {
        "error": {
            "message": "This model's maximum context length is 256 tokens. However, you requested 305 tokens "
            "(5 in the messages, 300 in the completion). Please reduce the length of the messages or completion.",
            "type": "BadRequestError",
            "param": None,
            "code": 400,
        }
    }
    status, body = await post(http, server.url + "/v1/chat/completions", chat(messages=[
        {"role": "user", "content": "word " * 300}
    ]))
    assert status == 400 and "maximum context length is 256 tokens" in body["error"]["message"]


async def test_unknown_model_is_404(server: SimServer, http: aiohttp.ClientSession) -> None:
    status, body = await post(http, server.url + "/v1/chat/completions", chat(model="nope"))
    assert status == 404
    assert body["error"]["message"] == "The model `nope` does not exist."
    assert body["error"]["type"] == "NotFoundError" and body["error"]["code"] == 404


async def test_invalid_body_is_400(server: SimServer, http: aiohttp.ClientSession) -> None:
    async with http.post(server.url + "/v1/chat/completions", data=b"{not json") as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["type"] == "BadRequestError"
    status, body = await post(http, server.url + "/v1/chat/completions", chat(max_tokens=0))
    assert status == 400 and "max_tokens" in body["error"]["message"]


async def test_models_health_and_embeddings(server: SimServer, http: aiohttp.ClientSession) -> None:
    async with http.get(server.url + "/v1/models") as resp:
        models = await resp.json()
    assert models["data"][0]["id"] == MODEL and models["data"][0]["max_model_len"] == 256
    async with http.get(server.url + "/health") as resp:
        assert resp.status == 200 and await resp.read() == b""
    url = server.url + "/v1/embeddings"
    _, a = await post(http, url, {"model": MODEL, "input": ["hello world", "other"]})
    _, b = await post(http, url, {"model": MODEL, "input": "hello world"})
    vec = a["data"][0]["embedding"]
    assert len(vec) == FAST.embedding_dim and math.isclose(sum(x * x for x in vec), 1.0, rel_tol=1e-9)
    assert b["data"][0]["embedding"] == vec and a["data"][1]["embedding"] != vec
    assert a["usage"]["prompt_tokens"] == 3 and a["object"] == "list"


async def test_metrics_endpoint_counts_generated_tokens(server: SimServer, http: aiohttp.ClientSession) -> None:
    total = 0
    for i in range(4):
        _, body = await post(http, server.url + "/v1/completions", completion(max_tokens=20, seed=i))
        total += body["usage"]["completion_tokens"]
    async with http.get(server.url + "/metrics") as resp:
        text = await resp.text()
    values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert values["vllm:generation_tokens_total"] == total
    assert values["vllm:prompt_tokens_total"] == 4 * 5
    assert values["vllm:e2e_request_latency_seconds_count"] == 4
    assert values["vllm:num_requests_running"] == 0


@pytest.mark.parametrize("dialect", ["sglang", "lmdeploy"])
async def test_dialect_endpoints(dialect: str, http: aiohttp.ClientSession) -> None:
    async with await SimServer.start(FAST.model_copy(update={"dialect": dialect}), model_name=MODEL) as srv:
        async with http.get(srv.url + "/metrics") as resp:
            text = await resp.text()
        names = {f.name for f in text_string_to_metric_families(text)}
        running = {"sglang": "sglang:num_running_reqs", "lmdeploy": "lmdeploy:num_requests_running"}[dialect]
        assert running in names and not any(n.startswith("vllm:") for n in names)
        async with http.get(srv.url + "/health_generate") as resp:
            assert resp.status == (200 if dialect == "sglang" else 404)
        if dialect == "sglang":
            async with http.get(srv.url + "/get_model_info") as resp:
                assert (await resp.json())["model_path"] == MODEL
            assert srv.engine.generation_tokens_total == 1  # health_generate ran one token through the engine


async def read_first_token(resp: aiohttp.ClientResponse) -> None:
    parser = SSEParser()
    while True:
        chunk = await resp.content.readany()
        assert chunk, "stream ended early"
        for data in map(sse_data, parser.feed(chunk)):
            if data and b'"text"' in data:
                return


async def test_client_disconnect_aborts_the_sequence(http: aiohttp.ClientSession) -> None:
    async with await SimServer.start(SLOW, model_name=MODEL) as srv:
        body = completion(max_tokens=1000, ignore_eos=True, stream=True)
        resp = await http.post(srv.url + "/v1/completions", json=body)
        await read_first_token(resp)
        assert srv.engine.num_running == 1 and srv.engine.used_blocks > 0
        resp.close()
        for _ in range(500):
            if srv.engine.num_running == 0:
                break
            await asyncio.sleep(0.01)
        assert srv.engine.num_running == 0 and srv.engine.used_blocks == 0


async def test_full_waiting_queue_is_503(http: aiohttp.ClientSession) -> None:
    async with await SimServer.start(SLOW, model_name=MODEL) as srv:
        body = completion(max_tokens=1000, ignore_eos=True, stream=True)
        async with http.post(srv.url + "/v1/completions", json=body) as first:
            await read_first_token(first)
            status, err = await post(http, srv.url + "/v1/completions", completion())
            assert status == 503
            assert err["error"]["type"] == "ServiceUnavailableError" and err["error"]["code"] == 503
            first.close()


async def test_stop_ends_streams_in_flight_without_done(http: aiohttp.ClientSession) -> None:
    srv = await SimServer.start(SLOW.model_copy(update={"max_waiting": None}), model_name=MODEL)
    body = completion(max_tokens=1000, ignore_eos=True)
    async with http.post(srv.url + "/v1/completions", json=body | {"stream": True}) as streamed:
        await read_first_token(streamed)
        waiting = asyncio.create_task(post(http, srv.url + "/v1/completions", body))
        while srv.engine.num_waiting == 0:
            await asyncio.sleep(0.01)
        await srv.stop()
        rest = await streamed.read()
    assert b"[DONE]" not in rest
    status, err = await waiting
    assert status == 503 and err["error"]["type"] == "ServiceUnavailableError"
    assert not srv.engine.has_work()


async def test_serve_sim_says_where_it_listens(capsys: pytest.CaptureFixture[str]) -> None:
    task = asyncio.create_task(serve_sim(FAST, model_name=MODEL, host="127.0.0.1", port=0))
    out = ""
    for _ in range(500):
        await asyncio.sleep(0.01)
        out = capsys.readouterr().out
        if out:
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert out.startswith("sluice sim: vllm engine simulator serving model 'sim-model' at http://127.0.0.1:")
    assert out.count("\n") == 1
