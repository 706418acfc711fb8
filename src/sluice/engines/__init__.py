"""Engines: the inference servers behind Sluice, reached over their OpenAI HTTP API."""

from sluice.engines._backend import choose_backend
from sluice.engines._breaker import BreakerState, CircuitBreaker
from sluice.engines._errors import engine_error
from sluice.engines._launcher import EngineCommand, EngineLauncher, plan_commands
from sluice.engines._pool import EnginePool, UpstreamResponse
from sluice.engines._replica import Replica
from sluice.engines._routing import Router, RoutingPolicy
from sluice.engines._scraper import LoadSample, LoadScraper, ScrapeError, parse_load
from sluice.engines._slots import ConnectionSlots

__all__ = [
    "BreakerState",
    "CircuitBreaker",
    "ConnectionSlots",
    "EngineCommand",
    "EngineLauncher",
    "EnginePool",
    "LoadSample",
    "LoadScraper",
    "Replica",
    "Router",
    "RoutingPolicy",
    "ScrapeError",
    "UpstreamResponse",
    "choose_backend",
    "engine_error",
    "parse_load",
    "plan_commands",
]
