"""Autoscalers from settings: each model's ``autoscale`` block, or the former top-level ``scale_out`` block
(notify-only: up decisions sent to its webhook or command, never down), migrated with a warning."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping

from sluice.clock import Clock
from sluice.config import AutoscaleSettings, ScaleOutSettings, Settings
from sluice.errors import ConfigError
from sluice.gateway._route import ModelRoute
from sluice.gateway.autoscale._actuators import (
    Actuator,
    CommandActuator,
    FleetActuator,
    ReplicaFleet,
    WebhookActuator,
)
from sluice.gateway.autoscale._autoscaler import AutoscaleObserver, Autoscaler, Signals
from sluice.gateway.autoscale._kubernetes import KubernetesActuator
from sluice.gateway.autoscale._lock import lock_for
from sluice.state import State

log = logging.getLogger("sluice.autoscale")

LEGACY_MAX_REPLICAS = 1000  # scale_out never knew a maximum: it only asked for more


def from_scale_out(legacy: ScaleOutSettings) -> AutoscaleSettings:
    """The ``scale_out`` block as an autoscale block: same thresholds and window; up only; at most one call per
    ``interval_s`` (a call is "in progress" for that long, since nothing tells the gateway it was carried out)."""
    return AutoscaleSettings(
        actuator="webhook" if legacy.webhook else "command", webhook=legacy.webhook, command=legacy.command,
        min_replicas=0, max_replicas=LEGACY_MAX_REPLICAS, check_s=legacy.check_s, window_s=legacy.window_s,
        refusal_ratio=min(legacy.rejection_ratio, 0.99), min_requests=1, scale_up_saturation=legacy.saturation,
        scale_down_saturation=0.0, cooldown_up_s=0.0, settle_timeout_s=legacy.interval_s)


def autoscale_settings(settings: Settings) -> dict[str, AutoscaleSettings]:
    """Each autoscaled model's settings: its own block, else the migrated ``scale_out`` block."""
    legacy = from_scale_out(settings.scale_out) if settings.scale_out is not None else None
    if legacy is not None:
        log.warning("scale_out is deprecated: it now runs as each model's autoscale block with actuator %s, up "
                    "decisions only (docs/autoscaling.md); move it under models[].autoscale", legacy.actuator)
    chosen = {m.name: m.autoscale or legacy for m in settings.models}
    return {name: s for name, s in chosen.items() if s is not None}


def actuator_for(model: str, settings: AutoscaleSettings, fleet: ReplicaFleet | None) -> Actuator:
    if settings.actuator == "launcher":
        if fleet is None:
            raise ConfigError(f"model {model}: autoscale actuator launcher needs replicas launched by Sluice; for "
                              "engines started elsewhere use kubernetes, command or webhook (with discovery)")
        return FleetActuator(fleet)
    if settings.actuator == "kubernetes":
        assert settings.kubernetes is not None
        return KubernetesActuator(settings.kubernetes, settings.timeout_s)
    if settings.actuator == "webhook":
        assert settings.webhook is not None
        return WebhookActuator(settings.webhook, settings.timeout_s)
    assert settings.command is not None
    return CommandActuator(settings.command, settings.timeout_s)


def build_autoscalers(settings: Settings, signals: Mapping[str, Signals], clock: Clock, state: State,
                      observer: AutoscaleObserver | None = None,
                      fleets: Mapping[str, ReplicaFleet] | None = None) -> list[Autoscaler]:
    """One autoscaler per autoscaled model (not started). ``fleets``: the launched replicas of each model."""
    lock = lock_for(state, f"{socket.gethostname()}:{os.getpid()}")
    return [Autoscaler(model, s, signals[model], actuator_for(model, s, (fleets or {}).get(model)), clock,
                       lock=lock, observer=observer)
            for model, s in autoscale_settings(settings).items()]


def signals_for(routes: Mapping[str, ModelRoute],
                counts: Callable[[str], tuple[int, int]]) -> dict[str, Signals]:
    """Each model's signals: ``counts(model)`` (answered, refused for engine capacity), its gate's saturation (0
    without a gate: refusals alone decide), and its routable replicas."""
    def one(route: ModelRoute) -> Signals:
        gate, replicas = route.gate, route.pool.replicas
        return Signals(counts=lambda: counts(route.name),
                       saturation=lambda: gate.last_saturation if gate is not None else 0.0,
                       ready=lambda: len(replicas.routable()))

    return {name: one(route) for name, route in routes.items()}
