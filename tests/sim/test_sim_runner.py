"""The runner drives the engine model in (fake) time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from sluice.clock import FakeClock
from sluice.config import SimSettings
from sluice.sim import EngineModel, EngineRunner, Generation, SeqState, Sequence


class Recorder:
    def __init__(self) -> None:
        self.ttft_s: list[float] = []
        self.itl_s: list[float] = []
        self.finished: list[tuple[str, float]] = []

    def on_first_token(self, ttft_s: float) -> None:
        self.ttft_s.append(ttft_s)

    def on_next_token(self, itl_s: float) -> None:
        self.itl_s.append(itl_s)

    def on_finished(self, finish_reason: str, e2e_s: float) -> None:
        self.finished.append((finish_reason, e2e_s))


SETTINGS = SimSettings(
    max_model_len=64, block_size=4, num_kv_blocks=64, max_num_seqs=2,
    prefill_s_per_token=0.001, decode_base_s=0.01, decode_per_seq_s=0.0,
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def runner(clock: FakeClock) -> AsyncIterator[EngineRunner]:
    r = EngineRunner(EngineModel(SETTINGS), clock, Recorder())
    r.start()
    yield r
    await r.stop()


def submit(runner: EngineRunner, prompt: int, output: int) -> tuple[Sequence, Generation]:
    s = Sequence(seq_id=runner.new_seq_id(), prompt_tokens=prompt, output_len=output)
    return s, runner.submit([s], ["stop"])


async def test_a_mixed_step_hands_out_the_newcomers_first_token_before_the_decodes(
        clock: FakeClock, runner: EngineRunner) -> None:
    a, gen_a = submit(runner, 4, 10)
    await clock.run_for(0.005)  # a's prefill (4 ms), then its first decode step starts (10 ms)
    b, gen_b = submit(runner, 4, 10)
    await clock.run_for(0.010)  # a's decode ends at 14 ms; b's prefill and a's decode share the next step
    assert (a.generated, b.generated) == (2, 0)
    await gen_a.changed()  # a's decode, already delivered
    woken: list[str] = []

    async def watch(name: str, gen: Generation) -> None:
        await gen.changed()
        woken.append(name)

    watchers = [asyncio.create_task(watch("a", gen_a)), asyncio.create_task(watch("b", gen_b))]
    await clock.run_for(0.015)
    await asyncio.gather(*watchers)
    assert (a.generated, b.generated) == (3, 1)
    assert woken == ["b", "a"]  # the first token is written first: it is the one a client waits for


async def test_tokens_arrive_after_each_step_duration(clock: FakeClock, runner: EngineRunner) -> None:
    s, gen = submit(runner, 10, 3)
    await clock.run_for(0.009)  # the prefill step takes 10 * 0.001 s
    assert s.generated == 0 and s.state is SeqState.RUNNING
    await clock.run_for(0.002)
    assert s.generated == 1
    await clock.run_for(0.010)  # one decode step
    assert s.generated == 2
    await clock.run_for(0.010)
    assert s.generated == 3 and s.state is SeqState.FINISHED and gen.done
    rec = runner._observer
    assert isinstance(rec, Recorder)
    assert rec.ttft_s == [pytest.approx(0.010)]
    assert rec.itl_s == [pytest.approx(0.010)] * 2
    assert rec.finished == [("stop", pytest.approx(0.030))]


async def test_queueing_in_time(clock: FakeClock, runner: EngineRunner) -> None:
    seqs = [submit(runner, 4, 20)[0] for _ in range(5)]
    await clock.run_for(0.05)
    assert runner.engine.num_running == 2 and runner.engine.num_waiting == 3
    await clock.run_for(10.0)
    assert all(s.generated == 20 for s in seqs)
    assert not runner.engine.has_work()


async def test_generation_changed_wakes_the_waiter(clock: FakeClock, runner: EngineRunner) -> None:
    s, gen = submit(runner, 4, 2)
    counts = []

    async def consume() -> None:
        while not gen.done:
            await gen.changed()
            counts.append(s.generated)

    task = asyncio.create_task(consume())
    await clock.run_for(1.0)
    await task
    assert counts == [1, 2]


async def test_preempted_request_completes_with_all_its_tokens(clock: FakeClock) -> None:
    settings = SimSettings(max_model_len=16, block_size=4, num_kv_blocks=6, decode_base_s=0.01)
    runner = EngineRunner(EngineModel(settings), clock)
    runner.start()
    try:
        a, _ = submit(runner, 6, 10)
        b, gen_b = submit(runner, 6, 10)
        await clock.run_for(5.0)
        assert runner.engine.num_preemptions >= 1 and b.num_preemptions >= 1
        assert gen_b.done and (a.generated, b.generated) == (10, 10)
        assert runner.engine.free_blocks == 6
    finally:
        await runner.stop()


async def test_abort_frees_the_seat_and_blocks(clock: FakeClock, runner: EngineRunner) -> None:
    s, gen = submit(runner, 8, 50)
    await clock.run_for(0.1)
    assert runner.engine.num_running == 1 and runner.engine.used_blocks > 0
    runner.abort(gen)
    assert runner.engine.num_running == 0 and runner.engine.used_blocks == 0
    assert s.state is SeqState.ABORTED and gen.done
    await clock.run_for(1.0)  # the engine goes idle
    assert not runner.engine.has_work()


async def test_bursts_of_short_steps_deliver_every_token(clock: FakeClock) -> None:
    settings = SETTINGS.model_copy(update={"speed": 1e9})
    rec = Recorder()
    runner = EngineRunner(EngineModel(settings), clock, rec, min_sleep_s=0.001)
    runner.start()
    try:
        seqs = [submit(runner, 4, 30)[0] for _ in range(3)]
        await clock.run_for(0.01)
        assert [s.generated for s in seqs] == [30, 30, 30]
        assert len(rec.ttft_s) == 3 and len(rec.itl_s) == 3 * 29 and len(rec.finished) == 3
    finally:
        await runner.stop()
