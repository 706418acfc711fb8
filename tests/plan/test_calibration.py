"""Calibration: the engine's speed fitted to a bench run, or its times to a vLLM /metrics scrape."""

from __future__ import annotations

import orjson
import pytest

from sluice.config import SimSettings
from sluice.errors import ConfigError
from sluice.plan import from_bench, from_vllm_metrics, replay
from tests.plan.conftest import settings_with, trace_of


def bench_rows_from(outcomes):
    return [{"index": i, "tenant": "a", "start_s": o.at_s, "input_len": 256, "output_len": 64, "status": o.status,
             "ok": o.status == 200, "prompt_tokens": 256, "output_tokens": o.output_tokens, "ttft_s": o.ttft_s,
             "tpot_s": o.tpot_s, "e2e_s": o.e2e_s} for i, o in enumerate(outcomes)]


def test_a_bench_run_of_an_engine_at_another_speed_gives_that_speed_back(tmp_path):
    """An engine 1.6 times slower than the simulator's defaults, replayed; the run's results, calibrated against
    the defaults, give back its speed."""
    real = settings_with({"t": {}}, {"a": ("acme", "t")}, sim={"speed": 1 / 1.6})
    run = replay(real, trace_of(*[(i / 6, "a") for i in range(120)], prompt=256, output=64), replicas=1)
    (tmp_path / "results.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in bench_rows_from(run.outcomes)))
    base = SimSettings(max_num_seqs=8, num_kv_blocks=2048)
    fitted = from_bench(base, tmp_path)
    assert fitted.speed == pytest.approx(1 / 1.6, rel=0.02)
    assert (fitted.max_num_seqs, fitted.decode_base_s) == (8, base.decode_base_s)  # the shape is kept


def test_too_few_streamed_answers_cannot_calibrate(tmp_path):
    (tmp_path / "results.jsonl").write_bytes(orjson.dumps({"index": 0, "tenant": "a", "start_s": 0, "input_len": 8,
                                                           "output_len": 8, "ok": True, "tpot_s": 0.01}) + b"\n")
    with pytest.raises(ConfigError, match="at least 10"):
        from_bench(SimSettings(), tmp_path)


METRICS = """\
# HELP vllm:inter_token_latency_seconds Histogram of inter-token latency in seconds.
vllm:inter_token_latency_seconds_sum{engine="0",model_name="m"} 30.0
vllm:inter_token_latency_seconds_count{engine="0",model_name="m"} 1000.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="m"} 7.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 100.0
vllm:prompt_tokens_total{engine="0",model_name="m"} 50000.0
vllm:num_requests_running{engine="0",model_name="m"} 12.0
"""


def test_vllm_metrics_give_the_decode_step_and_the_prefill_rate():
    base = SimSettings()
    fitted = from_vllm_metrics(base, METRICS, batch=10)
    assert fitted.decode_base_s + fitted.decode_per_seq_s * 10 == pytest.approx(0.03)  # one step: the mean ITL
    assert fitted.decode_base_s / fitted.decode_per_seq_s == pytest.approx(base.decode_base_s / base.decode_per_seq_s)
    assert fitted.prefill_s_per_token == pytest.approx((0.07 - 0.03) / 500)  # TTFT less a step, mean prompt 500
    unbatched = from_vllm_metrics(base, METRICS)  # the running gauge says 12
    assert unbatched.decode_base_s + unbatched.decode_per_seq_s * 12 == pytest.approx(0.03)


def test_metrics_without_vllm_s_histograms_are_refused():
    with pytest.raises(ConfigError, match="vllm:inter_token_latency_seconds_sum"):
        from_vllm_metrics(SimSettings(), "sglang:num_running_reqs 3\n")
