"""The remaining budget per tier rule, for the console's snapshot: cheap, from the traffic this gateway process
answered (``telemetry.TrafficWindow``), never from the state store.

For each rate of each tier's rules: its limit (``amount`` per ``period_s``) and what was ``used`` over the last
``period_s`` (answered and not refused; tokens as answered). ``remaining`` is ``amount - used``, not below zero, for
the rules that one counter serves: per tier (shared by every caller of the tier), per tenant (each tenant with
traffic in the tier over the period, one row each) and global. It is an estimate: the limiter's bucket refills
continuously and starts full (``burst``), reserves a request's ``max_tokens`` until it ends, and other gateway
processes' traffic is not seen here. Per key, per user and per model: ``remaining`` is ``None`` (one bucket per
caller: see usage per key; models are not told apart in the window). A period longer than the window
(``TrafficWindow.span_s``): ``used`` and ``remaining`` are ``None``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sluice.config import TierSettings
from sluice.telemetry._traffic import Group, TrafficWindow

_COUNTED = ("requests", "tokens")  # the kinds the traffic window counts
Spent = dict[Group, tuple[int, int]]


def tier_budgets(tiers: Mapping[str, TierSettings], traffic: TrafficWindow, now_s: float) -> list[dict[str, Any]]:
    spent_by_window: dict[int, Spent] = {}  # one pass over the window per distinct period
    rows: list[dict[str, Any]] = []
    for tier_name, tier in tiers.items():
        for rule in tier.rules():
            for kind in _COUNTED:
                rate = getattr(rule, kind)
                if rate is None:
                    continue
                base = {"tier": tier_name, "per": rule.per, "model": rule.model, "kind": kind,
                        "limit": rate.amount, "period_s": rate.period_s, "tenant": None, "used": None,
                        "remaining": None}
                if rate.period_s > traffic.span_s or rule.model is not None or rule.per in ("key", "user"):
                    rows.append(base)
                    continue
                window_s = max(1, int(rate.period_s))
                spent = spent_by_window.get(window_s)
                if spent is None:
                    spent = spent_by_window[window_s] = traffic.spent(now_s, window_s)
                rows.extend(_rows(base, spent))
    return rows


def _rows(base: dict[str, Any], spent: Spent) -> list[dict[str, Any]]:
    index = 0 if base["kind"] == "requests" else 1
    if base["per"] == "tenant":
        used_by_tenant: dict[str, int] = {}
        for (tier, tenant), counts in spent.items():
            if tier == base["tier"]:
                used_by_tenant[tenant] = used_by_tenant.get(tenant, 0) + counts[index]
        return [_left(base, used, tenant) for tenant, used in sorted(used_by_tenant.items())]
    used = sum(counts[index] for (tier, _), counts in spent.items() if base["per"] == "global" or tier == base["tier"])
    return [_left(base, used, None)]


def _left(base: dict[str, Any], used: int, tenant: str | None) -> dict[str, Any]:
    return {**base, "tenant": tenant, "used": used, "remaining": max(0, base["limit"] - used)}
