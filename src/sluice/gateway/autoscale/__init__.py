"""The autoscaler: each model's refusals and saturation decide its replica count, carried out by an actuator
(the launcher, a command, a webhook, the Kubernetes scale subresource). Policy in ``_policy``, the loop in
``_autoscaler``, actuators in ``_actuators`` and ``_kubernetes``, the fleet-wide lock in ``_lock``."""

from sluice.gateway.autoscale._actuators import (
    Actuator,
    CommandActuator,
    FleetActuator,
    ReplicaFleet,
    WebhookActuator,
)
from sluice.gateway.autoscale._autoscaler import AutoscaleObserver, Autoscaler, Signals
from sluice.gateway.autoscale._build import (
    actuator_for,
    autoscale_settings,
    build_autoscalers,
    from_scale_out,
    signals_for,
)
from sluice.gateway.autoscale._kubernetes import KubernetesActuator
from sluice.gateway.autoscale._lock import DecisionLock, LocalLock, RedisLock, lock_for
from sluice.gateway.autoscale._policy import Decision, Evidence, Proposal, Sample, ScalePolicy

__all__ = [
    "Actuator",
    "AutoscaleObserver",
    "Autoscaler",
    "CommandActuator",
    "Decision",
    "DecisionLock",
    "Evidence",
    "FleetActuator",
    "KubernetesActuator",
    "LocalLock",
    "Proposal",
    "RedisLock",
    "ReplicaFleet",
    "Sample",
    "ScalePolicy",
    "Signals",
    "WebhookActuator",
    "actuator_for",
    "autoscale_settings",
    "build_autoscalers",
    "from_scale_out",
    "lock_for",
    "signals_for",
]
