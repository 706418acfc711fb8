"""Mixed and unmixed steps: vLLM prefills and decodes in one step, SGLang (without --enable-mixed-chunk) does not."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from sluice.config import SimSettings
from sluice.sim import EngineModel, SeqState, Sequence

_ids = itertools.count(1)


def seq(prompt: int, output: int, priority: int = 0) -> Sequence:
    return Sequence(seq_id=next(_ids), prompt_tokens=prompt, output_len=output, priority=priority)


def settings(**kw: Any) -> SimSettings:
    base: dict[str, Any] = {"max_model_len": 16, "block_size": 4, "num_kv_blocks": 64, "prefill_s_per_token": 0.001,
                            "decode_base_s": 0.01, "decode_per_seq_s": 0.002}
    return SimSettings(**(base | kw))


def started(engine: EngineModel, *seqs: Sequence) -> None:
    """Admit ``seqs`` and let them produce their first token."""
    engine.submit(list(seqs))
    engine.commit(engine.schedule())
    assert set(seqs) <= set(engine.running)


def test_sglang_admitting_step_is_prefill_only_and_the_next_decodes_all() -> None:
    engine = EngineModel(settings(dialect="sglang"))
    a, b = seq(6, 10), seq(6, 10)
    started(engine, a)
    started(engine, b)  # a did not decode while b was prefilled
    assert (a.generated, b.generated) == (1, 1)
    c = seq(10, 10)
    engine.submit([c])
    step = engine.schedule()
    assert step.prefill == [c] and step.decode == [] and step.prefill_tokens == 10
    assert step.duration_s == pytest.approx(0.001 * 10)  # no decode part
    assert engine.commit(step) == [c]
    assert (a.generated, b.generated, c.generated) == (1, 1, 1)  # c's first token comes from its prefill
    step = engine.schedule()  # nothing to admit: everyone decodes, the newcomer too
    assert step.decode == [a, b, c] and step.prefill == [] and step.prefill_tokens == 0
    assert step.duration_s == pytest.approx(0.01 + 0.002 * 3)
    engine.commit(step)
    assert (a.generated, b.generated, c.generated) == (2, 2, 2)


def test_running_sequences_take_no_block_in_a_prefill_only_step() -> None:
    engine = EngineModel(settings(dialect="sglang"))
    a = seq(7, 10)
    started(engine, a)
    assert a.total_tokens == 8 and a.blocks == 2  # its next token needs a third block
    engine.submit([seq(2, 5)])  # its 3 tokens, then 4: one block
    engine.commit(engine.schedule())
    assert a.blocks == 2 and engine.used_blocks == 3
    engine.commit(engine.schedule())
    assert a.blocks == 3 and engine.used_blocks == 4


@pytest.mark.parametrize("kw", [{}, {"dialect": "lmdeploy"}, {"dialect": "sglang", "mixed_batches": True}],
                         ids=["vllm-default", "lmdeploy-default", "sglang-mixed-chunk"])
def test_mixed_step_decodes_the_running_while_it_prefills(kw: dict[str, Any]) -> None:
    engine = EngineModel(settings(**kw))
    a = seq(6, 10)
    started(engine, a)
    b = seq(10, 10)
    engine.submit([b])
    step = engine.schedule()
    assert step.decode == [a] and step.prefill == [b]
    assert step.duration_s == pytest.approx(0.001 * 10 + 0.01 + 0.002)
    assert engine.commit(step) == [b, a] and (a.generated, b.generated) == (2, 1)  # the newcomer's token first


def test_vllm_told_not_to_mix_runs_prefill_only_steps() -> None:
    engine = EngineModel(settings(mixed_batches=False))
    a = seq(6, 10)
    started(engine, a)
    engine.submit([seq(6, 10)])
    step = engine.schedule()
    assert step.decode == [] and len(step.prefill) == 1


def test_unmixed_step_decodes_when_nothing_can_be_admitted() -> None:
    # no free seat
    engine = EngineModel(settings(dialect="sglang", max_num_seqs=1))
    a = seq(6, 10)
    started(engine, a)
    engine.submit([seq(6, 10)])
    step = engine.schedule()
    assert step.decode == [a] and step.prefill == []
    # a seat, but the first in line does not fit the KV cache
    engine = EngineModel(settings(dialect="sglang", num_kv_blocks=6))
    a = seq(12, 10)
    started(engine, a)  # 13 tokens: 4 of the 6 blocks
    big = seq(12, 10)
    engine.submit([big])
    step = engine.schedule()
    assert step.decode == [a] and step.prefill == [] and list(engine.waiting) == [big]


def test_sglang_seat_preemption_still_makes_a_prefill_only_step() -> None:
    engine = EngineModel(settings(dialect="sglang", scheduling_policy="priority", max_num_seqs=2))
    old, new = seq(8, 20), seq(8, 20)
    started(engine, old, new)
    urgent = seq(8, 5, priority=-11)
    engine.submit([urgent])
    step = engine.schedule()
    assert step.preempted == [new] and step.prefill == [urgent] and step.decode == []
    engine.commit(step)
    step = engine.schedule()  # new waits for a seat: old and urgent decode
    assert step.decode == [old, urgent] and step.prefill == []


@pytest.mark.parametrize("kw", [
    {},
    {"dialect": "sglang"},
    {"dialect": "sglang", "mixed_batches": True},
    {"dialect": "sglang", "scheduling_policy": "priority"},
    {"dialect": "vllm", "scheduling_policy": "priority", "mixed_batches": False},
], ids=["vllm", "sglang", "sglang-mixed", "sglang-priority", "vllm-priority-unmixed"])
def test_long_run_finishes_every_sequence_with_all_its_tokens(kw: dict[str, Any]) -> None:
    """Arrivals over time into a small KV cache (KV preemption; seat preemption under sglang's priority policy)."""
    engine = EngineModel(settings(max_num_seqs=8, num_kv_blocks=24, max_model_len=64, **kw))
    rng = random.Random(7)
    seqs = [seq(rng.randint(4, 24), rng.randint(1, 30), priority=rng.choice([0, -20])) for _ in range(60)]
    pending = list(seqs)
    mixed = kw.get("mixed_batches", kw.get("dialect") != "sglang")
    delivered = {s.seq_id: 0 for s in seqs}
    saw_mixed = False
    for _ in range(20_000):
        if pending and rng.random() < 0.3:
            engine.submit([pending.pop(0)])
        if not pending and not engine.has_work():
            break
        step = engine.schedule()
        saw_mixed = saw_mixed or bool(step.prefill and step.decode)
        for s in engine.commit(step):
            delivered[s.seq_id] += 1
        assert 0 <= engine.used_blocks <= engine.settings.num_kv_blocks
    assert not pending and not engine.has_work()
    assert saw_mixed == mixed
    assert all(s.state is SeqState.FINISHED and s.generated == s.output_len for s in seqs)
    assert all(delivered[s.seq_id] == s.output_len for s in seqs)  # one token per step it was in, none twice
    assert engine.generation_tokens_total == sum(s.output_len for s in seqs)
    assert engine.prompt_tokens_total == sum(s.prompt_tokens for s in seqs)
    assert engine.free_blocks == engine.settings.num_kv_blocks  # every block free, some of them cached
    assert 0 <= engine.cached_blocks <= engine.free_blocks
    assert engine.num_preemptions > 0  # the scenario did exercise preemption

