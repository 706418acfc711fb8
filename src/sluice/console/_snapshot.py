"""The console's one JSON snapshot: composed from the gateway's stateful objects as they stand, cheaply (no I/O,
no locks: everything runs on the gateway's event loop).

- ``pools``: per model, the admission window, requests and tokens in flight, the queue per priority band, the
  saturation the gate last read, protection mode and why; the replica set (``ReplicaSet.snapshot()``), each replica
  with its health, the engine's own readings (``details["load"]``, from the pool's load scraper), GPU use
  (``gpu_use``: utilisation 0..1 and framebuffer MiB, from ``engine.gpu``; ``None``: unknown, i.e. not read, or
  the reading is stale) and the gateway's TTFT/TPOT of it over the last minutes (``telemetry.ReplicaTimings``).
- ``traffic``: the last minutes per second (requests, tokens, 429s, 503s), per tier and tenant the rates over the
  last seconds (with ``goodput_per_s``: answers within the tier's ``ttft_slo_s``) and refusals by status and
  reason, and the last refusals with their request ids
  (``telemetry.TrafficWindow``), with those shadow limits would have made (``shadow: true``; quota/_shadow.py).
- ``tiers``: each tier's settings as they apply now (after live changes through the admin API).
- ``budgets``: per tier rule with a rate, its limit and what this gateway answered in the rule's period; the
  remaining budget for the rules per tier, tenant or global (per key and per user: ``None``, see usage per key).
"""

from __future__ import annotations

import math
from typing import Any

from sluice.console._budgets import tier_budgets
from sluice.telemetry import ReplicaTimings


def compose_snapshot(service: Any, metrics: Any, now_s: float) -> dict[str, Any]:
    tiers = service.limiter.policy.tiers
    return {
        "pools": [_pool(name, route, metrics.replica_timings, now_s) for name, route in service.routes.items()],
        "traffic": _with_shadow(metrics.traffic.view(now_s), metrics.last_shadow_refusals, now_s),
        "tiers": {name: tier.model_dump(mode="json", exclude_defaults=False) for name, tier in tiers.items()},
        "budgets": tier_budgets(tiers, metrics.traffic, now_s),
    }


def _with_shadow(traffic: dict[str, Any], shadow: Any, now_s: float) -> dict[str, Any]:
    """The last refusals, the ones shadow limits would have made (never enforced: the request went on as the live
    limits decided) among them, marked ``shadow``, newest first."""
    refusals = [{**r, "shadow": False} for r in traffic["refusals"]]
    refusals += [{"request_id": r.request_id, "status": 429, "reason": r.reason, "tier": r.tier, "scope": r.scope,
                  "limit": r.limit, "message": r.message, "shadow": True, "ago_s": round(now_s - r.at_s, 3)}
                 for r in shadow]
    return {**traffic, "refusals": sorted(refusals, key=lambda r: r["ago_s"])}


def _pool(name: str, route: Any, timings: ReplicaTimings, now_s: float) -> dict[str, Any]:
    gate = route.gate
    doc: dict[str, Any] = {"model": name, "admission": None, **route.pool.replicas.snapshot()}
    readings = doc["details"].get("load", {})
    for replica in doc["replicas"]:
        engine = readings.get(replica["url"])
        fresh_gpu = engine["gpu"] if engine is not None and not engine["stale"] else None  # None: unknown
        replica.update(health=_health(replica, engine), engine=engine, gpu_use=fresh_gpu,
                       **timings.view(name, replica["url"], now_s))
    if gate is not None:
        saturation = gate.last_saturation
        engaged = bool(gate.protection is not None and gate.protection.engaged)
        doc["admission"] = {
            "window": gate.limit.value, "in_flight": gate.in_flight, "tokens_in_flight": gate.tokens_in_flight,
            "queued": {str(p): n for p, n in sorted(gate.queue.depth_by_priority().items())},
            "saturation": None if math.isinf(saturation) else round(saturation, 3),
            "protection": {"engaged": engaged, "watched": gate.protection is not None,
                           "why": _why(engaged, saturation, gate.protection) if gate.protection is not None
                           else "protection mode is off for this pool"},
        }
    return doc


def _why(engaged: bool, saturation: float, protection: Any) -> str:
    if math.isinf(saturation):
        return "no fresh engine load reading: saturation unknown"
    if engaged:
        cause = protection.reason or protection.explain()
        return f"engines saturated at {saturation:.2f} ({cause}); sheddable and lower tiers are held back"
    cause = protection.explain()
    return f"engines at {saturation:.2f} of their thresholds" + (f" ({cause})" if cause else "")


def _health(replica: dict[str, Any], engine: dict[str, Any] | None) -> str:
    """One word: draining, down (circuit open), recovering (half open), unread (no fresh engine reading), up."""
    if replica["state"] == "draining":
        return "draining"
    if replica["breaker"] == "open":
        return "down"
    if replica["breaker"] == "half_open":
        return "recovering"
    if engine is not None and (engine["stale"] or engine["error"] is not None):
        return "unread"
    return "up"
