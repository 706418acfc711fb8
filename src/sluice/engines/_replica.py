"""One engine replica as the gateway sees it: its address and dialect, its routing weight, the requests it has
outstanding, and its circuit breaker."""

from __future__ import annotations

from dataclasses import dataclass, field

from sluice.clock import MonotonicClock
from sluice.config import Dialect
from sluice.engines._breaker import CircuitBreaker


@dataclass(eq=False)
class Replica:
    url: str
    dialect: Dialect = "vllm"
    weight: float = 1.0
    outstanding: int = 0
    breaker: CircuitBreaker = field(default_factory=lambda: CircuitBreaker(MonotonicClock()))
