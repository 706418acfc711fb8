"""The simulated GPU in dcgm-exporter's shape: utilisation follows the engine loop's duty cycle, the framebuffer
the KV blocks in use, and the preemption counter counts KV "swaps" (recompute preemptions); on a fake clock."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sluice.clock import FakeClock
from sluice.config import SimSettings
from sluice.dialects import DCGM
from sluice.sim import EngineModel, EngineRunner, Sequence, SimMetrics
from sluice.sim._gpu import GpuActivity

SETTINGS = SimSettings(max_model_len=64, block_size=4, num_kv_blocks=64, max_num_seqs=8, prefill_s_per_token=0.0,
                       decode_base_s=0.05, decode_per_seq_s=0.0, gpu_memory_mib=1000, gpu_weights_mib=100)


def gauges(metrics: SimMetrics) -> dict[str, tuple[dict[str, str], float]]:
    found = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            if sample.name.startswith("DCGM_FI_"):
                found[sample.name] = (sample.labels, sample.value)
    return found


def test_utilization_is_the_share_of_the_last_window_covered_by_steps() -> None:
    clock = FakeClock()
    activity = GpuActivity(clock, window_s=1.0)
    assert activity.utilization() == 0.0
    activity.busy(0.0, 0.25)
    clock.advance(0.5)
    assert activity.utilization() == pytest.approx(0.25)  # 0.25 s busy in the last second
    activity.busy(0.5, 0.5)
    clock.advance(0.25)  # a step in progress counts up to now
    assert activity.utilization() == pytest.approx(0.5)
    clock.advance(0.25)
    assert activity.utilization() == pytest.approx(0.75)
    clock.advance(1.0)  # everything is older than the window
    assert activity.utilization() == 0.0


async def test_gauges_are_dcgm_exporters_and_move_with_load() -> None:
    clock = FakeClock()
    engine = EngineModel(SETTINGS)
    activity = GpuActivity(clock)
    metrics = SimMetrics("vllm", "m", engine, activity)
    runner = EngineRunner(engine, clock, metrics, gpu=activity)
    runner.start()
    try:
        idle = gauges(metrics)
        assert set(idle) == set(DCGM.gauges())
        labels, util = idle[DCGM.gpu_util]
        assert set(labels) == {"gpu", "UUID", "device", "modelName", "Hostname"}
        assert labels["gpu"] == "0" and labels["device"] == "nvidia0" and labels["UUID"].startswith("GPU-")
        assert util == 0.0
        assert idle[DCGM.fb_used][1] == 100  # the weights only
        assert idle[DCGM.fb_used][1] + idle[DCGM.fb_free][1] == 1000
        seqs = [Sequence(seq_id=runner.new_seq_id(), prompt_tokens=20, output_len=40) for _ in range(4)]
        runner.submit(seqs, ["length"] * 4)
        await clock.run_for(1.0)  # steps back to back for a whole window
        busy = gauges(metrics)
        assert busy[DCGM.gpu_util][1] == 100.0
        # the blocks the running sequences hold, at (0.9 * 1000 - 100) / 64 MiB a block
        assert busy[DCGM.fb_used][1] == round(100 + engine.used_blocks * 800 / 64) > 100
        assert busy[DCGM.fb_used][1] + busy[DCGM.fb_free][1] == 1000
        await clock.run_for(5.0)  # they finish; a second later the window is idle again
        assert all(s.done for s in seqs)
        after = gauges(metrics)
        assert after[DCGM.gpu_util][1] == 0.0 and after[DCGM.fb_used][1] == 100
    finally:
        await runner.stop()


async def test_a_full_kv_cache_swaps_and_the_preemption_counter_shows_it() -> None:
    clock = FakeClock()
    tight = SETTINGS.model_copy(update={"num_kv_blocks": 16})  # 64 tokens: four sequences cannot all grow
    engine = EngineModel(tight)
    metrics = SimMetrics("vllm", "m", engine, GpuActivity(clock))
    runner = EngineRunner(engine, clock, metrics)
    runner.start()
    try:
        runner.submit([Sequence(seq_id=runner.new_seq_id(), prompt_tokens=8, output_len=40) for _ in range(4)],
                      ["length"] * 4)
        await clock.run_for(0.5)
        text = metrics.render().decode()
        preempted = [s.value for f in text_string_to_metric_families(text) for s in f.samples
                     if s.name == "vllm:num_preemptions_total"]
        assert preempted and preempted[0] >= 1
    finally:
        await runner.stop()


def test_without_an_activity_the_metrics_have_no_gpu() -> None:
    assert gauges(SimMetrics("vllm", "m", EngineModel(SETTINGS))) == {}
