"""SGLang's priority preemption for a seat, in the engine model and over HTTP.

``Sequence.priority`` is the engine model's own convention, lower runs first: -20 below is an SGLang request sent
with priority 20. Over HTTP the sglang dialect reads the request's ``priority`` higher first.
"""

from __future__ import annotations

import itertools
from typing import Any

import aiohttp
import orjson
import pytest

from sluice.config import SimSettings
from sluice.protocol import SSEParser, sse_data
from sluice.sim import EngineModel, SeqState, Sequence, SimServer, Step

_ids = itertools.count(1)


def seq(prompt: int, output: int, priority: int) -> Sequence:
    return Sequence(seq_id=next(_ids), prompt_tokens=prompt, output_len=output, priority=priority)


def sglang(**kw: Any) -> SimSettings:
    base: dict[str, Any] = {"dialect": "sglang", "scheduling_policy": "priority", "max_model_len": 16,
                            "block_size": 4, "num_kv_blocks": 64}
    return SimSettings(**(base | kw))


def full_batch(engine: EngineModel, *seqs: Sequence) -> None:
    """Admit ``seqs`` (filling the seats) and let them produce their first token."""
    engine.submit(list(seqs))
    engine.commit(engine.schedule())
    assert set(engine.running) == set(seqs)


def step_until_prefilled(engine: EngineModel, target: Sequence, max_steps: int = 1000) -> Step:
    """Run steps until one prefills ``target`` (re-admitted after a preemption); that step, not yet committed."""
    for _ in range(max_steps):
        step = engine.schedule()
        if target in step.prefill:
            return step
        engine.commit(step)
    raise AssertionError("never re-admitted")


def run_to_end(engine: EngineModel, max_steps: int = 1000) -> None:
    for _ in range(max_steps):
        if not engine.has_work():
            return
        engine.commit(engine.schedule())
    raise AssertionError("engine did not drain")


@pytest.mark.parametrize(("settings", "mixed"), [
    (sglang(max_num_seqs=2), False),
    (sglang(max_num_seqs=2, dialect="vllm", priority_preemption=True), True),
], ids=["sglang-default", "vllm-opted-in"])
def test_more_important_arrival_preempts_for_a_seat(settings: SimSettings, mixed: bool) -> None:
    engine = EngineModel(settings)
    old, new = seq(8, 20, 0), seq(8, 20, 0)
    full_batch(engine, old, new)
    urgent = seq(8, 5, -11)  # more important by 11, over the threshold of 10
    engine.submit([urgent])
    step = engine.schedule()
    # the newest of the least important gives way at once; the other keeps its seat (and decodes in this step only
    # where steps mix: SGLang's is prefill only)
    assert step.preempted == [new] and step.prefill == [urgent] and step.decode == ([old] if mixed else [])
    assert engine.running == [old, urgent] and list(engine.waiting) == [new]
    assert new.state is SeqState.WAITING and new.num_preemptions == 1 and engine.num_preemptions == 1
    assert engine.cached_prefix_blocks(new) == 2 and new.blocks == 0  # its 8 prompt tokens: two full blocks stay cached


@pytest.mark.parametrize("gap", [10, 1, 0])
def test_no_preemption_at_or_under_the_threshold(gap: int) -> None:
    engine = EngineModel(sglang(max_num_seqs=2))
    running = [seq(8, 20, 0), seq(8, 20, 0)]
    full_batch(engine, *running)
    urgent = seq(8, 5, -gap)
    engine.submit([urgent])
    step = engine.schedule()
    assert not step.preempted and not step.prefill and engine.num_preemptions == 0
    assert engine.running == running and list(engine.waiting) == [urgent]  # first in line for a free seat


@pytest.mark.parametrize("settings", [
    SimSettings(dialect="vllm", scheduling_policy="priority", max_num_seqs=1),
    SimSettings(dialect="lmdeploy", scheduling_policy="priority", max_num_seqs=1),
    SimSettings(dialect="sglang", scheduling_policy="priority", priority_preemption=False, max_num_seqs=1),
    SimSettings(dialect="sglang", max_num_seqs=1),  # fcfs: priorities are not read at all
], ids=["vllm", "lmdeploy", "sglang-disabled", "sglang-fcfs"])
def test_no_seat_preemption_unless_the_dialect_or_setting_says_so(settings: SimSettings) -> None:
    engine = EngineModel(settings)
    first = seq(10, 50, 100)
    full_batch(engine, first)
    engine.submit([seq(10, 50, -100)])
    for _ in range(3):
        engine.commit(engine.schedule())
    assert engine.running == [first] and engine.num_preemptions == 0


def test_preempted_sequence_resumes_from_its_cached_prefix_and_finishes() -> None:
    engine = EngineModel(sglang(max_num_seqs=1, prefill_s_per_token=1.0, decode_base_s=0.0, decode_per_seq_s=0.0))
    low = seq(8, 6, 0)
    engine.submit([low])
    step = engine.schedule()
    assert step.prefill_tokens == 8
    engine.commit(step)
    engine.commit(engine.schedule())  # two tokens generated: 10 in all, two of them not in the cache
    urgent = seq(4, 2, -20)
    engine.submit([urgent])
    step = engine.schedule()
    assert step.preempted == [low] and step.prefill == [urgent] and step.prefill_tokens == 4
    assert engine.cached_prefix_blocks(low) == 2 and engine.cached_blocks == 2
    assert engine.used_blocks == 2 and engine.kv_usage == pytest.approx(2 / 64)  # a cached prefix counts as free
    engine.commit(step)
    step = step_until_prefilled(engine, low)
    assert urgent.state is SeqState.FINISHED
    # re-admitted: its prompt's blocks come back from the cache, only the two decoded tokens are prefilled again
    assert step.prefill_tokens == 2 and step.duration_s == pytest.approx(2.0)
    assert engine.cached_prefix_blocks(low) == 0 and low.blocks == 3
    assert engine.cached_blocks == 1  # what the finished urgent one computed: its first full block
    run_to_end(engine)
    assert low.state is SeqState.FINISHED and (low.generated, urgent.generated) == (6, 2)
    assert engine.prompt_tokens_total == 8 + 4  # a re-prefill is not counted again
    assert engine.generation_tokens_total == 8
    assert engine.free_blocks == 64 and engine.used_blocks == 0


