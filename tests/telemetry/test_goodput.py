"""Goodput per tier: answers whose first token came within their tier's TTFT target, in the console's traffic
window and in ``sluice_goodput_requests_total``."""

from __future__ import annotations

from sluice.telemetry import GatewayMetrics, RequestRecord
from sluice.telemetry._traffic import RATE_WINDOW_S, TrafficWindow, met_ttft_slo


def answer(n: int, *, ttft_s: float | None, slo_s: float | None = 1.0, status: int = 200, stream: bool = True,
           reason: str | None = None, duration_s: float = 2.0, tier: str = "pro") -> RequestRecord:
    return RequestRecord(f"req-{n}", "POST", "/v1/chat/completions", started_s=100.0, status=status, reason=reason,
                         tenant="acme", tier=tier, model="m", stream=stream, ttft_s=ttft_s, ttft_slo_s=slo_s,
                         duration_s=duration_s, tokens_in=5, tokens_out=5)


def test_what_counts_as_goodput():
    assert met_ttft_slo(answer(1, ttft_s=0.5)) is True
    assert met_ttft_slo(answer(2, ttft_s=1.5)) is False  # late
    assert met_ttft_slo(answer(3, ttft_s=None, slo_s=None)) is None  # no target: not counted either way
    assert met_ttft_slo(answer(4, ttft_s=None, status=503, reason="slo_unattainable", duration_s=0.001)) is False
    assert met_ttft_slo(answer(5, ttft_s=0.2, reason="client_disconnected")) is False  # cut short
    # a whole answer's first token comes with the rest
    assert met_ttft_slo(answer(6, ttft_s=None, stream=False, duration_s=0.8)) is True
    assert met_ttft_slo(answer(7, ttft_s=None, stream=False, duration_s=1.2)) is False


def test_the_traffic_window_reports_goodput_per_tier_and_tenant():
    window = TrafficWindow()
    for n in range(6):
        window.record(answer(n, ttft_s=0.5 if n < 4 else 3.0))
    window.record(answer(9, ttft_s=0.1, tier="free", slo_s=None))
    groups = {g["tier"]: g for g in window.view(now_s=102.0)["groups"]}
    assert groups["pro"]["goodput_per_s"] == 4 / RATE_WINDOW_S
    assert groups["pro"]["requests_per_s"] == 6 / RATE_WINDOW_S
    assert groups["free"]["goodput_per_s"] == 0.0


def test_the_goodput_counter_splits_met_missed_and_refused():
    metrics = GatewayMetrics()
    metrics.request_done(answer(1, ttft_s=0.5))
    metrics.request_done(answer(2, ttft_s=4.0))
    metrics.request_done(answer(3, ttft_s=None, status=503, reason="slo_unattainable", duration_s=0.001))
    metrics.request_done(answer(4, ttft_s=0.5, slo_s=None, tier="free"))

    def value(tier: str, result: str) -> float | None:
        return metrics.registry.get_sample_value("sluice_goodput_requests_total",
                                                 {"model": "m", "tier": tier, "result": result})

    assert (value("pro", "met"), value("pro", "missed"), value("pro", "refused")) == (1.0, 1.0, 1.0)
    assert value("free", "met") is None
    assert metrics.refused_for_capacity == 1  # slo_unattainable is a capacity refusal (the autoscaler's signal)
