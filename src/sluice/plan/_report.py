"""What the planner says: per tier and per tenant, the requests, the refusals by status and reason, queue waits,
TTFT/TPOT percentiles, goodput against the tier's TTFT target, and whether the targets were met.

A tier's TTFT target is its ``ttft_slo_s`` in the config, else the command's ``--slo-ttft-ms``; with neither, its
goodput counts every successful request. Goodput is requests answered within the target per second of the trace's
span (first arrival to last). A tier meets its target when at least ``attainment`` of its requests that got past
the quota (a 429 is the policy's answer, not a shortage of engines) were answered within it: a 503 is a miss.
Percentiles are ``sluice bench``'s (linear between ranks).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from sluice.bench import percentile
from sluice.config import Settings
from sluice.errors import ConfigError
from sluice.plan._replay import ReplayResult, RequestOutcome

DEFAULT_ATTAINMENT = 0.99  # share of a tier's requests that must meet its TTFT target


class SloPolicy:
    """The TTFT target of each tier, and the share of requests that must meet it."""

    def __init__(self, settings: Settings, *, default_ttft_s: float | None, attainment: float | None = None):
        attainment = DEFAULT_ATTAINMENT if attainment is None else attainment
        if not 0 < attainment <= 1:
            raise ConfigError(f"--attainment is a share within (0, 1], not {attainment:g}")
        self._targets = {name: t.ttft_slo_s for name, t in settings.tiers.items()}
        self._default = default_ttft_s
        self.attainment = attainment

    def target_s(self, tier: str) -> float | None:
        own = self._targets.get(tier)
        return own if own is not None else self._default

    def met(self, outcome: RequestOutcome) -> bool:
        if outcome.status != 200:
            return False
        target = self.target_s(outcome.principal.tier)
        return target is None or (outcome.ttft_s is not None and outcome.ttft_s <= target)

    def any_target(self, tiers: Iterable[str]) -> bool:
        return any(self.target_s(t) is not None for t in tiers)


def group_figures(outcomes: Sequence[RequestOutcome], span_s: float, slo: SloPolicy) -> dict[str, Any]:
    statuses = Counter(o.status for o in outcomes)
    refusals: dict[str, dict[str, int]] = {
        str(status): dict(sorted(Counter(o.reason or "" for o in outcomes if o.status == status).items()))
        for status in sorted(statuses) if status != 200}
    met = sum(1 for o in outcomes if slo.met(o))
    contended = len(outcomes) - statuses.get(429, 0)
    return {
        "requests": len(outcomes), "ok": statuses.get(200, 0), "429": statuses.get(429, 0),
        "503": statuses.get(503, 0), "refusals": refusals,
        "preempted": sum(o.preempted for o in outcomes),
        "queue_wait_s": _quantiles([o.queue_wait_s for o in outcomes if o.queue_wait_s is not None]),
        "ttft_s": _quantiles([o.ttft_s for o in outcomes if o.status == 200 and o.ttft_s is not None]),
        "tpot_s": _quantiles([o.tpot_s for o in outcomes if o.status == 200 and o.tpot_s is not None]),
        "slo_met": met, "slo_attainment": met / contended if contended else 1.0,
        "goodput_rps": met / span_s if span_s > 0 else float(met),
    }


def report(result: ReplayResult, *, span_s: float, slo: SloPolicy) -> dict[str, Any]:
    """Every figure of one replay, for ``--json`` and the table."""
    outcomes = result.outcomes
    tiers = _grouped(outcomes, lambda o: o.principal.tier)
    targets = {tier: slo.target_s(tier) for tier in tiers}
    verdicts = {tier: _meets(figures, targets[tier], slo) for tier, figures in
                ((t, group_figures(os, span_s, slo)) for t, os in tiers.items())}
    return {
        "replicas": result.replicas, "span_s": span_s, "simulated_s": result.simulated_s,
        "total": group_figures(outcomes, span_s, slo),
        "tiers": {t: {**group_figures(os, span_s, slo), "ttft_target_s": targets[t], "meets_slo": verdicts[t]}
                  for t, os in tiers.items()},
        "tenants": {t: group_figures(os, span_s, slo)
                    for t, os in _grouped(outcomes, lambda o: o.principal.tenant).items()},
        "meets_slo": all(v for v in verdicts.values() if v is not None),
    }


def _meets(figures: Mapping[str, Any], target_s: float | None, slo: SloPolicy) -> bool | None:
    if target_s is None:
        return None
    return bool(figures["slo_attainment"] >= slo.attainment)


def _grouped(outcomes: Iterable[RequestOutcome],
             key: Callable[[RequestOutcome], str]) -> dict[str, list[RequestOutcome]]:
    groups: dict[str, list[RequestOutcome]] = defaultdict(list)
    for o in outcomes:
        groups[key(o)].append(o)
    return dict(sorted(groups.items()))


def _quantiles(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"p50": percentile(values, 50), "p99": percentile(values, 99)}


def render_table(doc: Mapping[str, Any]) -> str:
    """The report for people: one line per tier, then per tenant, times in milliseconds."""
    header = (f"{'':<22}{'requests':>9}{'ok':>8}{'429':>7}{'503':>7}{'wait p50':>10}{'wait p99':>10}"
              f"{'ttft p50':>10}{'ttft p99':>10}{'tpot p50':>10}{'tpot p99':>10}{'goodput/s':>11}{'slo':>6}")
    lines = [f"replicas: {doc['replicas']}   trace span: {doc['span_s']:.1f} s   simulated: {doc['simulated_s']:.1f} s",
             header]
    rows: list[tuple[str, Mapping[str, Any], str]] = []
    for name, figures in doc["tiers"].items():
        verdict = {True: "met", False: "MISS", None: "-"}[figures["meets_slo"]]
        rows.append((f"tier {name}", figures, verdict))
    rows += [(f"tenant {name}", figures, "") for name, figures in doc["tenants"].items()]
    rows.append(("all", doc["total"], "met" if doc["meets_slo"] else "MISS"))
    for label, f, verdict in rows:
        lines.append(f"{label[:21]:<22}{f['requests']:>9}{f['ok']:>8}{f['429']:>7}{f['503']:>7}"
                     f"{_ms(f['queue_wait_s'], 'p50')}{_ms(f['queue_wait_s'], 'p99')}{_ms(f['ttft_s'], 'p50')}"
                     f"{_ms(f['ttft_s'], 'p99')}{_ms(f['tpot_s'], 'p50')}{_ms(f['tpot_s'], 'p99')}"
                     f"{f['goodput_rps']:>11.2f}{verdict:>6}")
    reasons = Counter[str]()
    for status, by_reason in doc["total"]["refusals"].items():
        reasons.update({f"{status} {reason}": n for reason, n in by_reason.items()})
    if reasons:
        lines.append("refusals: " + ", ".join(f"{label} x{n}" for label, n in sorted(reasons.items())))
    return "\n".join(lines)


def _ms(q: Mapping[str, float] | None, which: str) -> str:
    return f"{'-':>10}" if q is None else f"{q[which] * 1000:>10.1f}"
