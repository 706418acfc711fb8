"""One engine replica as the gateway sees it: its address and dialect, its routing weight, the requests it has
outstanding, its circuit breaker, and whether it is draining (no new requests; it leaves its set when idle)."""

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
    draining: bool = False
