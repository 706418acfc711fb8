"""One run's figures: TTFT, goodput, fairness, the gateway's split of outcomes, the sampled series."""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.overload.metrics import Sampler
from bench.overload.settings import EQUAL_TENANTS, TENANTS, TIERS
from sluice.bench import (
    RequestResult,
    Tenant,
    jain_index,
    meets_slo,
    percentile,
    summarize,
)

# ---------------------------------------------------------------------------------------------- analysis


def ttft_sample(r: RequestResult) -> tuple[float, bool] | None:
    """A request the system took (not refused): its TTFT, or, if it gave up before its first token, the time it
    waited, flagged as censored (the real TTFT is longer). Refusals (429/503) have none."""
    if r.rejected:
        return None
    if r.ttft_s is not None:
        return r.ttft_s, False
    if r.e2e_s is not None and r.reason in ("timeout", "connection_error", "incomplete_stream"):
        return r.e2e_s, True
    return None


def figures(results: Sequence[RequestResult], window_s: float, slo_ttft_s: float, slo_tpot_s: float
            ) -> dict[str, Any]:
    sent = len(results)
    samples = [s for r in results if (s := ttft_sample(r)) is not None]
    ttfts = [v for v, _ in samples]
    censored = sum(c for _, c in samples)
    ok = [r for r in results if r.ok]
    good = [r for r in ok if meets_slo(r.ttft_s, r.tpot_s, slo_ttft_s=slo_ttft_s, slo_tpot_s=slo_tpot_s)]
    rejected = [r for r in results if r.rejected]
    failed = [r for r in results if not r.ok and not r.rejected]
    tpots = [r.tpot_s for r in ok if r.tpot_s is not None]

    def pct(values: list[float], p: float) -> float | None:
        return 1e3 * percentile(values, p) if values else None

    return {
        "sent": sent,
        "answered": len(ok),
        "ttft_p50_ms": pct(ttfts, 50),
        "ttft_p99_ms": pct(ttfts, 99),
        "ttft_samples": len(ttfts),
        "ttft_censored": censored,  # gave up before a first token: counted at the time they waited
        "tpot_p50_ms": pct(tpots, 50),
        "tpot_p99_ms": pct(tpots, 99),
        "goodput": len(good),
        "goodput_per_s": len(good) / window_s,
        "goodput_share": len(good) / sent if sent else 0.0,
        "rejected": len(rejected),
        "rejection_rate": len(rejected) / sent if sent else 0.0,
        "rejections_by_reason": dict(sorted(Counter(r.reason or "?" for r in rejected).items())),
        "failed": len(failed),
        "failures_by_reason": dict(sorted(Counter(r.reason or "?" for r in failed).items())),
        "output_tokens_per_s": sum(r.output_tokens for r in ok) / window_s,
    }


def measured(results: Sequence[RequestResult], warmup_s: float, duration_s: float) -> list[RequestResult]:
    """The requests sent in the measured window, their times counted from its start (as a run of its own)."""
    return [dataclasses.replace(r, start_s=r.start_s - warmup_s) for r in results
            if warmup_s <= r.start_s < duration_s]


def analyse(results: list[RequestResult], sampler: Sampler, tenants: tuple[Tenant, ...], *, warmup_s: float,
            duration_s: float, slo_ttft_s: float, slo_tpot_s: float, max_tokens_per_s: float) -> dict[str, Any]:
    window = measured(results, warmup_s, duration_s)
    window_s = duration_s - warmup_s
    tiers = {tier: figures([r for r in window if TENANTS[r.tenant][0] == tier], window_s, slo_ttft_s, slo_tpot_s)
             for tier in TIERS if any(TENANTS[t.name][0] == tier for t in tenants)}
    per_tenant = {t.name: figures([r for r in window if r.tenant == t.name], window_s, slo_ttft_s, slo_tpot_s)
                  for t in tenants}
    engine_tps = sampler.engine_tokens_per_s()
    out: dict[str, Any] = {
        "window_s": window_s,
        "all": figures(window, window_s, slo_ttft_s, slo_tpot_s),
        "tiers": tiers,
        "tenants": per_tenant,
        "engine_tokens_per_s": engine_tps,
        "engine_share_of_max": engine_tps / max_tokens_per_s,
        "engine_preemptions": sampler.edge_preemptions["end"] - sampler.edge_preemptions["begin"],
        # the library's own summary of the same window (per tenant, its fairness over all four tenants by weight)
        "sluice_bench_summary": _compact(summarize(window, duration_s=window_s, tenants=tenants,
                                                   slo_ttft_s=slo_ttft_s, slo_tpot_s=slo_tpot_s)),
    }
    if all(n in per_tenant for n in EQUAL_TENANTS):
        out["jain_goodput"] = jain_index(per_tenant[n]["goodput_per_s"] for n in EQUAL_TENANTS)
        out["jain_output_tokens"] = jain_index(per_tenant[n]["output_tokens_per_s"] for n in EQUAL_TENANTS)
    return out


