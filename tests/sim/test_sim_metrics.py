"""/metrics in each dialect's names, matching the engine's state at scrape time."""

from __future__ import annotations

import itertools

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sluice.config import SimSettings
from sluice.sim import EngineModel, Sequence, SimMetrics

_ids = itertools.count(1)

EXPECTED = {
    "vllm": {
        "running": "vllm:num_requests_running",
        "waiting": "vllm:num_requests_waiting",
        "kv": "vllm:kv_cache_usage_perc",
        "prompt": "vllm:prompt_tokens_total",
        "generation": "vllm:generation_tokens_total",
        "preemptions": "vllm:num_preemptions_total",
        "ttft": "vllm:time_to_first_token_seconds",
        "e2e": "vllm:e2e_request_latency_seconds",
    },
    "sglang": {
        "running": "sglang:num_running_reqs",
        "waiting": "sglang:num_queue_reqs",
        "kv": "sglang:token_usage",
        "prompt": "sglang:prompt_tokens_total",
        "generation": "sglang:generation_tokens_total",
        "preemptions": "sglang:num_retracted_requests_total",
        "ttft": "sglang:time_to_first_token_seconds",
        "e2e": "sglang:e2e_request_latency_seconds",
    },
    "lmdeploy": {
        "running": "lmdeploy:num_requests_running",
        "waiting": "lmdeploy:num_requests_waiting",
        "kv": "lmdeploy:gpu_cache_usage_perc",
        "prompt": "lmdeploy:prompt_tokens_total",
        "generation": "lmdeploy:generation_tokens_total",
        "ttft": "lmdeploy:time_to_first_token_seconds",
        "e2e": "lmdeploy:e2e_request_latency_seconds",
    },
}


def samples(text: str) -> dict[str, tuple[dict[str, str], float]]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.endswith(("_bucket", "_created")):
                out[sample.name] = (sample.labels, sample.value)
    return out


@pytest.mark.parametrize("dialect", ["vllm", "sglang", "lmdeploy"])
def test_metrics_match_engine_state(dialect: str) -> None:
    settings = SimSettings(dialect=dialect, max_num_seqs=2, block_size=4, num_kv_blocks=8, max_model_len=16)
    engine = EngineModel(settings)
    metrics = SimMetrics(dialect, "m1", engine)
    engine.submit([Sequence(seq_id=next(_ids), prompt_tokens=5, output_len=4) for _ in range(3)])
    engine.commit(engine.schedule())
    metrics.on_first_token(0.02)
    metrics.on_finished("stop", 0.5)

    got = samples(metrics.render().decode())
    names = EXPECTED[dialect]
    assert got[names["running"]][1] == 2
    assert got[names["waiting"]][1] == 1
    assert got[names["kv"]][1] == pytest.approx(4 / 8)  # two sequences of 6 tokens, 2 blocks each
    assert got[names["prompt"]][1] == 10
    assert got[names["generation"]][1] == 2
    assert got[names["ttft"] + "_count"][1] == 1
    assert got[names["e2e"] + "_sum"][1] == pytest.approx(0.5)
    assert all(labels.get("model_name") == "m1" for labels, _ in got.values())
    if "preemptions" in names:
        assert got[names["preemptions"]][1] == 0
    if dialect == "vllm":
        assert got["vllm:request_success_total"] == ({"model_name": "m1", "engine": "0", "finished_reason": "stop"}, 1)
    # every series of the dialect carries its own prefix only
    assert all(name.startswith(dialect + ":") for name in got)


def test_gauges_are_read_at_scrape_time() -> None:
    settings = SimSettings(block_size=4, num_kv_blocks=8, max_model_len=16)
    engine = EngineModel(settings)
    metrics = SimMetrics("vllm", "m1", engine)
    assert samples(metrics.render().decode())["vllm:num_requests_waiting"][1] == 0
    engine.submit([Sequence(seq_id=next(_ids), prompt_tokens=5, output_len=4)])
    assert samples(metrics.render().decode())["vllm:num_requests_waiting"][1] == 1


def test_two_instances_do_not_share_a_registry() -> None:
    settings = SimSettings()
    a = SimMetrics("vllm", "m", EngineModel(settings))
    b = SimMetrics("vllm", "m", EngineModel(settings))
    a.on_first_token(0.1)
    assert samples(b.render().decode())["vllm:time_to_first_token_seconds_count"][1] == 0
