"""Hostile input against the simulator (issue 15): it refuses what vLLM refuses, its engine loop never dies on
input, and if the loop dies anyway its ``/health`` says so (and a gateway's readiness sees it)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluice.clock import FakeClock
from sluice.config import SimSettings, parse_settings
from sluice.errors import InvalidRequestError, SluiceError
from sluice.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, parse_request
from sluice.sim import EngineModel, EngineRunner, Sequence, SimServer, text_ids
from sluice.sim._embeddings import embedding_response
from sluice.sim._sampler import Sampler
from sluice.sim._serving import MAX_SEQS_PER_REQUEST, Job, Serving
from sluice.sim._tokenizer import CACHED_TOKEN_CHARS, VOCAB_SIZE, _cached_token_id
from tests.conftest import LiveSim, serve_gateway, wait_until
from tests.protocol.test_hostile_input import (
    CHAT_PATH,
    COMPLETIONS_PATH,
    EMBEDDINGS_PATH,
    ENDPOINT_FIELDS,
    JSON_TEXT,
    MODELS,
    fuzzed_body,
)

MODEL = "m"
FAST = SimSettings(speed=1e9, max_model_len=256, output_len_min=1, output_len_max=8, num_kv_blocks=1024,
                   embedding_dim=16)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def server() -> AsyncIterator[SimServer]:
    srv = await SimServer.start(FAST, model_name=MODEL)
    yield srv
    await srv.stop()


async def post(http: aiohttp.ClientSession, url: str, body: dict[str, Any] | bytes) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with http.post(url, data=data, headers={"content-type": "application/json"}) as resp:
        return resp.status, orjson.loads(await resp.read())


async def still_serves(server: SimServer, http: aiohttp.ClientSession) -> None:
    async with http.get(server.url + "/health") as resp:
        assert resp.status == 200
    status, body = await post(http, server.url + COMPLETIONS_PATH, {"model": MODEL, "prompt": "go", "max_tokens": 2})
    assert status == 200 and body["usage"]["completion_tokens"] >= 1


# --- the engine model: a sequence of no token does not stop the loop --------------------------------------------


def test_a_sequence_with_an_empty_prompt_is_scheduled_without_dividing_by_zero() -> None:
    """The root of "an empty prompt kills the engine loop": the prefix-cache hit rate of a step that admitted only
    sequences of no token divided 0 by 0."""
    engine = EngineModel(SimSettings(prefix_caching=True))
    engine.submit([Sequence(seq_id=1, prompt_tokens=0, output_len=2, token_ids=(100, 101))])
    for _ in range(2):
        engine.commit(engine.schedule())
    assert not engine.has_work() and engine.generation_tokens_total == 2 and engine.last_cache_hit_rate == 0.0
    with pytest.raises(ValueError):
        Sequence(seq_id=2, prompt_tokens=3, output_len=0)


# --- over HTTP: each observed bug, refused with a 400 naming the field, and the engine serving on -----------------


async def test_an_empty_prompt_is_refused_and_the_engine_keeps_serving(
    server: SimServer, http: aiohttp.ClientSession
) -> None:
    for prompt in ["", "   ", ["", "go"]]:
        status, body = await post(http, server.url + COMPLETIONS_PATH, {"model": MODEL, "prompt": prompt})
        assert status == 400 and body["error"]["param"] == "prompt", body
        assert body["error"]["message"] == "The decoder prompt cannot be empty."
    await still_serves(server, http)


async def test_token_ids_outside_the_vocabulary_are_refused(server: SimServer, http: aiohttp.ClientSession) -> None:
    for prompt in [[VOCAB_SIZE], [[1, 2], [3, 2**31 - 1]]]:
        status, body = await post(http, server.url + COMPLETIONS_PATH, {"model": MODEL, "prompt": prompt})
        assert status == 400 and body["error"]["param"] == "prompt" and "out of vocabulary" in body["error"]["message"]
    raw = b'{"model": "m", "prompt": [%d, 5]}' % 2**70  # beyond 64 bits: the protocol refuses it first
    status, body = await post(http, server.url + COMPLETIONS_PATH, raw)
    assert status == 400 and body["error"]["param"] == "prompt.0", body
    status, body = await post(http, server.url + EMBEDDINGS_PATH, {"model": MODEL, "input": [[VOCAB_SIZE + 5]]})
    assert status == 400 and body["error"]["param"] == "input" and "out of vocabulary" in body["error"]["message"]
    status, body = await post(http, server.url + COMPLETIONS_PATH,
                              {"model": MODEL, "prompt": [0, VOCAB_SIZE - 1], "max_tokens": 2})
    assert status == 200 and body["usage"]["prompt_tokens"] == 2
    await still_serves(server, http)


async def test_embedding_dimensions_and_inputs_are_held_to_the_model(
    server: SimServer, http: aiohttp.ClientSession
) -> None:
    url = server.url + EMBEDDINGS_PATH
    for dimensions in [1_000_000_000, FAST.embedding_dim + 1]:
        status, body = await post(http, url, {"model": MODEL, "input": "x", "dimensions": dimensions})
        assert status == 400 and body["error"]["param"] == "dimensions", body
    status, body = await post(http, url, {"model": MODEL, "input": ["x", "y"], "dimensions": FAST.embedding_dim})
    assert status == 200 and [len(d["embedding"]) for d in body["data"]] == [FAST.embedding_dim] * 2
    status, body = await post(http, url, {"model": MODEL, "input": ["short", "word " * (FAST.max_model_len + 1)]})
    assert status == 400 and body["error"]["code"] == 400 and "maximum context length" in body["error"]["message"]
    await still_serves(server, http)


async def test_a_request_may_not_ask_for_more_sequences_than_the_bound(
    server: SimServer, http: aiohttp.ClientSession
) -> None:
    prompts = [[1]] * (MAX_SEQS_PER_REQUEST // 128 + 1)
    status, body = await post(http, server.url + COMPLETIONS_PATH, {"model": MODEL, "prompt": prompts, "n": 128})
    assert status == 400 and body["error"]["param"] == "n", body
    status, body = await post(http, server.url + COMPLETIONS_PATH,
                              {"model": MODEL, "prompt": prompts[:2], "n": 3, "max_tokens": 1})
    assert status == 200 and len(body["choices"]) == 6


async def test_a_request_may_not_plan_more_tokens_than_the_bound(http: aiohttp.ClientSession) -> None:
    """The simulator draws every token up front: 32 prompts x 128 choices x 8000 tokens was 33M tokens (~5 s of
    the event loop and ~0.5 GB) before the engine ran any. (A chat request fits: 128 choices of a whole context.)"""
    srv = await SimServer.start(SimSettings(speed=1e9), model_name=MODEL)
    try:
        url = srv.url + COMPLETIONS_PATH
        huge = {"model": MODEL, "prompt": [[1]] * 32, "n": 128, "max_tokens": 8000, "ignore_eos": True}
        status, body = await post(http, url, huge)
        assert status == 400 and body["error"]["param"] == "max_tokens", body
        # without ignore_eos a choice ends by output_len_max: the same request plans little, and runs
        status, body = await post(http, url, huge | {"prompt": [[1]] * 2, "n": 2, "ignore_eos": False})
        assert status == 200 and len(body["choices"]) == 4
    finally:
        await srv.stop()


async def test_http_errors_are_openai_shaped(server: SimServer, http: aiohttp.ClientSession) -> None:
    async with http.post(server.url + CHAT_PATH, data=b"x" * (17 * 1024 * 1024)) as resp:
        assert resp.status == 413 and (await resp.json())["error"]["type"] == "RequestEntityTooLargeError"
    async with http.get(server.url + "/v1/nothing-here") as resp:
        assert resp.status == 404 and set((await resp.json())["error"]) == {"message", "type", "param", "code"}


# --- a failed engine loop shows in /health, ends the requests in flight, and a gateway stops being ready ----------


def _break(engine: EngineModel) -> None:
    """Stands for a bug in the engine model (input can no longer reach one): the next step fails."""
    def schedule() -> Any:
        raise RuntimeError("simulated engine bug")
    engine.schedule = schedule  # type: ignore[method-assign]


async def test_a_failed_engine_loop_is_reported_by_health_and_ends_every_request(
    server: SimServer, http: aiohttp.ClientSession
) -> None:
    _break(server.engine)
    status, body = await post(http, server.url + CHAT_PATH,
                              {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5})
    assert status == 503 and "engine stopped" in body["error"]["message"], body
    async with http.get(server.url + "/health") as resp:
        assert resp.status == 503 and "simulated engine bug" in (await resp.json())["error"]["message"]
    status, body = await post(http, server.url + COMPLETIONS_PATH, {"model": MODEL, "prompt": "go"})
    assert status == 503 and "engine loop stopped" in body["error"]["message"]  # refused at once, not left hanging


async def test_a_stream_in_flight_is_cut_when_the_engine_loop_fails() -> None:
    slow = SimSettings(decode_base_s=0.02, max_model_len=4096)
    srv = await SimServer.start(slow, model_name=MODEL)
    try:
        async with aiohttp.ClientSession() as http:
            body = {"model": MODEL, "prompt": "go", "max_tokens": 2000, "ignore_eos": True, "stream": True}
            async with http.post(srv.url + COMPLETIONS_PATH, json=body) as resp:
                first = await resp.content.readline()
                assert first.startswith(b"data: ")
                _break(srv.engine)
                rest = await asyncio.wait_for(resp.content.read(), timeout=30)
            assert b"[DONE]" not in rest  # cut, as a dying server cuts it: the client knows it is incomplete
    finally:
        await srv.stop()


def test_a_gateway_stops_being_ready_when_its_engine_loop_fails() -> None:
    with LiveSim(SimSettings(speed=1e9), model_name="engine") as sim:
        engine = {"urls": [sim.url], "served_model": "engine"}
        config = {"auth": {"mode": "open"}, "models": [{"name": "m", "engine": engine}]}
        with serve_gateway(parse_settings(config)) as live, httpx.Client(base_url=live.url, timeout=30) as client:
            assert client.get("/ready").status_code == 200
            sim.loop.call_soon_threadsafe(_break, sim.engine)
            r = client.post(COMPLETIONS_PATH, json={"model": "m", "prompt": "go", "max_tokens": 3})
            assert r.status_code == 503 and set(r.json()["error"]) == {"message", "type", "param", "code"}, r.text
            assert httpx.get(sim.url + "/health").status_code == 503
            assert wait_until(lambda: client.get("/ready").status_code == 503), client.get("/ready").text


# --- the tokenizer's cache keeps no client's huge words ----------------------------------------------------------


def test_long_words_are_not_kept_in_the_token_cache() -> None:
    before = _cached_token_id.cache_info().currsize
    for i in range(50):
        text_ids(f"{i}" + "x" * 100_000)
    assert _cached_token_id.cache_info().currsize == before
    text_ids("y" * CACHED_TOKEN_CHARS + " unusualword")  # short enough: kept
    assert _cached_token_id.cache_info().currsize == before + 2


# --- fuzz: whatever the protocol admits, the simulator answers or refuses with a 4xx, and its engine runs it ------


def _serving(settings_: SimSettings) -> Serving:
    runner = EngineRunner(EngineModel(settings_), FakeClock())
    return Serving(settings_, model_name=MODEL, runner=runner, sampler=Sampler(settings_), clock=FakeClock())


def _run(engine: EngineModel, job: Job) -> None:
    """Put the job's sequences in the engine and step it until they are done (what the loop does, minus time)."""
    seqs = [Sequence(seq_id=i, prompt_tokens=n, output_len=len(o.words), token_ids=None if ids is None else
                     ids + o.token_ids)
            for i, (n, ids, o) in enumerate(zip(job.seq_prompt_tokens, job.seq_prompt_ids or [None] * len(job.outputs),
                                                job.outputs, strict=True))]
    engine.submit(seqs)
    for _ in range(10_000):
        if not engine.has_work():
            return
        engine.commit(engine.schedule())
    raise AssertionError("the engine did not finish the job")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(ENDPOINT_FIELDS), JSON_TEXT, st.sampled_from(["vllm", "sglang", "lmdeploy"]))
def test_fuzz_the_simulator_answers_or_refuses_with_a_4xx(
    endpoint_field: tuple[str, str], value: str, dialect: str
) -> None:
    path, field = endpoint_field
    settings_ = FAST.model_copy(update={"dialect": dialect, "num_kv_blocks": 64, "block_size": 4})
    refused: SluiceError | None = None
    try:
        request: Any = parse_request(MODELS[path], fuzzed_body(path, field, value))
        serving = _serving(settings_)
        if isinstance(request, EmbeddingRequest):
            embedding_response(request, created=0, default_dim=settings_.embedding_dim,
                               max_model_len=settings_.max_model_len)
            return
        job = serving.chat_job(request) if isinstance(request, ChatCompletionRequest) else (
            serving.completion_job(request))
    except SluiceError as exc:
        refused = exc
    if refused is not None:  # refused as the client's fault, never as the server's
        assert isinstance(refused, InvalidRequestError) or 400 <= refused.status < 500, refused
        return
    assert isinstance(request, ChatCompletionRequest | CompletionRequest)
    _run(EngineModel(settings_), job)
