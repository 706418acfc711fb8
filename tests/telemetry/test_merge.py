"""Several workers' expositions merged into one: the whole gateway's numbers, sample by sample."""

from __future__ import annotations

import math

from prometheus_client.parser import text_string_to_metric_families

from sluice.telemetry import GatewayMetrics, RequestRecord, merge_expositions


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, tuple(sorted(labels.items())))]


def record(status: int, duration_s: float, *, model: str = "m", tier: str = "free") -> RequestRecord:
    return RequestRecord(request_id="r", method="POST", route="/v1/chat/completions", started_s=0.0, status=status,
                         tier=tier, model=model, duration_s=duration_s)


def two_workers() -> tuple[GatewayMetrics, GatewayMetrics]:
    a, b = GatewayMetrics(), GatewayMetrics()
    for rec in (record(200, 0.3), record(200, 3.0), record(429, 0.001)):
        a.request_done(rec)
    for rec in (record(200, 0.3), record(503, 0.02, model="other")):
        b.request_done(rec)
    return a, b


def test_counters_and_histograms_are_summed_and_label_sets_of_one_worker_kept() -> None:
    a, b = two_workers()
    merged = merge_expositions([a.render().decode(), b.render().decode()])
    route = "/v1/chat/completions"
    assert value(merged, "sluice_requests_total", route=route, model="m", tier="free", status="200") == 3
    assert value(merged, "sluice_requests_total", route=route, model="m", tier="free", status="429") == 1
    assert value(merged, "sluice_requests_total", route=route, model="other", tier="free", status="503") == 1
    latency = "sluice_request_duration_seconds"
    assert value(merged, latency + "_count", route=route, model="m") == 4
    assert math.isclose(value(merged, latency + "_sum", route=route, model="m"), 3.601)
    assert value(merged, latency + "_bucket", route=route, model="m", le="0.5") == 3
    assert value(merged, latency + "_bucket", route=route, model="m", le="+Inf") == 4
    assert value(merged, "sluice_gateway_workers") == 2


def test_counts_are_summed_states_are_not() -> None:
    a, b = two_workers()
    a.admission_state("m", in_flight=3, limit=8, queued={0: 1}, saturation=0.4, protected=False)
    b.admission_state("m", in_flight=2, limit=6, queued={0: 2, 5: 1}, saturation=1.5, protected=True)
    a.quota_store_degraded(True)
    b.quota_store_degraded(False)
    merged = merge_expositions([a.render().decode(), b.render().decode()])
    assert value(merged, "sluice_admission_in_flight", model="m") == 5
    assert value(merged, "sluice_admission_limit", model="m") == 14
    assert value(merged, "sluice_admission_queued", model="m", priority="0") == 3
    assert value(merged, "sluice_admission_queued", model="m", priority="5") == 1
    assert value(merged, "sluice_engine_saturation", model="m") == 1.5  # the largest: not 1.9
    assert value(merged, "sluice_protection_engaged", model="m") == 1
    assert value(merged, "sluice_quota_store_degraded") == 1


def test_replica_up_is_the_smallest_and_created_the_earliest() -> None:
    worker_a = ("# HELP sluice_engine_replica_up up\n# TYPE sluice_engine_replica_up gauge\n"
                'sluice_engine_replica_up{model="m",replica="r1"} 1.0\n'
                "# HELP sluice_x_created c\n# TYPE sluice_x_created gauge\nsluice_x_created 200.0\n")
    worker_b = worker_a.replace("} 1.0", "} 0.0").replace("200.0", "100.0")
    merged = merge_expositions([worker_a, worker_b])
    assert value(merged, "sluice_engine_replica_up", model="m", replica="r1") == 0
    assert value(merged, "sluice_x_created") == 100


def test_infinite_gauges_survive_and_one_worker_is_its_own_exposition() -> None:
    a, _ = two_workers()
    a.admission_state("m", in_flight=0, limit=4, queued={}, saturation=math.inf, protected=False)
    alone = merge_expositions([a.render().decode()])
    assert value(alone, "sluice_engine_saturation", model="m") == math.inf
    assert value(alone, "sluice_gateway_workers") == 1
    own = samples(a.render().decode())
    assert {k: v for k, v in samples(alone).items() if k[0] != "sluice_gateway_workers"} == own


def test_every_family_appears_once_with_its_samples_together() -> None:
    a, b = two_workers()
    merged = merge_expositions([a.render().decode(), b.render().decode()])
    names = [family.name for family in text_string_to_metric_families(merged)]
    assert len(names) == len(set(names))
    type_lines = [line for line in merged.splitlines() if line.startswith("# TYPE ")]
    assert len(type_lines) == len(set(type_lines))
