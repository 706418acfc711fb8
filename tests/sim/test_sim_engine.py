"""The engine model alone: explicit schedule()/commit() steps, no time, no asyncio."""

from __future__ import annotations

import itertools

import pytest

from sluice.config import SimSettings
from sluice.errors import EngineUnavailableError
from sluice.sim import EngineModel, SeqState, Sequence

_ids = itertools.count(1)


def seq(prompt: int, output: int) -> Sequence:
    return Sequence(seq_id=next(_ids), prompt_tokens=prompt, output_len=output)


def settings(**kw: object) -> SimSettings:
    base: dict[str, object] = {"max_model_len": 16, "block_size": 4, "num_kv_blocks": 64}
    return SimSettings(**(base | kw))


def run_to_end(engine: EngineModel, max_steps: int = 1000) -> int:
    steps = 0
    while engine.has_work():
        engine.commit(engine.schedule())
        steps += 1
        assert steps < max_steps, "engine did not drain"
    return steps


def test_queueing_once_max_num_seqs_is_reached() -> None:
    engine = EngineModel(settings(max_num_seqs=2))
    seqs = [seq(3, 5) for _ in range(5)]
    engine.submit(seqs)
    assert engine.num_waiting == 5
    step = engine.schedule()
    assert step.prefill == seqs[:2]
    assert engine.num_running == 2 and engine.num_waiting == 3
    engine.commit(step)
    engine.submit([seq(3, 5)])
    engine.commit(engine.schedule())
    assert engine.num_running == 2 and engine.num_waiting == 4
    run_to_end(engine)
    assert all(s.state is SeqState.FINISHED and s.generated == 5 for s in seqs)


def test_step_duration_formula() -> None:
    engine = EngineModel(
        settings(prefill_s_per_token=0.001, decode_base_s=0.01, decode_per_seq_s=0.002, speed=2.0)
    )
    a, b = seq(10, 5), seq(6, 5)
    engine.submit([a])
    step = engine.schedule()  # prefill only: no decode cost
    assert step.prefill_tokens == 10 and not step.decode
    assert step.duration_s == pytest.approx(0.010 / 2)
    engine.commit(step)
    engine.submit([b])
    step = engine.schedule()  # a decodes, b is prefilled
    assert step.decode == [a] and step.prefill == [b]
    assert step.duration_s == pytest.approx((0.001 * 6 + 0.01 + 0.002 * 1) / 2)
    engine.commit(step)
    step = engine.schedule()  # both decode
    assert step.duration_s == pytest.approx((0.01 + 0.002 * 2) / 2)


def test_prefill_produces_the_first_token_and_blocks_grow() -> None:
    engine = EngineModel(settings())
    s = seq(5, 8)
    engine.submit([s])
    engine.commit(engine.schedule())
    assert s.generated == 1 and s.blocks == 2  # 6 tokens in blocks of 4
    for _ in range(2):
        engine.commit(engine.schedule())
    assert s.total_tokens == 8 and s.blocks == 2
    engine.commit(engine.schedule())
    assert s.total_tokens == 9 and s.blocks == 3
    assert engine.used_blocks == 3 and engine.kv_usage == pytest.approx(3 / 64)
    run_to_end(engine)
    assert s.generated == 8 and engine.used_blocks == 0


def test_preemption_when_the_kv_cache_fills() -> None:
    engine = EngineModel(settings(num_kv_blocks=6))  # 24 token slots
    a, b, c = seq(6, 10), seq(6, 10), seq(2, 3)
    engine.submit([a, b])
    while engine.num_preemptions == 0:
        engine.commit(engine.schedule())
        assert engine.has_work()
    # the most recently admitted one was preempted, keeping its tokens, and waits at the front
    assert b.state is SeqState.WAITING and b.blocks == 0 and b.generated > 0
    assert a.state is SeqState.RUNNING
    assert list(engine.waiting) == [b]
    engine.submit([c])
    assert list(engine.waiting) == [b, c]
    generated_before = b.generated
    run_to_end(engine)
    assert [s.state for s in (a, b, c)] == [SeqState.FINISHED] * 3
    assert (a.generated, b.generated, c.generated) == (10, 10, 3)
    assert b.num_preemptions >= 1 and generated_before < 10
    assert engine.free_blocks == 6
    assert engine.prompt_tokens_total == 6 + 6 + 2  # a re-prefill is not counted again
    assert engine.generation_tokens_total == 23


