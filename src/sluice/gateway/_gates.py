"""Admission for one model's pool, assembled from its settings: the window, the load it watches, protection.

Unless ``admission.window.initial`` sets the pool's total, the window is learnt per replica and follows the live
replica set (``PerReplicaLimit``): a replica added widens it at once. The window never exceeds the pool's
``engine.max_connections``: every request the gate dispatches holds an upstream connection, so a wider window would
only move the excess into a wait for a connection, out of reach of priorities, fair shares and queue deadlines."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack

from sluice.admission import (
    AIMDLimit,
    FixedLimit,
    Gate,
    GateSettings,
    GradientLimit,
    Limit,
    LoadReading,
    PerReplicaLimit,
    ProtectionMode,
    SaturationDetector,
)
from sluice.clock import Clock
from sluice.config import ModelSettings, Settings
from sluice.engines import LoadScraper, ReplicaSet
from sluice.telemetry import GatewayMetrics

log = logging.getLogger("sluice")

DEFAULT_WINDOW_PER_REPLICA = 128


async def open_gate(model: ModelSettings, replicas: ReplicaSet, scraper: LoadScraper | None,
                    settings: Settings, clock: Clock, metrics: GatewayMetrics,
                    stack: AsyncExitStack, max_connections: int) -> Gate | None:
    """The pool's gate; ``scraper`` (the replicas' load, when watched) feeds saturation and KV room;
    ``max_connections`` (the pool's) caps the window."""
    admission = model.admission
    if not admission.enabled:
        return None
    detector = None
    if admission.watch_load and scraper is not None:
        sat = admission.saturation

        def readings() -> list[LoadReading | None]:
            samples = [scraper.latest(r.url) for r in replicas.routable()]
            return [None if s is None else LoadReading(s.running, s.waiting, s.kv_usage, s.scraped_at)
                    for s in samples]

        detector = SaturationDetector(readings, clock, queue_threshold=sat.queue_threshold,
                                      kv_threshold=sat.kv_threshold, stale_after_s=sat.stale_after_s,
                                      kv_capacity_tokens=_kv_capacity(model))
    protection = None
    if detector is not None and admission.protection.enabled:
        p = admission.protection
        protection = ProtectionMode(clock, engage_at=p.engage_at, relax_at=p.relax_at,
                                    engage_after_s=p.engage_after_s, relax_after_s=p.relax_after_s, name=model.name,
                                    on_change=lambda engaged: metrics.protection_changed(model.name, engaged))
    gate = Gate(
        model.name, _limit(model, replicas, clock, max_connections), clock,
        GateSettings(max_tokens_in_flight=admission.max_tokens_in_flight,
                     queue_max_requests=admission.queue_max_requests, queue_max_tokens=admission.queue_max_tokens,
                     reserve_top_share=admission.protection.reserve_top_share,
                     reserve_always=admission.protection.reserve_when == "always",
                     top_priority=max(t.priority for t in settings.tiers.values()),
                     preempt_gap=admission.preemption.priority_gap if admission.preemption.enabled else None),
        saturation=detector, protection=protection, observer=metrics, output_weight=admission.output_weight,
    )
    gate.start()
    stack.push_async_callback(gate.close)
    return gate


def _limit(model: ModelSettings, replicas: ReplicaSet, clock: Clock, max_connections: int) -> Limit:
    window = model.admission.window
    maximum = min(window.max, max_connections)
    minimum = min(window.min, maximum)
    if max(window.initial or 0, window.min) > max_connections:
        log.warning("model %s: admission.window asks for more requests in flight than engine.max_connections "
                    "(%d): the window is capped there", model.name, max_connections)
    if window.initial is not None:  # the pool's total, whatever the replicas
        return _algorithm(model, clock, min(max(window.initial, minimum), maximum), minimum, maximum)
    per_replica = model.sim.max_num_seqs if model.sim else DEFAULT_WINDOW_PER_REPLICA
    inner = _algorithm(model, clock, min(per_replica, maximum), 1, maximum)
    return PerReplicaLimit(inner, lambda: len(replicas), minimum=minimum, maximum=maximum)


def _algorithm(model: ModelSettings, clock: Clock, initial: int, minimum: int, maximum: int) -> Limit:
    window = model.admission.window
    if window.kind == "aimd":
        return AIMDLimit(clock, initial=initial, minimum=minimum, maximum=maximum,
                         latency_threshold_s=window.latency_threshold_s)
    if window.kind == "gradient":
        return GradientLimit(clock, initial=initial, minimum=minimum, maximum=maximum)
    return FixedLimit(initial)


def _kv_capacity(model: ModelSettings) -> int | None:
    if model.admission.kv_capacity_tokens is not None:
        return model.admission.kv_capacity_tokens
    if model.sim is not None:
        return model.sim.num_kv_blocks * model.sim.block_size
    return None