def test_cached_prefix_is_freed_when_its_blocks_are_needed() -> None:
    engine = EngineModel(sglang(max_num_seqs=1, num_kv_blocks=6))
    low = seq(8, 6, 0)
    full_batch(engine, low)  # 3 of the 6 blocks
    urgent = seq(21, 2, -20)  # needs all 6: the 3 free ones are short, low's and then its cached prefix are not
    engine.submit([urgent])
    step = engine.schedule()
    assert step.preempted == [low] and step.prefill == [urgent]
    assert engine.cached_prefix_blocks(low) == 0 and engine.cached_blocks == 0 and engine.free_blocks == 0
    engine.commit(step)
    step = step_until_prefilled(engine, low)
    assert step.prefill_tokens == low.total_tokens == 9  # its prefix was evicted: all of it again
    run_to_end(engine)
    assert low.generated == 6 and engine.free_blocks == 6


def test_victims_least_important_newest_first_as_many_as_the_blocks_need() -> None:
    engine = EngineModel(sglang(max_num_seqs=3))
    a, b, c = seq(4, 20, 5), seq(4, 20, 5), seq(4, 20, 0)
    full_batch(engine, a, b, c)
    engine.submit([seq(4, 5, -20)])
    assert engine.schedule().preempted == [b]

    # not enough room with one victim: the next least important goes too
    engine = EngineModel(sglang(max_num_seqs=2, num_kv_blocks=8))
    x, y = seq(8, 20, 5), seq(8, 20, 0)  # 3 blocks each, 2 free
    full_batch(engine, x, y)
    engine.submit([seq(20, 2, -20)])  # needs 6
    step = engine.schedule()
    assert step.preempted == [x, y] and engine.num_preemptions == 2


def test_no_victim_unless_all_it_needs_can_be_freed() -> None:
    engine = EngineModel(sglang(max_num_seqs=2, num_kv_blocks=8))
    x, y = seq(8, 20, 5), seq(8, 20, -15)  # y is within the threshold of the newcomer: not a candidate
    full_batch(engine, x, y)
    engine.submit([seq(20, 2, -20)])  # needs 6: the 2 free and x's 3 are not enough
    step = engine.schedule()
    assert not step.preempted and set(engine.running) == {x, y} and engine.num_preemptions == 0


def test_preempted_sequence_queues_behind_those_of_its_priority() -> None:
    engine = EngineModel(sglang(max_num_seqs=1))
    running = seq(8, 20, 0)
    full_batch(engine, running)
    waiting = seq(8, 20, 0)
    engine.submit([waiting])
    urgent = seq(8, 5, -20)
    engine.submit([urgent])
    step = engine.schedule()
    # SGLang stamps a new queue-entry time on it (vLLM's KV-full preemption keeps its place)
    assert step.preempted == [running] and list(engine.waiting) == [waiting, running]


async def _read_until_token(resp: aiohttp.ClientResponse, parser: SSEParser) -> list[bytes]:
    """SSE payloads read until one carries text (the rest of its read included)."""
    out: list[bytes] = []
    while not any(b'"text"' in data for data in out):
        chunk = await resp.content.readany()
        assert chunk, "stream ended early"
        out += [data for data in map(sse_data, parser.feed(chunk)) if data is not None]
    return out


async def test_sglang_dialect_reads_priority_higher_first_over_http() -> None:
    settings = sglang(max_num_seqs=1, max_model_len=4096, decode_base_s=0.02, num_kv_blocks=1024)
    body = {"model": "m", "prompt": "Once upon a time,", "ignore_eos": True}
    async with await SimServer.start(settings, model_name="m") as srv, aiohttp.ClientSession() as http:
        low = await http.post(srv.url + "/v1/completions", json=body | {
            "max_tokens": 60, "priority": 0, "stream": True, "stream_options": {"include_usage": True}})
        parser = SSEParser()
        events = await _read_until_token(low, parser)
        # priority 20 is the more important in SGLang's convention (in vLLM's, the less): it takes the only seat
        async with http.post(srv.url + "/v1/completions", json=body | {"max_tokens": 3, "priority": 20}) as resp:
            assert resp.status == 200
            assert orjson.loads(await resp.read())["usage"]["completion_tokens"] == 3
        assert srv.engine.num_preemptions == 1
        events += [d for d in map(sse_data, parser.feed(await low.read())) if d is not None]
        low.close()
    assert events[-1] == b"[DONE]"
    usage = orjson.loads(events[-2])["usage"]
    assert usage["completion_tokens"] == 60  # the preempted request resumed and finished with all its tokens
    assert sum(b'"text"' in d for d in events) == 60
