"""Engines: the inference servers behind Sluice, reached over their OpenAI HTTP API."""

from sluice.engines._backend import BackendChoice, choose_backend, context_length
from sluice.engines._breaker import BreakerState, CircuitBreaker
from sluice.engines._dns import DnsDiscovery
from sluice.engines._errors import engine_error
from sluice.engines._gpu_signal import (
    FakeNvml,
    GpuReadError,
    GpuReading,
    GpuSignal,
    GpuUnavailable,
    Nvml,
    PynvmlReader,
    parse_dcgm,
)
from sluice.engines._gpus import GpuPool, NotEnoughGpus, VisibleGpus, launch_gpus, visible_gpus
from sluice.engines._launch_plan import Backend, EngineCommand, ReplicaPlanner, plan_commands
from sluice.engines._launcher import EngineLauncher
from sluice.engines._pool import EnginePool, UpstreamResponse
from sluice.engines._replica import Replica
from sluice.engines._replica_set import ReplicaSet
from sluice.engines._routing import Router, RoutingPolicy
from sluice.engines._scraper import LoadSample, LoadScraper, ScrapeError, parse_load
from sluice.engines._slots import ConnectionSlots

__all__ = [
    "Backend",
    "BackendChoice",
    "BreakerState",
    "CircuitBreaker",
    "ConnectionSlots",
    "DnsDiscovery",
    "EngineCommand",
    "EngineLauncher",
    "EnginePool",
    "FakeNvml",
    "GpuPool",
    "GpuReadError",
    "GpuReading",
    "GpuSignal",
    "GpuUnavailable",
    "LoadSample",
    "LoadScraper",
    "NotEnoughGpus",
    "Nvml",
    "PynvmlReader",
    "Replica",
    "ReplicaPlanner",
    "ReplicaSet",
    "Router",
    "RoutingPolicy",
    "ScrapeError",
    "UpstreamResponse",
    "VisibleGpus",
    "choose_backend",
    "context_length",
    "engine_error",
    "launch_gpus",
    "parse_dcgm",
    "parse_load",
    "plan_commands",
    "visible_gpus",
]
