"""One Prometheus exposition from several workers' expositions: the whole gateway, not the worker scraped.

Each worker's registry is the same code, so a sample's name and labels are the same text in every exposition; the
merge works on that text, sample by sample. Counters, histograms (buckets, ``_sum``, ``_count``) and most gauges are
summed (requests in flight, connections, queued, admission windows and upstream connections are totals over the
workers). Gauges that are a state, or one fact every worker sees, are not summed: ``MAX_GAUGES`` take the largest
value (any worker saturated, protecting, or cut off from its quota store; the pool's replicas), ``MIN_GAUGES`` the
smallest (a replica is up only if every worker reaches it). ``*_created`` timestamps take the earliest.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

# The same fact seen by every worker (the pool's replicas) or a state: the largest value, not the sum.
MAX_GAUGES = frozenset({"sluice_engine_saturation", "sluice_protection_engaged", "sluice_quota_store_degraded",
                        "sluice_engine_replicas", "sluice_engine_gpu_utilization", "sluice_engine_saturation_input"})
MIN_GAUGES = frozenset({"sluice_engine_replica_up"})
WORKERS_FAMILY = "sluice_gateway_workers"

Combine = Callable[[float, float], float]


def _text(value: float) -> str:
    """A sample value as Prometheus writes it (``+Inf``, ``-Inf``, ``NaN``)."""
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return "NaN" if math.isnan(value) else repr(float(value))


def _sum(a: float, b: float) -> float:
    return a + b


@dataclass(slots=True)
class _Family:
    help_line: str = ""
    type_line: str = ""
    combine: Combine = _sum
    samples: dict[str, float] = field(default_factory=dict)  # "name{labels}" -> value, in first-seen order


def merge_expositions(expositions: Iterable[str]) -> str:
    """The text exposition whose every sample combines the samples of the same name and labels in
    ``expositions`` (each in Prometheus' text format 0.0.4), plus ``sluice_gateway_workers``: how many were merged."""
    families: dict[str, _Family] = {}
    merged = 0
    for text in expositions:
        merged += 1
        _add(families, text)
    lines = [f"# HELP {WORKERS_FAMILY} Gateway worker processes whose metrics this exposition sums.",
             f"# TYPE {WORKERS_FAMILY} gauge", f"{WORKERS_FAMILY} {_text(merged)}"]
    for family in families.values():
        lines += [line for line in (family.help_line, family.type_line) if line]
        lines += [f"{key} {_text(value)}" for key, value in family.samples.items()]
    return "\n".join(lines) + "\n"


def _add(families: dict[str, _Family], text: str) -> None:
    family: _Family | None = None
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            name = line.split(" ", 3)[2]
            family = families.setdefault(name, _Family())
            if line.startswith("# HELP "):
                family.help_line = family.help_line or line
            else:
                family.type_line = family.type_line or line
                family.combine = _combine_for(name, line.rsplit(" ", 1)[-1])
        elif line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            if family is None:  # a sample before any TYPE line: untyped, summed
                family = families.setdefault("", _Family())
            sample = float(value)
            known = family.samples.get(key)
            family.samples[key] = sample if known is None else family.combine(known, sample)


def _combine_for(name: str, kind: str) -> Combine:
    if name.endswith("_created"):
        return min
    if kind == "gauge" and name in MAX_GAUGES:
        return _max
    if kind == "gauge" and name in MIN_GAUGES:
        return min
    return _sum


def _max(a: float, b: float) -> float:
    return max(a, b)