def _compact(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k != "timeline"}


def gateway_split(access_log: Path, offset: int, results: Sequence[RequestResult], warmup_s: float,
                  duration_s: float) -> dict[str, Any]:
    """Per tier, from the gateway's access log (the lines this run wrote): how long the requests of the window
    waited in the admission queue, and how long the engine then took to the first token (gateway TTFT - wait)."""
    by_index = {r.index: r for r in results if warmup_s <= r.start_s < duration_s}
    waits: dict[str, list[float]] = {t: [] for t in TIERS}
    engine: dict[str, list[float]] = {t: [] for t in TIERS}
    with open(access_log, "rb") as f:
        f.seek(offset)
        for line in f:
            if not line.startswith(b'{"request_id":"bench-'):
                continue
            doc = json.loads(line)
            r = by_index.get(int(doc["request_id"].removeprefix("bench-")))
            if r is None or doc.get("status") != 200 or doc.get("queue_wait_s") is None:
                continue
            tier = TENANTS[r.tenant][0]
            waits[tier].append(doc["queue_wait_s"])
            if doc.get("ttft_s") is not None:
                engine[tier].append(doc["ttft_s"] - doc["queue_wait_s"])

    def pcts(xs: list[float]) -> dict[str, float | None]:
        return {f"p{q}_ms": (1e3 * percentile(xs, q) if xs else None) for q in (50, 99)}

    return {t: {"admitted": len(waits[t]), "queue_wait": pcts(waits[t]), "engine_ttft": pcts(engine[t])}
            for t in TIERS}


def series_summary(series: list[dict[str, float]], warmup_s: float, duration_s: float) -> dict[str, Any]:
    """Means over the measured window of the sampled gauges; the share of samples with protection engaged and
    with the engine's metrics stale (saturation inf)."""
    rows = [r for r in series if warmup_s <= r["t_s"] < duration_s and "error" not in r]

    def mean(key: str) -> float | None:
        xs = [r[key] for r in rows if key in r and not math.isnan(r[key]) and not math.isinf(r[key])]
        return sum(xs) / len(xs) if xs else None

    out: dict[str, Any] = {"samples": len(rows)}
    for key, name in (("sluice_admission_limit", "window"), ("sluice_admission_in_flight", "in_flight"),
                      ("sluice_admission_queued", "queued"), ("vllm:num_requests_running", "engine_running"),
                      ("vllm:num_requests_waiting", "engine_waiting")):
        out[f"mean_{name}"] = mean(key)
    if rows and "sluice_admission_limit" in rows[0]:
        out["max_window"] = max(r.get("sluice_admission_limit", 0) for r in rows)
        out["protection_share"] = sum(r.get("sluice_protection_engaged", 0) == 1 for r in rows) / len(rows)
        out["stale_share"] = sum(math.isinf(r.get("sluice_engine_saturation", 0)) for r in rows) / len(rows)
    return out


def gateway_totals(metrics: dict[str, float]) -> dict[str, Any]:
    """Counters worth keeping from the gateway's /metrics at the end of a run."""
    keep = ("sluice_rejections_total", "sluice_protection_transitions_total", "sluice_admission_wait_seconds_count",
            "sluice_admission_wait_seconds_sum")
    return {k: v for k, v in metrics.items() if k.split("{")[0] in keep}
