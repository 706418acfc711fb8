"""GPU use as a saturation input: a busy GPU alone does not throttle, a busy GPU with KV pressure or swapping
does (the seed's scenario: GPU at 90%, paged KV swapping -> tighten); unknown GPU use is not saturation. End to
end on one injected clock: the simulator under load, read through its own /metrics text (engine gauges and
dcgm-exporter gauges), drives the gate into protection with the GPU named as the reason."""

from __future__ import annotations

import asyncio

import pytest

from sluice.admission import (
    STALE,
    FixedLimit,
    Gate,
    GateSettings,
    LoadReading,
    Outcome,
    ProtectionMode,
    SaturationDetector,
    ticket_for,
)
from sluice.clock import FakeClock
from sluice.config import SimSettings
from sluice.engines import LoadSample, parse_dcgm, parse_load
from sluice.engines._scraper import with_rate
from sluice.engines.dialects import VLLM
from sluice.errors import OverloadedError
from sluice.sim import EngineModel, EngineRunner, Sequence, SimMetrics
from sluice.sim._gpu import GpuActivity


def detector(reading: LoadReading | None, clock: FakeClock, **thresholds: float) -> SaturationDetector:
    return SaturationDetector(lambda: [reading], clock, **thresholds)  # type: ignore[arg-type]


def reading(kv: float, gpu: float | None, preemptions_per_s: float | None = None, waiting: float = 0.0,
            read_at_s: float = 0.0, gpu_read_at_s: float | None = None) -> LoadReading:
    return LoadReading(running=8, waiting=waiting, kv_usage=kv, read_at_s=read_at_s, gpu_util=gpu,
                       gpu_read_at_s=gpu_read_at_s, preemptions_per_s=preemptions_per_s)


@pytest.mark.parametrize(("kv", "gpu", "swaps", "saturated"), [
    (0.3, 0.97, None, False),   # a busy GPU alone: a well-used engine
    (0.3, 1.0, 0.0, False),
    (0.5, 0.9, 2.0, True),      # the seed's scenario: GPU at 90%, the paged KV cache swapping
    (0.75, 0.9, None, True),    # GPU busy and the KV cache past gpu_kv_threshold
    (0.75, 0.6, None, False),   # the same KV use with GPU to spare
    (0.75, None, None, False),  # ... or with GPU use unknown
    (0.5, 0.4, 5.0, False),     # swapping with an idle GPU: the KV input speaks for it when it fills
    (0.85, None, None, True),   # the KV input alone, as before
])
def test_the_gpu_counts_only_with_kv_pressure_or_swapping(kv: float, gpu: float | None, swaps: float | None,
                                                           saturated: bool) -> None:
    clock = FakeClock()
    d = detector(reading(kv, gpu, swaps), clock)
    assert (d.saturation() >= 1.0) is saturated


def test_the_formula_and_its_explanation() -> None:
    clock = FakeClock()
    d = detector(reading(0.5, 0.9, preemptions_per_s=2.0), clock, swap_threshold_per_s=1.0)
    inputs = d.inputs(reading(0.5, 0.9, preemptions_per_s=2.0))
    assert inputs is not None
    assert inputs.gpu == pytest.approx(min(0.9 / 0.9, max(0.5 / 0.7, 2.0 / 1.0)))
    assert inputs.kv == pytest.approx(0.5 / 0.8) and inputs.queue == 0.0 and inputs.cause == "gpu"
    assert d.saturation() == pytest.approx(1.0)
    assert d.explain() == "GPU 90% busy with KV cache 50% used, 2.0 preemptions/s: GPU input 1.00"
    queue = detector(reading(0.1, 0.95, waiting=10), clock)
    queue.saturation()
    assert queue.explain().startswith("10 requests waiting")


def test_a_stale_gpu_reading_is_unknown_not_saturated() -> None:
    clock = FakeClock(start=10.0)
    old_gpu = reading(0.75, 0.95, read_at_s=10.0, gpu_read_at_s=8.0)  # engine fresh, GPU read 2 s ago
    d = detector(old_gpu, clock, stale_after_s=1.0)
    assert d.saturation() == pytest.approx(0.75 / 0.8)
    assert d.last_inputs is not None and d.last_inputs.gpu is None
    fresh_gpu = reading(0.75, 0.95, read_at_s=10.0, gpu_read_at_s=9.5)
    assert detector(fresh_gpu, clock, stale_after_s=1.0).saturation() >= 1.0
    stale_engine = reading(0.1, 0.1, read_at_s=5.0)
    assert detector(stale_engine, clock, stale_after_s=1.0).saturation() == STALE  # as before: flying blind


def test_protection_keeps_the_reason_it_engaged_for() -> None:
    clock = FakeClock()
    d = detector(reading(0.5, 0.92, preemptions_per_s=3.0), clock)
    protection = ProtectionMode(clock, engage_after_s=0.5, explain=d.explain)
    assert not protection.observe(d.saturation())
    clock.advance(0.5)
    assert protection.observe(d.saturation())
    assert protection.reason.startswith("GPU 92% busy with KV cache 50% used, 3.0 preemptions/s")


