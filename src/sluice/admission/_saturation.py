"""How full the engines are, from their own metrics: the sense half of the protection loop.

A replica's saturation is ``max(waiting / queue_threshold, kv_usage / kv_threshold)``, as llm-d's saturation
detector computes it: 1.0 is "at the threshold". A reading older than ``stale_after_s`` (or none at all) counts
as saturated: flying blind is not a reason to send more. The pool's saturation is its least saturated replica's,
since a request can be routed there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sluice.clock import Clock

STALE = math.inf


@dataclass(frozen=True, slots=True)
class LoadReading:
    running: float
    waiting: float
    kv_usage: float  # 0..1
    read_at_s: float


ReadingsSource = Callable[[], Sequence[LoadReading | None]]  # one per replica; None when never read


class SaturationDetector:
    def __init__(self, readings: ReadingsSource, clock: Clock, *, queue_threshold: float = 5.0,
                 kv_threshold: float = 0.8, stale_after_s: float = 1.0, kv_capacity_tokens: int | None = None) -> None:
        self._readings = readings
        self._clock = clock
        self._queue_threshold = queue_threshold
        self._kv_threshold = kv_threshold
        self.stale_after_s = stale_after_s  # older readings are not trusted
        self.kv_capacity_tokens = kv_capacity_tokens  # per replica, when known

    def replica_saturation(self, reading: LoadReading | None) -> float:
        if reading is None or self._clock.now() - reading.read_at_s > self.stale_after_s:
            return STALE
        return max(reading.waiting / self._queue_threshold, reading.kv_usage / self._kv_threshold)

    def saturation(self) -> float:
        return min((self.replica_saturation(r) for r in self._readings()), default=STALE)

    def free_kv_tokens(self) -> tuple[float, float] | None:
        """(free KV tokens across fresh replicas, the oldest reading time they come from), or None if unknown."""
        if self.kv_capacity_tokens is None:
            return None
        now = self._clock.now()
        fresh = [r for r in self._readings() if r is not None and now - r.read_at_s <= self.stale_after_s]
        if not fresh:
            return None
        free = sum(max(0.0, 1.0 - r.kv_usage) * self.kv_capacity_tokens for r in fresh)
        return free, min(r.read_at_s for r in fresh)
