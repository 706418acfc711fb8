"""The run summary on hand-made results: goodput beside the rejection rate, errors, fairness, timeline."""

from __future__ import annotations

import pytest

from sluice.bench import Fixed, RequestResult, Tenant, render, summarize
from sluice.bench._report import bucket_edges

A = Tenant("a", Fixed(10), Fixed(11))
B = Tenant("b", Fixed(10), Fixed(11), weight=2.0)


def ok(index: int, tenant: str, ttft: float, tpot: float, *, start: float = 0.0, tokens: int = 11) -> RequestResult:
    return RequestResult(index, tenant, start, 10, 11, status=200, ok=True, ttft_s=ttft, tpot_s=tpot,
                         e2e_s=ttft + tpot * (tokens - 1), output_tokens=tokens, prompt_tokens=10,
                         itl_s=[tpot] * (tokens - 1))


def refused(index: int, tenant: str, status: int, reason: str, start: float = 0.0) -> RequestResult:
    return RequestResult(index, tenant, start, 10, 11, status=status, reason=reason, e2e_s=0.001)


def results() -> list[RequestResult]:
    return [
        ok(0, "a", 0.1, 0.01),            # meets both SLOs
        ok(1, "a", 0.3, 0.01),            # TTFT over
        ok(2, "b", 0.1, 0.05),            # TPOT over
        refused(3, "b", 429, "quota_tokens"),
        refused(4, "b", 503, "overloaded", start=1.5),
    ]


def test_goodput_and_rejections_on_a_hand_computed_run() -> None:
    s = summarize(results(), duration_s=2.0, tenants=[A, B], slo_ttft_s=0.2, slo_tpot_s=0.02)
    assert s["requests"] == {"sent": 5, "succeeded": 3, "failed": 2, "rejected": 2, "success_fraction": 0.6,
                             "rejection_rate": 0.4}
    assert s["goodput"] == {"requests": 1, "requests_per_s": 0.5, "fraction_of_sent": 0.2, "rejection_rate": 0.4}
    assert s["throughput"]["requests_per_s"] == pytest.approx(1.5)
    assert s["throughput"]["output_tokens_per_s"] == pytest.approx(33 / 2)
    assert s["throughput"]["total_tokens_per_s"] == pytest.approx(63 / 2)
    assert s["errors"] == {"by_status": {"429": 1, "503": 1}, "by_reason": {"overloaded": 1, "quota_tokens": 1},
                           "most_common": [{"error": "429 quota_tokens", "count": 1},
                                           {"error": "503 overloaded", "count": 1}]}
    assert s["latency_ms"]["ttft"]["mean"] == pytest.approx(1000 * 0.5 / 3)
    assert s["latency_ms"]["itl"]["count"] == 30


def test_without_slos_every_success_is_good() -> None:
    s = summarize(results(), duration_s=2.0, tenants=[A, B])
    assert s["goodput"]["requests"] == 3


def test_per_tenant_figures_and_jain_index() -> None:
    s = summarize(results(), duration_s=2.0, tenants=[A, B], slo_ttft_s=0.2, slo_tpot_s=0.02)
    a, b = s["tenants"]["a"], s["tenants"]["b"]
    assert (a["requests"]["sent"], a["requests"]["succeeded"], a["goodput"]["requests"]) == (2, 2, 1)
    assert (b["requests"]["sent"], b["requests"]["rejected"], b["goodput"]["requests"]) == (3, 2, 0)
    # tokens/s per unit weight: a 22/2 / 1 = 11, b 11/2 / 2 = 2.75 -> (13.75)^2 / (2 * (121 + 7.5625))
    assert s["fairness"]["jain_output_throughput_per_weight"] == pytest.approx(13.75**2 / (2 * (121 + 7.5625)))
    # success fraction: a 1.0, b 1/3 -> (4/3)^2 / (2 * (1 + 1/9)) = 0.8
    assert s["fairness"]["jain_success_fraction"] == pytest.approx(0.8)


def test_timeline_spreads_tokens_and_counts_rejections_by_send_time() -> None:
    r = [ok(0, "a", 0.5, 0.1, tokens=11), refused(1, "b", 503, "overloaded", start=1.2)]  # tokens over 0.5..1.5 s
    tl = summarize(r, duration_s=2.0, tenants=[A, B])["timeline"]
    assert tl["bucket_s"] == 1.0 and tl["t_s"] == [0.0, 1.0]
    assert tl["tenants"]["a"]["output_tokens_per_s"] == pytest.approx([5.5, 5.5])
    assert tl["tenants"]["a"]["completed_per_s"] == [0.0, 1.0]
    assert tl["tenants"]["b"]["rejected_per_s"] == [0.0, 1.0]


def test_table_renders_every_section() -> None:
    text = render(summarize(results(), duration_s=2.0, tenants=[A, B], slo_ttft_s=0.2, slo_tpot_s=0.02))
    for needle in ("goodput", "0.50 req/s", "rejection rate 40.0%", "TTFT", "ITL", "errors by reason",
                   "quota_tokens", "tenant"):
        assert needle in text


def test_bucket_edges_end_with_the_run() -> None:
    assert bucket_edges(2.0) == [0.0, 1.0, 2.0]
    assert bucket_edges(2.7) == [0.0, 1.0, 2.0, 2.7]  # a partial last bucket of 0.7 s
    assert bucket_edges(2.3) == [0.0, 1.0, 2.3]  # under half a bucket: joins the one before
    assert bucket_edges(0.4) == [0.0, 0.4]
    assert bucket_edges(0.0) == [0.0, 1.0]
    long = bucket_edges(250.0)  # 3 s buckets (at most about 120), the last 1 s more
    assert long[:3] == [0.0, 3.0, 6.0] and long[-2:] == [246.0, 250.0] and len(long) == 84


def test_a_steady_rate_stays_steady_into_the_partial_last_bucket() -> None:
    # a run of 2.7 s: its last bucket lasts 0.7 s, and counting it as 1 s wide would show a dip that is not in the load
    stream = RequestResult(0, "a", 0.0, 10, 27, status=200, ok=True, ttft_s=0.0, e2e_s=2.7, output_tokens=27)
    tl = summarize([stream], duration_s=2.7, tenants=[A])["timeline"]
    assert tl["t_s"] == [0.0, 1.0, 2.0] and tl["end_s"] == 2.7 and tl["bucket_s"] == 1.0
    assert tl["tenants"]["a"]["output_tokens_per_s"] == pytest.approx([10.0, 10.0, 10.0])
    ends = [RequestResult(k, "a", 0.0, 10, 1, status=200, ok=True, ttft_s=0.01, e2e_s=0.05 + 0.1 * k)
            for k in range(27)]  # one completion every 0.1 s
    tl = summarize(ends, duration_s=2.7, tenants=[A])["timeline"]
    assert tl["tenants"]["a"]["completed_per_s"] == pytest.approx([10.0, 10.0, 10.0])
