"""Which buckets and permits a request touches: the limit rules of the caller's tier and of everyone, resolved
for one principal and one model.

Every key carries one hash tag, ``{sluice}``: a decision charges buckets of several scopes at once (key, tenant,
tier, global), and Redis Cluster runs a script only over keys of one slot, so all-or-nothing across scopes needs
them in one slot. (Separate deployments sharing a cluster shard by using different ``key_prefix`` values.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from sluice.config import LimitRule, QuotaSettings, Rate, TierSettings
from sluice.identity import Principal
from sluice.quota._model import Bucket, Kind, Lease, LimitInfo
from sluice.quota._pricing import Price

KINDS: tuple[Kind, ...] = ("requests", "tokens", "input_tokens", "output_tokens")
_MAX_SHAPES = 10_000  # plans remembered (per principal, model and tightening) before the memory starts over


@dataclass(slots=True)  # made per request: not frozen (a frozen __init__ costs 3x), never changed
class Plan:
    buckets: tuple[Bucket, ...]
    leases: tuple[Lease, ...]


@dataclass(frozen=True, slots=True)
class _Shape:
    """A plan before its costs are known: what one principal's requests to one model touch."""

    buckets: tuple[Bucket, ...]  # with cost 0
    leases: tuple[Lease, ...]


@dataclass(frozen=True, slots=True)
class _Rule:
    origin: str  # "tier.<name>" or "all"
    tier: str | None
    rule: LimitRule


class QuotaPolicy:
    def __init__(self, tiers: Mapping[str, TierSettings], quota: QuotaSettings, key_prefix: str = "{sluice}") -> None:
        self.tiers = dict(tiers)
        self.quota = quota
        self._prefix = self.key_prefix = key_prefix
        self._rules: dict[str, list[_Rule]] = {
            name: [_Rule(f"tier.{name}", name, r) for r in tier.rules()] for name, tier in tiers.items()
        }
        self._shared = [_Rule("all", None, r) for r in quota.limits if r.mode == "enforce"]  # shadow: _shadow.py
        self._shapes: dict[tuple[Principal, str, float], _Shape] = {}

    def max_wait_s(self, principal: Principal) -> float:
        tier = self.tiers.get(principal.tier)
        return tier.max_wait_s if tier else 0.0

    def plan(self, principal: Principal, model: str, price: Price, tighten: float = 1.0) -> Plan:
        """The buckets and permits of one request. ``tighten`` < 1 scales the rates of the caller's tier rules
        (protection mode squeezing lower tiers); the buckets keep their state and their units."""
        shape = self._shapes.get((principal, model, tighten))
        if shape is None:
            if len(self._shapes) >= _MAX_SHAPES:
                self._shapes.clear()
            shape = self._shapes[(principal, model, tighten)] = self._shape(principal, model, tighten)
        costs = {"requests": 1, "tokens": price.total, "input_tokens": price.prompt_tokens,
                 "output_tokens": price.max_output_tokens}
        return Plan(tuple(Bucket(b.key, b.interval_s, b.capacity, costs[b.info.kind], b.info) for b in shape.buckets),
                    shape.leases)

    def _shape(self, principal: Principal, model: str, tighten: float) -> _Shape:
        buckets: list[Bucket] = []
        leases: list[Lease] = []
        for r in (*self._rules.get(principal.tier, ()), *self._shared):
            rule = r.rule
            if rule.model not in (None, "each", model):
                continue
            scope_id = _scope_id(rule, principal)
            model_part = "*" if rule.model is None else model
            where = f"{self._prefix}:{r.origin}:{rule.per}={scope_id}:{model_part}"
            scope = _describe(r, rule, scope_id, model)
            for kind in KINDS:
                rate: Rate | None = getattr(rule, kind)
                if rate is not None:
                    factor = tighten if r.tier is not None else 1.0
                    amount = max(1, math.floor(rate.amount * factor))
                    info = LimitInfo(kind, scope, amount, rate.period_s, rule.on_store_error, rule.per)
                    buckets.append(Bucket(f"{where}:{kind}", rate.interval_s / factor,
                                          max(1, math.ceil(rate.capacity * factor)), 0, info))
            if rule.concurrent is not None:
                leases.append(Lease(f"{where}:concurrent", rule.concurrent, self.quota.lease_ttl_s, scope,
                                    rule.on_store_error, rule.per))
        return _Shape(tuple(buckets), tuple(leases))


def _scope_id(rule: LimitRule, p: Principal) -> str:
    return {"key": p.key_id, "user": p.user, "tenant": p.tenant, "tier": p.tier, "global": "*"}[rule.per]


def _describe(r: _Rule, rule: LimitRule, scope_id: str, model: str) -> str:
    """How a refusal names the limit: 'tier pro', 'tier pro, tenant acme', 'key k1 for model m', ..."""
    if r.tier is not None:
        text = {"key": f"tier {r.tier}", "tier": f"tier {r.tier} (shared)"}.get(
            rule.per, f"tier {r.tier}, {rule.per} {scope_id}")
    else:
        text = "all callers" if rule.per == "global" else f"{rule.per} {scope_id}"
    return text if rule.model is None else f"{text} for model {model}"