# -- end to end: the simulator, its /metrics text, the gate ----------------------------------------------

PROMPT, OUTPUT, SEATS = 200, 100, 8
# 8 sequences of 200 -> 300 tokens in blocks of 16 hold 104 -> 152 of 150 blocks at most; staggered, KV use
# stays between about 0.55 and 0.9
SIM = SimSettings(max_num_seqs=SEATS, block_size=16, num_kv_blocks=150, max_model_len=512)


class SimulatedEngine:
    """The simulator's engine, runner and metrics on the test's clock; ``reading()`` parses its /metrics text as
    the scraper does (engine gauges, preemption rate, dcgm-exporter gauges)."""

    def __init__(self, clock: FakeClock, *, read_gpu: bool) -> None:
        self.clock = clock
        self.model = EngineModel(SIM)
        gpu = GpuActivity(clock)
        self.metrics = SimMetrics("vllm", "m", self.model, gpu)
        self.runner = EngineRunner(self.model, clock, self.metrics, gpu=gpu)
        self.runner.start()
        self.read_gpu = read_gpu
        self._last: LoadSample | None = None

    def reading(self) -> LoadReading:
        text, now = self.metrics.render().decode(), self.clock.now()
        sample = with_rate(parse_load(text, VLLM.metrics, now), self._last)
        self._last = sample
        gpu = parse_dcgm(text, None, now) if self.read_gpu else None
        return LoadReading(sample.running, sample.waiting, sample.kv_usage, now,
                           gpu_util=gpu.utilization if gpu else None, preemptions_per_s=sample.preemptions_per_s)

    async def serve(self) -> None:
        gen = self.runner.submit([Sequence(seq_id=self.runner.new_seq_id(), prompt_tokens=PROMPT,
                                           output_len=OUTPUT)], ["length"])
        while not gen.done:
            await gen.changed()


async def client(gate: Gate, engine: SimulatedEngine, clock: FakeClock, start_s: float, until_s: float) -> None:
    await clock.sleep(start_s)
    while clock.now() < until_s:
        permit = await gate.admit(ticket_for(0, "t", 1.0, PROMPT, OUTPUT, clock.now() + 60))
        await engine.serve()
        gate.release(permit, Outcome.SUCCESS, None, OUTPUT)


Run = tuple[Gate, ProtectionMode, SimulatedEngine, list[float], list[asyncio.Task[None]]]


async def run_under_load(read_gpu: bool) -> Run:
    clock = FakeClock()
    engine = SimulatedEngine(clock, read_gpu=read_gpu)
    # KV runs hot on purpose (vLLM's normal state): the KV input alone engages only at 95%
    sat = SaturationDetector(lambda: [engine.reading()], clock, kv_threshold=0.95, stale_after_s=1.0)
    protection = ProtectionMode(clock, engage_at=1.0, relax_at=0.7, engage_after_s=0.5, explain=sat.explain)
    gate = Gate("m", FixedLimit(SEATS), clock, GateSettings(tick_s=0.05, top_priority=10), saturation=sat,
                protection=protection)
    gate.start()
    cycle_s = 1.0  # about one request's time in the engine: the clients start spread over it
    clients = [asyncio.create_task(client(gate, engine, clock, i * cycle_s / SEATS, 4.0)) for i in range(SEATS)]
    kv_seen: list[float] = []
    for _ in range(60):  # 3 s of load
        await clock.run_for(0.05)
        kv_seen.append(engine.model.kv_usage)
    return gate, protection, engine, kv_seen, clients


async def _finish(run: Run) -> None:
    gate, _, engine, _, clients = run
    for task in clients:
        task.cancel()
    await asyncio.gather(*clients, return_exceptions=True)
    await gate.close()
    await engine.runner.stop()


async def test_under_load_a_busy_gpu_with_kv_pressure_engages_protection_and_tightens_the_window() -> None:
    run = await run_under_load(read_gpu=True)
    gate, protection, engine, kv_seen, _ = run
    try:
        gpu = parse_dcgm(engine.metrics.render().decode(), None, 0.0)
        assert gpu.utilization == 1.0  # the engine never idles under this load
        assert max(kv_seen[20:]) < 0.95  # the KV input alone stays below its threshold ...
        assert protection.engaged  # ... but GPU + KV pressure engage protection
        assert protection.reason.startswith("GPU 100% busy with KV cache")
        assert gate.effective_limit(0) < gate.effective_limit(10) == SEATS  # lower tiers' window tightened
        with pytest.raises(OverloadedError) as shed:
            await gate.admit(ticket_for(-1, "batch", 1.0, PROMPT, OUTPUT, 1e9))
        assert shed.value.reason == "shed"
    finally:
        await _finish(run)


async def test_the_same_load_without_the_gpu_reading_does_not_engage() -> None:
    run = await run_under_load(read_gpu=False)
    gate, protection, _, _, _ = run
    try:
        assert not protection.engaged and protection.reason == ""
        assert gate.effective_limit(0) == SEATS
    finally:
        await _finish(run)
