"""How full the engines are, from their own metrics: the sense half of the protection loop.

A replica's saturation is the largest of three inputs, each 1.0 at its threshold:

    queue = waiting / queue_threshold
    kv    = kv_usage / kv_threshold                                   (llm-d's saturation detector: these two)
    gpu   = min(gpu_util / gpu_threshold,
                max(kv_usage / gpu_kv_threshold, preemptions_per_s / swap_threshold_per_s))

The GPU input is a fuzzy AND: it reaches 1.0 only when the GPU is busy (at ``gpu_threshold``, default 90%) AND
memory presses, i.e. the KV cache is past ``gpu_kv_threshold`` (default 0.7, below ``kv_threshold``: with no
compute to spare, less KV room is enough to hurt) or the engine preempts (swaps or recomputes) sequences at
``swap_threshold_per_s`` or more. A busy GPU alone does not count: a well-used engine runs at 90%+ (NVML's
utilisation is a duty cycle, 100% for any batch that keeps a kernel running). The seed's scenario, GPU at 90% with
the paged KV cache swapping, gives ``min(1.0, >= 1) >= 1``: protection engages.

A reading older than ``stale_after_s`` (or none at all) counts as saturated: flying blind is not a reason to send
more. A GPU reading that is missing or stale (``gpu_util`` None, or ``gpu_read_at_s`` too old) is unknown: the GPU
input is left out, never taken as saturated. The pool's saturation is its least saturated replica's, since a
request can be routed there; ``explain()`` says which input of that replica it is.
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
    gpu_util: float | None = None  # 0..1, the busiest of the replica's GPUs; None: unknown
    gpu_read_at_s: float | None = None  # when the GPU was read (None: with the rest)
    preemptions_per_s: float | None = None  # sequences preempted (swapped or recomputed) per second; None: unknown


@dataclass(frozen=True, slots=True)
class SaturationInputs:
    """A replica's three inputs (``gpu`` None: its GPU use is unknown)."""

    queue: float
    kv: float
    gpu: float | None

    @property
    def value(self) -> float:
        return max(self.queue, self.kv, self.gpu or 0.0)

    @property
    def cause(self) -> str:
        """The input that sets the value: "queue", "kv" or "gpu"."""
        terms = {"queue": self.queue, "kv": self.kv, "gpu": self.gpu or 0.0}
        return max(terms, key=lambda name: terms[name])


ReadingsSource = Callable[[], Sequence[LoadReading | None]]  # one per replica; None when never read


class SaturationDetector:
    def __init__(self, readings: ReadingsSource, clock: Clock, *, queue_threshold: float = 5.0,
                 kv_threshold: float = 0.8, stale_after_s: float = 1.0, kv_capacity_tokens: int | None = None,
                 gpu_threshold: float = 0.9, gpu_kv_threshold: float = 0.7,
                 swap_threshold_per_s: float = 1.0) -> None:
        self._readings = readings
        self._clock = clock
        self._queue_threshold = queue_threshold
        self._kv_threshold = kv_threshold
        self._gpu_threshold = gpu_threshold
        self._gpu_kv_threshold = gpu_kv_threshold
        self._swap_threshold_per_s = swap_threshold_per_s
        self.stale_after_s = stale_after_s  # older readings are not trusted
        self.kv_capacity_tokens = kv_capacity_tokens  # per replica, when known
        self.last_reading: LoadReading | None = None  # of the replica the last saturation() came from
        self.last_inputs: SaturationInputs | None = None  # its inputs; None: no fresh reading

    def inputs(self, reading: LoadReading | None) -> SaturationInputs | None:
        """A replica's inputs, or None when its reading is missing or stale."""
        now = self._clock.now()
        if reading is None or now - reading.read_at_s > self.stale_after_s:
            return None
        queue = reading.waiting / self._queue_threshold
        kv = reading.kv_usage / self._kv_threshold
        gpu = None
        gpu_read_at = reading.read_at_s if reading.gpu_read_at_s is None else reading.gpu_read_at_s
        if reading.gpu_util is not None and now - gpu_read_at <= self.stale_after_s:
            pressure = max(reading.kv_usage / self._gpu_kv_threshold,
                           (reading.preemptions_per_s or 0.0) / self._swap_threshold_per_s)
            gpu = min(reading.gpu_util / self._gpu_threshold, pressure)
        return SaturationInputs(queue, kv, gpu)

    def replica_saturation(self, reading: LoadReading | None) -> float:
        inputs = self.inputs(reading)
        return STALE if inputs is None else inputs.value

    def saturation(self) -> float:
        best: tuple[float, LoadReading | None, SaturationInputs | None] = (STALE, None, None)
        for reading in self._readings():
            inputs = self.inputs(reading)
            if inputs is not None and inputs.value < best[0]:
                best = (inputs.value, reading, inputs)
        _, self.last_reading, self.last_inputs = best
        return best[0]

    def explain(self) -> str:
        """Why the last ``saturation()`` is what it is, in words (the console and the protection log show it)."""
        inputs, reading = self.last_inputs, self.last_reading
        if inputs is None or reading is None:
            return "no fresh engine load reading: saturation unknown"
        if inputs.value == 0:
            return "nothing waiting, KV cache empty"
        if inputs.cause == "gpu":
            assert reading.gpu_util is not None
            swapping = (f", {reading.preemptions_per_s:.1f} preemptions/s"
                        if reading.preemptions_per_s else "")
            return (f"GPU {reading.gpu_util:.0%} busy with KV cache {reading.kv_usage:.0%} used{swapping}: "
                    f"GPU input {inputs.gpu:.2f}")
        if inputs.cause == "kv":
            return f"KV cache {reading.kv_usage:.0%} used: KV input {inputs.kv:.2f}"
        return f"{reading.waiting:g} requests waiting in the engine: queue input {inputs.queue:.2f}"

    def free_kv_tokens(self) -> tuple[float, float] | None:
        """(free KV tokens across fresh replicas, the oldest reading time they come from), or None if unknown."""
        if self.kv_capacity_tokens is None:
            return None
        now, capacity, stale_after_s = self._clock.now(), self.kv_capacity_tokens, self.stale_after_s
        free, oldest = 0.0, math.inf  # one loop, no intermediate lists: asked at every admission under load
        for r in self._readings():
            if r is not None and now - r.read_at_s <= stale_after_s:
                free += max(0.0, 1.0 - r.kv_usage) * capacity
                oldest = min(oldest, r.read_at_s)
        return None if oldest == math.inf else (free, oldest)
