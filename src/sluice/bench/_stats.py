"""The statistics of a load test: percentiles, summaries, goodput and Jain's fairness index.

Percentiles interpolate linearly between the two nearest ranks (numpy's default, ``method="linear"``): the p-th
percentile of sorted ``x[0..n-1]`` is at rank ``p/100 * (n-1)``. So the p50 of [1, 2, 3, 4] is 2.5 and its p90 is 3.7.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

PERCENTILES = (50, 90, 95, 99)


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0..100) of ``values``, by linear interpolation between closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile must be within 0..100, not {p}")
    ordered = sorted(values)
    rank = p / 100 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def describe(values: Sequence[float], *, scale: float = 1.0) -> dict[str, float] | None:
    """count, mean, std (population), min, p50/p90/p95/p99, max of ``values`` times ``scale``; None when empty."""
    if not values:
        return None
    xs = [v * scale for v in values]
    mean = math.fsum(xs) / len(xs)
    out = {"count": float(len(xs)), "mean": mean, "std": math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / len(xs))}
    out["min"] = min(xs)
    for p in PERCENTILES:
        out[f"p{p}"] = percentile(xs, p)
    out["max"] = max(xs)
    return out


def jain_index(allocations: Iterable[float]) -> float:
    """Jain's fairness index, (sum x)^2 / (n * sum x^2): 1 when all are equal, 1/n when one gets everything.

    All-zero allocations (nobody got anything) count as equal: 1.0.
    """
    xs = list(allocations)
    if not xs:
        raise ValueError("Jain's index of no allocations")
    if any(x < 0 for x in xs):
        raise ValueError("Jain's index is defined for non-negative allocations")
    squares = math.fsum(x * x for x in xs)
    if squares == 0:
        return 1.0
    return math.fsum(xs) ** 2 / (len(xs) * squares)


def meets_slo(ttft_s: float | None, tpot_s: float | None, *, slo_ttft_s: float | None,
              slo_tpot_s: float | None) -> bool:
    """Whether one successful request met both SLOs (an SLO that is not set always holds; a TPOT that could not
    be measured, as for one-token or non-streamed answers, holds too)."""
    if slo_ttft_s is not None and (ttft_s is None or ttft_s > slo_ttft_s):
        return False
    return not (slo_tpot_s is not None and tpot_s is not None and tpot_s > slo_tpot_s)
