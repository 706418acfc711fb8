"""One model as the gateway serves it: its engine pool and the gate, rules and conventions in front of it."""

from __future__ import annotations

from dataclasses import dataclass

from sluice.admission import Gate
from sluice.engines import EnginePool
from sluice.engines.dialects import PriorityConvention


@dataclass(frozen=True, slots=True)
class ModelRoute:
    name: str  # what clients call it
    served_name: str  # what the engine calls it
    pool: EnginePool
    max_model_len: int | None = None
    gate: Gate | None = None  # admission in front of the pool
    tighten_factor: float = 1.0  # lower tiers' rate limits under protection mode
    priority: PriorityConvention | None = None  # how the engine takes priorities, when it schedules by them
    affinity: bool = False  # route by the conversation's prefix (prefix_affinity)
    cache_ttl_s: float | None = None  # answers of deterministic requests are cached this long (None: no cache)
    resumes_preempted: bool = False  # the gate preempts, and streams stopped for it are resumed (gateway/_resume.py)

    def tighten_for(self, priority: int) -> float:
        gate = self.gate
        protected = gate is not None and gate.protection is not None and gate.protection.engaged
        if protected and gate is not None and priority < gate.top_priority:
            return self.tighten_factor
        return 1.0

    def rename(self, body: bytes) -> bytes:
        """Give answers the client's name for the model, where the engine calls it something else. Engines write
        compact JSON (``"model":"x"``), so a byte replacement does it without parsing every chunk."""
        if self.served_name == self.name:
            return body
        return body.replace(b'"model":"%s"' % self.served_name.encode(), b'"model":"%s"' % self.name.encode())