@pytest.mark.parametrize(("caching", "still_cached"), [(False, 0), (True, 8)], ids=["no-prefix-caching", "vllm"])
def test_preempted_sequence_reprefills_prompt_and_generated(caching: bool, still_cached: int) -> None:
    engine = EngineModel(settings(num_kv_blocks=6, prefill_s_per_token=1.0, decode_base_s=0.0, prefix_caching=caching))
    a, b = seq(6, 10), seq(6, 10)
    engine.submit([a, b])
    while engine.num_preemptions == 0:
        engine.commit(engine.schedule())
    kept = b.total_tokens
    assert kept == 12 and b.blocks == 0 and engine.cached_blocks == (2 if caching else 0)  # 11 computed: 2 blocks
    while True:
        step = engine.schedule()
        if b in step.prefill:
            break
        engine.commit(step)
    # with vLLM's prefix caching its two full computed blocks were still cached (a never needed their room)
    assert step.prefill_tokens == kept - still_cached and step.cached_tokens == still_cached


def test_abort_frees_blocks_wherever_the_sequence_is() -> None:
    engine = EngineModel(settings(max_num_seqs=1))
    running, waiting = seq(7, 5), seq(3, 5)
    engine.submit([running, waiting])
    engine.commit(engine.schedule())
    assert engine.used_blocks == 2
    engine.abort(running)
    assert running.state is SeqState.ABORTED and engine.used_blocks == 0 and engine.num_running == 0
    engine.abort(waiting)
    assert engine.num_waiting == 0 and not engine.has_work()
    engine.abort(waiting)  # a second abort is a no-op


def test_abort_during_a_step_drops_its_token() -> None:
    engine = EngineModel(settings())
    s = seq(3, 5)
    engine.submit([s])
    step = engine.schedule()
    engine.abort(s)
    assert engine.commit(step) == [] and s.generated == 0 and engine.free_blocks == 64


def test_max_waiting_refuses_with_503() -> None:
    engine = EngineModel(settings(max_num_seqs=1, max_waiting=1))
    engine.submit([seq(3, 5)])  # takes the seat at the next step
    engine.submit([seq(3, 5)])  # waits
    with pytest.raises(EngineUnavailableError) as info:
        engine.submit([seq(3, 5)])
    assert info.value.status == 503
    assert engine.num_waiting == 2
    with pytest.raises(EngineUnavailableError):
        engine.submit([seq(3, 5), seq(3, 5)])  # all or nothing
    assert engine.num_waiting == 2


def test_priority_policy_orders_the_queue_but_never_preempts_for_a_seat():
    from sluice.config import SimSettings
    from sluice.sim import EngineModel, Sequence

    engine = EngineModel(SimSettings(max_num_seqs=2, scheduling_policy="priority"))
    low_old, low_new = Sequence(1, 10, 50, priority=5), Sequence(2, 10, 50, priority=5)
    engine.submit([low_old, low_new])
    engine.commit(engine.schedule())
    assert engine.running == [low_old, low_new]
    later = Sequence(3, 10, 50, priority=5)
    urgent = Sequence(4, 10, 50, priority=-1)  # vLLM's convention: lower runs first
    engine.submit([later])
    engine.submit([urgent])
    engine.commit(engine.schedule())
    # as vLLM's v1 scheduler: the seats stay taken; the urgent one is first in line for the next free seat
    assert engine.running == [low_old, low_new] and engine.num_preemptions == 0
    assert list(engine.waiting) == [urgent, later]


def test_priority_policy_preempts_the_least_important_when_the_kv_cache_fills():
    from sluice.config import SimSettings
    from sluice.sim import EngineModel, Sequence

    # 4 blocks of 4 tokens: three sequences of 4-token prompts fill 3 blocks, the 4th block goes to the first
    # that needs it, and the next decode that needs a block evicts the least important, not the newest
    engine = EngineModel(SimSettings(max_num_seqs=4, num_kv_blocks=4, block_size=4, max_model_len=16,
                                     scheduling_policy="priority"))
    important_new = Sequence(3, 3, 50, priority=0)
    low = Sequence(1, 3, 50, priority=9)
    mid = Sequence(2, 3, 50, priority=1)
    engine.submit([low, mid, important_new])
    while engine.num_preemptions == 0:
        engine.commit(engine.schedule())
    assert low.state.name == "WAITING" and low.num_preemptions == 1
    assert mid in engine.running and important_new in engine.running


def test_fcfs_policy_never_preempts_for_priority():
    from sluice.config import SimSettings
    from sluice.sim import EngineModel, Sequence

    engine = EngineModel(SimSettings(max_num_seqs=1))
    first = Sequence(1, 10, 50, priority=5)
    engine.submit([first])
    engine.commit(engine.schedule())
    engine.submit([Sequence(2, 10, 50, priority=-100)])
    engine.commit(engine.schedule())
    assert engine.running == [first] and engine.num_preemptions == 0
