"""The summary of a run: throughput, latency distributions, errors, goodput, per-tenant figures and fairness.

Definitions (all over the run's duration, first send to last answer):
  request throughput    successful requests / duration
  output token thr.     output tokens of successful requests / duration
  goodput               successful requests meeting both SLOs (TTFT <= --slo-ttft, TPOT <= --slo-tpot) / duration;
                        also as a fraction of all requests sent, with the rejection rate (429 and 503 over sent)
  fairness              Jain's index between tenants of (a) output tokens/s divided by the tenant's weight (its
                        share of demand), and (b) the fraction of its requests that succeeded
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from sluice.bench._client import RequestResult
from sluice.bench._stats import describe, jain_index, meets_slo
from sluice.bench._tenants import Tenant


def summarize(results: Sequence[RequestResult], *, duration_s: float, tenants: Sequence[Tenant],
              slo_ttft_s: float | None = None, slo_tpot_s: float | None = None) -> dict[str, Any]:
    slo = {"slo_ttft_s": slo_ttft_s, "slo_tpot_s": slo_tpot_s}
    overall = _figures(results, duration_s, **slo)
    per_tenant = {t.name: _figures([r for r in results if r.tenant == t.name], duration_s, **slo) for t in tenants}
    weights = {t.name: t.weight for t in tenants}
    return {
        "duration_s": duration_s,
        **overall,
        "slo": {"ttft_s": slo_ttft_s, "tpot_s": slo_tpot_s},
        "tenants": per_tenant,
        "fairness": {
            "jain_output_throughput_per_weight": jain_index(
                per_tenant[n]["throughput"]["output_tokens_per_s"] / weights[n] for n in per_tenant),
            "jain_success_fraction": jain_index(
                per_tenant[n]["requests"]["success_fraction"] for n in per_tenant if per_tenant[n]["requests"]["sent"]),
            "tenants": len(per_tenant),
        },
        "timeline": timeline(results, duration_s, [t.name for t in tenants]),
    }


def _figures(results: Sequence[RequestResult], duration_s: float, *, slo_ttft_s: float | None,
             slo_tpot_s: float | None) -> dict[str, Any]:
    ok = [r for r in results if r.ok]
    sent = len(results)
    rejected = sum(r.rejected for r in results)
    good = sum(meets_slo(r.ttft_s, r.tpot_s, slo_ttft_s=slo_ttft_s, slo_tpot_s=slo_tpot_s) for r in ok)
    per_s = 1 / duration_s if duration_s > 0 else 0.0
    output_tokens = sum(r.output_tokens for r in ok)
    prompt_tokens = sum(r.prompt_tokens or 0 for r in ok)
    return {
        "requests": {
            "sent": sent, "succeeded": len(ok), "failed": sent - len(ok), "rejected": rejected,
            "success_fraction": len(ok) / sent if sent else 0.0,
            "rejection_rate": rejected / sent if sent else 0.0,
        },
        "throughput": {
            "requests_per_s": len(ok) * per_s,
            "output_tokens_per_s": output_tokens * per_s,
            "total_tokens_per_s": (output_tokens + prompt_tokens) * per_s,
            "output_tokens": output_tokens,
            "prompt_tokens": prompt_tokens,
        },
        "latency_ms": {
            "ttft": describe([r.ttft_s for r in ok if r.ttft_s is not None], scale=1e3),
            "tpot": describe([r.tpot_s for r in ok if r.tpot_s is not None], scale=1e3),
            "itl": describe([x for r in ok for x in r.itl_s], scale=1e3),
            "e2e": describe([r.e2e_s for r in ok if r.e2e_s is not None], scale=1e3),
        },
        "goodput": {
            "requests": good,
            "requests_per_s": good * per_s,
            "fraction_of_sent": good / sent if sent else 0.0,
            "rejection_rate": rejected / sent if sent else 0.0,
        },
        "errors": {
            "by_status": dict(sorted(Counter(str(r.status) for r in results if not r.ok).items())),
            "by_reason": dict(sorted(Counter(r.reason or "unknown" for r in results if not r.ok).items())),
            "most_common": [{"error": error, "count": count}  # status, reason and the message's start
                            for error, count in Counter(r.failure() for r in results if not r.ok).most_common(5)],
        },
    }


def timeline(results: Sequence[RequestResult], duration_s: float, tenants: Sequence[str]) -> dict[str, Any]:
    """Per time bucket and tenant: output tokens/s (a stream's tokens spread from its first token to its end),
    completed requests/s, rejections/s and other errors/s (both by send time). Each bucket's counts are divided by
    its own width, so the last one, which ends with the run (``bucket_edges``), is a rate like the others."""
    edges = bucket_edges(duration_s)
    n = len(edges) - 1
    series = {t: {k: [0.0] * n for k in ("output_tokens_per_s", "completed_per_s", "rejected_per_s",
                                          "errors_per_s")} for t in tenants}

    for r in results:
        s = series[r.tenant]
        if not r.ok:
            s["rejected_per_s" if r.rejected else "errors_per_s"][_bucket(edges, r.start_s)] += 1
            continue
        s["completed_per_s"][_bucket(edges, r.end_s)] += 1
        _spread(s["output_tokens_per_s"], r.output_tokens, r.start_s + (r.ttft_s or 0.0), r.end_s, edges)
    widths = [b - a for a, b in itertools.pairwise(edges)]
    for s in series.values():
        for counts in s.values():
            counts[:] = [c / w for c, w in zip(counts, widths, strict=True)]
    return {"bucket_s": widths[0], "t_s": edges[:-1], "end_s": edges[-1], "tenants": series}


def bucket_edges(duration_s: float, *, max_buckets: int = 120) -> list[float]:
    """The timeline's bucket edges, from 0 to the end of the run: buckets of a whole number of seconds (1 s, or
    wider so that there are at most about ``max_buckets``). The run rarely lasts a whole number of buckets: the last
    bucket ends at ``duration_s``, a remainder shorter than half a bucket joining the bucket before it (a sliver
    of a bucket would be all noise)."""
    bucket_s = max(1.0, math.ceil(duration_s / max_buckets))
    if duration_s <= 0:
        return [0.0, bucket_s]
    full = int(duration_s // bucket_s)
    edges = [i * bucket_s for i in range(full + 1)]
    if full == 0 or duration_s - edges[-1] >= bucket_s / 2:
        edges.append(duration_s)
    else:
        edges[-1] = duration_s
    return edges


def _bucket(edges: Sequence[float], t_s: float) -> int:
    """The bucket holding ``t_s``; times before the first edge or after the last count in the first or last."""
    return min(len(edges) - 2, max(0, bisect.bisect_right(edges, t_s) - 1))


def _spread(buckets: list[float], amount: float, begin_s: float, end_s: float, edges: Sequence[float]) -> None:
    """Add ``amount`` to the buckets in proportion to their overlap with [begin_s, end_s] (all of it to one bucket
    when the interval is empty)."""
    if end_s - begin_s <= 1e-9:
        buckets[_bucket(edges, end_s)] += amount
        return
    for i in range(_bucket(edges, begin_s), _bucket(edges, end_s) + 1):
        low = begin_s if i == 0 else max(begin_s, edges[i])  # times outside the edges count in the end buckets
        high = end_s if i == len(buckets) - 1 else min(end_s, edges[i + 1])
        buckets[i] += amount * max(0.0, high - low) / (end_s - begin_s)
