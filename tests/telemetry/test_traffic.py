"""The console's traffic window: per-second totals over the span, per tier and tenant rates, the last refusals."""

from __future__ import annotations

from sluice.telemetry import RequestRecord
from sluice.telemetry._traffic import RATE_WINDOW_S, TrafficWindow


def record(n: int, at_s: float, *, status: int = 200, reason: str | None = None, tier: str = "free",
           tenant: str = "acme", tokens: int = 10) -> RequestRecord:
    return RequestRecord(f"req-{n}", "POST", "/v1/chat/completions", started_s=at_s - 0.5, status=status,
                         reason=reason, key_id="k", tenant=tenant, tier=tier, model="m", tokens_in=tokens,
                         tokens_out=0, duration_s=0.5)


def test_each_second_counts_its_requests_tokens_and_refusals():
    window = TrafficWindow(span_s=5)
    window.record(record(1, 100.2))
    window.record(record(2, 100.7, tokens=5))
    window.record(record(3, 102.1, status=429, reason="quota_requests", tokens=0))
    window.record(record(4, 102.3, status=503, reason="queue_timeout", tokens=0))
    series = window.view(now_s=103.5)["series"]
    assert [p["ago_s"] for p in series] == [4, 3, 2, 1, 0]
    assert [p["requests"] for p in series] == [0, 2, 0, 2, 0]
    assert [p["tokens"] for p in series] == [0, 15, 0, 0, 0]
    assert [p["refused_429"] for p in series] == [0, 0, 0, 1, 0]
    assert [p["refused_503"] for p in series] == [0, 0, 0, 1, 0]


def test_seconds_older_than_the_span_are_forgotten():
    window = TrafficWindow(span_s=5)
    window.record(record(1, 100.0))
    window.record(record(2, 110.0))
    assert sum(p["requests"] for p in window.view(now_s=110.0)["series"]) == 1
    assert len(window._seconds) == 1  # the old second is gone, not only hidden


def test_groups_have_rates_over_the_last_seconds_and_refusals_by_reason():
    window = TrafficWindow()
    for n in range(20):
        window.record(record(n, 200.0 + n / 4, tier="pro", tenant="globex"))
    window.record(record(99, 204.0, status=429, reason="quota_tokens", tokens=0))
    groups = {(g["tier"], g["tenant"]): g for g in window.view(now_s=205.0)["groups"]}
    assert groups[("pro", "globex")]["requests_per_s"] == 20 / RATE_WINDOW_S
    assert groups[("pro", "globex")]["tokens_per_s"] == 200 / RATE_WINDOW_S
    assert groups[("free", "acme")]["refused"] == {"429 quota_tokens": 1}


def test_the_last_refusals_newest_first_and_bounded():
    window = TrafficWindow(max_refusals=3)
    for n in range(5):
        window.record(record(n, 300.0 + n, status=429, reason="quota_requests"))
    window.record(record(9, 306.0))
    refusals = window.view(now_s=310.0)["refusals"]
    assert [r["request_id"] for r in refusals] == ["req-4", "req-3", "req-2"]
    assert refusals[0]["ago_s"] == 6.0 and refusals[0]["reason"] == "quota_requests"


def test_groups_past_the_bound_count_as_other():
    window = TrafficWindow(max_groups=2)
    for n, tenant in enumerate(["a", "b", "c", "d"]):
        window.record(record(n, 400.0, tenant=tenant))
    tenants = sorted(g["tenant"] for g in window.view(now_s=400.5)["groups"])
    assert tenants == ["a", "b", "other"]
