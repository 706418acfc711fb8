"""Automatic prefix caching: an aborted sequence's computed blocks serve the request that resumes it.

The engine model alone (explicit schedule()/commit() steps), then over HTTP: a stream the client leaves, resumed as
a completion whose prompt is the ``prompt_token_ids`` and ``token_ids`` it had received, as a gateway resumes it.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sluice.config import SimSettings
from sluice.protocol import SSEParser, sse_data
from sluice.sim import EngineModel, SeqState, Sequence, SimMetrics, SimServer, Step

_ids = itertools.count(1)
PROMPT = tuple(range(1000, 1010))  # 10 tokens: two full blocks of 4 and a half
OUTPUT = tuple(range(100, 120))


def seq(prompt: tuple[int, ...], output: tuple[int, ...] = OUTPUT, priority: int = 0) -> Sequence:
    return Sequence(seq_id=next(_ids), prompt_tokens=len(prompt), output_len=len(output), priority=priority,
                    token_ids=prompt + output)


def settings(**kw: Any) -> SimSettings:
    base: dict[str, Any] = {"max_model_len": 16, "block_size": 4, "num_kv_blocks": 64}
    return SimSettings(**(base | kw))


def admit(engine: EngineModel, s: Sequence) -> Step:
    """Submit ``s`` and run the step that admits it (committed)."""
    engine.submit([s])
    step = engine.schedule()
    assert s in step.prefill
    engine.commit(step)
    return step


def run(engine: EngineModel, steps: int) -> None:
    for _ in range(steps):
        engine.commit(engine.schedule())


def unique(n: int) -> tuple[int, ...]:
    """``n`` token ids no other prompt of these tests has."""
    start = next(_ids) * 1000 + 50_000
    return tuple(range(start, start + n))


# -- the engine model ---------------------------------------------------------------------------------------


def test_continuation_of_an_aborted_sequence_prefills_only_the_uncached_tail() -> None:
    engine = EngineModel(settings())
    first = seq(PROMPT)
    step = admit(engine, first)
    assert step.prefill_tokens == 10 and step.cached_tokens == 0
    run(engine, 5)
    assert first.generated == 6 and first.computed_tokens == 15  # the 6th token's KV is not written yet
    engine.abort(first)  # the client left
    assert engine.used_blocks == 0 and engine.free_blocks == 64
    assert engine.cached_blocks == 3  # its full computed blocks: 12 of its 15 computed tokens
    # the gateway resumes it: prompt = prompt ids + the 6 ids it had streamed
    resumed = seq(PROMPT + OUTPUT[:6], (200, 201, 202))
    step = admit(engine, resumed)
    assert step.prefill_tokens == 16 - 12 and step.cached_tokens == 12
    assert resumed.blocks == engine.blocks_for(17) and engine.used_blocks == 5 and engine.cached_blocks == 0
    assert (engine.prefix_cache_queries_total, engine.prefix_cache_hits_total) == (10 + 16, 12)
    assert engine.last_cache_hit_rate == pytest.approx(12 / 16)


def test_a_fully_cached_prompt_still_computes_its_last_block() -> None:
    engine = EngineModel(settings())
    first = admit_and_abort(engine, PROMPT, steps=7)  # 16 computed: 4 full blocks cached
    assert first.computed_tokens == 16 and engine.cached_blocks == 4
    step = admit(engine, seq(PROMPT + OUTPUT[:2], (200,)))  # 12 tokens, all of them cached
    # vLLM's max_cache_hit_length = num_tokens - 1: the hit stops a block short, and that block is computed again
    assert step.cached_tokens == 8 and step.prefill_tokens == 4


def admit_and_abort(engine: EngineModel, prompt: tuple[int, ...], steps: int) -> Sequence:
    s = seq(prompt)
    admit(engine, s)
    run(engine, steps - 1)
    engine.abort(s)
    return s


def test_finished_sequences_leave_their_blocks_cached_too() -> None:
    engine = EngineModel(settings())
    done = seq(PROMPT, OUTPUT[:3])
    admit(engine, done)
    run(engine, 2)
    assert done.state is SeqState.FINISHED and engine.cached_blocks == 3  # 12 computed tokens
    follow_up = seq(PROMPT + OUTPUT[:3] + (7, 8, 9), (200,))  # a next turn that quotes the answer
    assert admit(engine, follow_up).cached_tokens == 12


def test_cached_blocks_are_evicted_oldest_first_and_a_later_continuation_misses() -> None:
    engine = EngineModel(settings(num_kv_blocks=8, max_num_seqs=4))
    a_prompt, b_prompt = unique(8), unique(8)
    a, b = seq(a_prompt, OUTPUT[:2]), seq(b_prompt, OUTPUT[:2])
    for s in (a, b):  # each finishes after 2 tokens: 9 computed, its 2 full blocks cached
        admit(engine, s)
        run(engine, 1)
        assert s.state is SeqState.FINISHED
    a_resumed, b_resumed = seq(a_prompt + OUTPUT[:1], (1,)), seq(b_prompt + OUTPUT[:1], (1,))
    assert engine.cached_blocks == 4 and engine.free_blocks == 8
    assert (engine.cached_prefix_blocks(a_resumed), engine.cached_prefix_blocks(b_resumed)) == (2, 2)
    # eviction order: a's last block, a's first, b's last, b's first (a sequence's tail goes before its head)
    big = seq(unique(18), OUTPUT[:5])  # 19 tokens with its first: 5 blocks, the 4 empty ones and 1 evicted
    admit(engine, big)
    assert (engine.cached_prefix_blocks(a_resumed), engine.cached_prefix_blocks(b_resumed)) == (1, 2)
    small = seq(unique(7), OUTPUT[:5])  # 2 blocks: a's first and b's last go
    admit(engine, small)
    assert (engine.cached_prefix_blocks(a_resumed), engine.cached_prefix_blocks(b_resumed)) == (0, 1)
    assert engine.cached_blocks == 1 and engine.free_blocks == 1 and engine.used_blocks == 7
    engine.abort(big)
    engine.abort(small)
    step = admit(engine, b_resumed)
    assert step.cached_tokens == 4 and step.prefill_tokens == 5
    step = admit(engine, a_resumed)
    assert step.cached_tokens == 0 and step.prefill_tokens == 9  # a missed: all of it again


def test_blocks_in_use_are_not_shared_but_accounted_once_each() -> None:
    engine = EngineModel(settings(num_kv_blocks=16))
    first = seq(PROMPT)
    admit(engine, first)
    run(engine, 3)
    twin = seq(PROMPT, OUTPUT[:2])
    # first's blocks are in use: the twin computes its own copy (vLLM would share them; the simulator does not)
    assert admit(engine, twin).cached_tokens == 0
    assert engine.used_blocks == first.blocks + twin.blocks == 4 + 3
    run(engine, 1)  # the twin finishes: its 2 full computed blocks are cached
    assert twin.state is SeqState.FINISHED and engine.cached_blocks == 2
    engine.abort(first)  # 13 computed: 3 blocks, 2 of them the same content as the twin's
    assert engine.cached_blocks == 3 and engine.free_blocks == 16  # the duplicates freed as empty blocks
    assert admit(engine, seq(PROMPT + OUTPUT[:4], (1,))).cached_tokens == 12


def test_sequences_without_token_ids_match_only_themselves() -> None:
    engine = EngineModel(settings())
    anonymous = Sequence(seq_id=next(_ids), prompt_tokens=10, output_len=5)
    admit(engine, anonymous)
    engine.abort(anonymous)
    assert engine.cached_blocks == 2
    other = Sequence(seq_id=next(_ids), prompt_tokens=10, output_len=5)
    assert admit(engine, other).cached_tokens == 0


@pytest.mark.parametrize("kw", [{"prefix_caching": False}, {"dialect": "lmdeploy"}],
                         ids=["turned-off", "lmdeploy-default"])
def test_without_prefix_caching_nothing_is_kept(kw: dict[str, Any]) -> None:
    engine = EngineModel(settings(**kw))
    admit_and_abort(engine, PROMPT, steps=6)
    assert engine.cached_blocks == 0 and engine.free_blocks == 64
    step = admit(engine, seq(PROMPT + OUTPUT[:6], (1,)))
    assert step.cached_tokens == 0 and step.prefill_tokens == 16
    assert (engine.prefix_cache_queries_total, engine.prefix_cache_hits_total) == (0, 0)  # no lookup, no count


@pytest.mark.parametrize("kw", [{}, {"dialect": "sglang"}, {"dialect": "lmdeploy", "prefix_caching": True}],
                         ids=["vllm-default", "sglang-default", "lmdeploy-turned-on"])
def test_prefix_caching_is_on_by_default_where_the_engine_has_it_on(kw: dict[str, Any]) -> None:
    engine = EngineModel(settings(**kw))
    admit_and_abort(engine, PROMPT, steps=6)
    assert admit(engine, seq(PROMPT + OUTPUT[:6], (1,))).cached_tokens == 12


def test_re_admissions_after_preemption_are_not_counted_as_queries() -> None:
    # as vLLM's PrefixCacheStats.record: a previously preempted request counts apart, and is not exported
    engine = EngineModel(settings(num_kv_blocks=6))
    a, b = seq(unique(6), OUTPUT[:10]), seq(unique(6), OUTPUT[:10])
    engine.submit([a, b])
    while a.state is not SeqState.FINISHED or b.state is not SeqState.FINISHED:
        engine.commit(engine.schedule())
    assert b.num_preemptions >= 1
    assert (engine.prefix_cache_queries_total, engine.prefix_cache_hits_total) == (12, 0)


@pytest.mark.parametrize(("dialect", "kept_blocks"), [("sglang", 2), ("vllm", 3)])
def test_a_preempted_sequence_keeps_what_its_engine_cached(dialect: str, kept_blocks: int) -> None:
    """vLLM caches each block as it fills; SGLang's radix tree holds a running request's prefill only."""
    engine = EngineModel(settings(dialect=dialect, scheduling_policy="priority", priority_preemption=True,
                                  max_num_seqs=1))
    low = seq(unique(8), OUTPUT)
    admit(engine, low)
    run(engine, 5)
    assert low.computed_tokens == 13  # 8 prompt + 5 decoded
    engine.submit([seq(unique(4), OUTPUT[:2], priority=-20)])
    assert engine.schedule().preempted == [low]
    assert engine.cached_prefix_blocks(low) == kept_blocks


# -- metrics ----------------------------------------------------------------------------------------------


def samples(metrics: SimMetrics) -> dict[str, float]:
    return {s.name: s.value for f in text_string_to_metric_families(metrics.render().decode()) for s in f.samples}


@pytest.mark.parametrize("dialect", ["vllm", "sglang", "lmdeploy"])
def test_prefix_cache_metrics_in_each_dialect(dialect: str) -> None:
    engine = EngineModel(settings(dialect=dialect, prefix_caching=True))
    metrics = SimMetrics(dialect, "m", engine)
    admit_and_abort(engine, PROMPT, steps=6)
    admit(engine, seq(PROMPT + OUTPUT[:6], (1,)))
    got = samples(metrics)
    if dialect == "vllm":  # vllm/v1/metrics/loggers.py: counters of tokens
        assert got["vllm:prefix_cache_queries_total"] == 10 + 16 and got["vllm:prefix_cache_hits_total"] == 12
    if dialect == "sglang":  # the last prefill batch's hit rate
        assert got["sglang:cache_hit_rate"] == pytest.approx(12 / 16)
    if dialect == "lmdeploy":  # no such metric in LMDeploy
        assert not any("cache_hit" in name or "prefix_cache" in name for name in got)


# -- over HTTP: a stream the client leaves, then resumed from its token ids --------------------------------


async def read_tokens(resp: aiohttp.ClientResponse, count: int) -> tuple[list[int], list[int]]:
    """Read a streamed completion until ``count`` tokens came: (its prompt's ids, the generated ids)."""
    parser, prompt, generated = SSEParser(), [], []
    while len(generated) < count:
        chunk = await resp.content.readany()
        assert chunk, "stream ended early"
        for data in map(sse_data, parser.feed(chunk)):
            if data is None or data == b"[DONE]":
                continue
            [choice] = orjson.loads(data)["choices"]
            prompt = choice["prompt_token_ids"] or prompt
            generated += choice["token_ids"]
    return prompt, generated[:count]


def counter(text: str, name: str) -> float:
    return next(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


@pytest.mark.parametrize("caching", [True, False], ids=["prefix-caching", "turned-off"])
async def test_resuming_an_aborted_stream_hits_the_blocks_it_computed(caching: bool) -> None:
    settings_ = SimSettings(decode_base_s=0.02, max_model_len=4096, block_size=4, prefix_caching=caching)
    body = {"model": "m", "prompt": "The quick brown fox jumps over the lazy dog.", "max_tokens": 1000,
            "ignore_eos": True, "stream": True, "return_token_ids": True}
    async with await SimServer.start(settings_, model_name="m") as srv, aiohttp.ClientSession() as http:
        resp = await http.post(srv.url + "/v1/completions", json=body)
        prompt, generated = await read_tokens(resp, 7)
        assert len(prompt) == 10
        resp.close()  # the client leaves: the sequence is aborted
        for _ in range(500):
            if srv.engine.num_running == 0:
                break
            await asyncio.sleep(0.01)
        assert srv.engine.num_running == 0
        resumed = prompt + generated  # 17 tokens, the first 16 of them computed by the aborted sequence
        async with http.post(srv.url + "/v1/completions", json={
            "model": "m", "prompt": resumed, "max_tokens": 2, "return_token_ids": True}) as r:
            assert r.status == 200
            assert orjson.loads(await r.read())["choices"][0]["prompt_token_ids"] == resumed
        async with http.get(srv.url + "/metrics") as r:
            text = await r.text()
    queries, hits = counter(text, "vllm:prefix_cache_queries_total"), counter(text, "vllm:prefix_cache_hits_total")
    if caching:
        assert (queries, hits) == (10 + 17, 16)  # only its 17th token was prefilled
    else:
        assert (queries, hits) == (0, 0)
