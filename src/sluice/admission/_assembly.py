"""A pool's gate assembled from its model's settings: the window algorithm, the load it watches, protection mode.
One recipe, used by the gateway (over live replicas and their scraped load) and by the planner (over simulated
replicas), so that what the planner replays is what the gateway runs.

Unless ``admission.window.initial`` sets the pool's total, the window is learnt per replica and multiplied by the
replicas there are now (``PerReplicaLimit``). The window never exceeds ``max_connections`` (the pool's upstream
connections): a wider window would only move the excess into a wait for a connection, out of reach of priorities,
fair shares and queue deadlines.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from sluice.admission._gate import AdmissionObserver, Gate, GateSettings
from sluice.admission._protection import ProtectionMode
from sluice.admission._saturation import ReadingsSource, SaturationDetector
from sluice.admission._window import AIMDLimit, FixedLimit, GradientLimit, Limit, PerReplicaLimit
from sluice.clock import Clock
from sluice.config import ModelSettings, Settings

log = logging.getLogger("sluice")

DEFAULT_WINDOW_PER_REPLICA = 128  # requests in flight per replica to start from, for an engine that is not a simulator


@dataclass(frozen=True, slots=True)
class PoolView:
    """What the gate sees of the pool's replicas."""

    count: Callable[[], int]  # replicas that take requests now
    readings: ReadingsSource | None  # their load, when it is watched
    max_connections: int  # the pool's upstream connections: the window's ceiling
    kv_capacity_tokens: int | None  # KV tokens per replica, when known


def assemble_gate(model: ModelSettings, settings: Settings, clock: Clock, pool: PoolView, *,
                  observer: AdmissionObserver | None = None,
                  on_protection_change: Callable[[bool], None] | None = None) -> Gate | None:
    """The pool's gate, not started; None when the model's admission is off."""
    admission = model.admission
    if not admission.enabled:
        return None
    detector = None
    if admission.watch_load and pool.readings is not None:
        sat = admission.saturation
        detector = SaturationDetector(pool.readings, clock, queue_threshold=sat.queue_threshold,
                                      kv_threshold=sat.kv_threshold, stale_after_s=sat.stale_after_s,
                                      kv_capacity_tokens=pool.kv_capacity_tokens, gpu_threshold=sat.gpu_threshold,
                                      gpu_kv_threshold=sat.gpu_kv_threshold,
                                      swap_threshold_per_s=sat.swap_threshold_per_s)
    protection = None
    if detector is not None and admission.protection.enabled:
        p = admission.protection
        protection = ProtectionMode(clock, engage_at=p.engage_at, relax_at=p.relax_at,
                                    engage_after_s=p.engage_after_s, relax_after_s=p.relax_after_s, name=model.name,
                                    on_change=on_protection_change, explain=detector.explain)
    gate_settings = GateSettings(
        max_tokens_in_flight=admission.max_tokens_in_flight, queue_max_requests=admission.queue_max_requests,
        queue_max_tokens=admission.queue_max_tokens, reserve_top_share=admission.protection.reserve_top_share,
        reserve_always=admission.protection.reserve_when == "always",
        top_priority=max(t.priority for t in settings.tiers.values()),
        preempt_gap=admission.preemption.priority_gap if admission.preemption.enabled else None)
    return Gate(model.name, _limit(model, clock, pool), clock, gate_settings, saturation=detector,
                protection=protection, observer=observer, output_weight=admission.output_weight)


def _limit(model: ModelSettings, clock: Clock, pool: PoolView) -> Limit:
    window = model.admission.window
    maximum = min(window.max, pool.max_connections)
    minimum = min(window.min, maximum)
    if max(window.initial or 0, window.min) > pool.max_connections:
        log.warning("model %s: admission.window asks for more requests in flight than engine.max_connections "
                    "(%d): the window is capped there", model.name, pool.max_connections)
    if window.initial is not None:  # the pool's total, whatever the replicas
        return _algorithm(model, clock, min(max(window.initial, minimum), maximum), minimum, maximum)
    per_replica = model.sim.max_num_seqs if model.sim else DEFAULT_WINDOW_PER_REPLICA
    inner = _algorithm(model, clock, min(per_replica, maximum), 1, maximum)
    return PerReplicaLimit(inner, pool.count, minimum=minimum, maximum=maximum)


def _algorithm(model: ModelSettings, clock: Clock, initial: int, minimum: int, maximum: int) -> Limit:
    window = model.admission.window
    if window.kind == "aimd":
        return AIMDLimit(clock, initial=initial, minimum=minimum, maximum=maximum,
                         latency_threshold_s=window.latency_threshold_s)
    if window.kind == "gradient":
        return GradientLimit(clock, initial=initial, minimum=minimum, maximum=maximum)
    return FixedLimit(initial)
