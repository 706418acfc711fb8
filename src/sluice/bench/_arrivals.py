"""When requests arrive: Poisson, constant and burst processes, as gaps drawn from an injected RNG.

A process is the gaps between arrivals: the k-th arrival is at the sum of the first k gaps, counted from the
start of the run (so the first waits one gap, as in a Poisson process started at 0 and in vLLM's benchmark), and
a run's schedule depends only on the process and the seed. ``rate_per_s = inf`` sends every request at once.

    poisson   exponential gaps with mean 1/rate (the arrivals of many independent users)
    constant  gaps of exactly 1/rate
    burst     a gap of burst_size/rate, then ``burst_size`` requests at once: the same mean rate, in clumps
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol


class ArrivalProcess(Protocol):
    @property
    def rate_per_s(self) -> float: ...

    def gaps(self, rng: random.Random) -> Iterator[float]:
        """Seconds before each arrival since the one before (the first: since the start), without end."""
        ...


@dataclass(frozen=True)
class Poisson:
    rate_per_s: float

    def gaps(self, rng: random.Random) -> Iterator[float]:
        while True:
            yield 0.0 if math.isinf(self.rate_per_s) else rng.expovariate(self.rate_per_s)


@dataclass(frozen=True)
class Constant:
    rate_per_s: float

    def gaps(self, rng: random.Random) -> Iterator[float]:
        gap = 1.0 / self.rate_per_s
        while True:
            yield gap


@dataclass(frozen=True)
class Burst:
    rate_per_s: float
    burst_size: int

    def gaps(self, rng: random.Random) -> Iterator[float]:
        gap = self.burst_size / self.rate_per_s
        while True:
            yield gap
            for _ in range(self.burst_size - 1):
                yield 0.0


def make_arrivals(kind: str, rate_per_s: float, *, burst_size: int = 10) -> ArrivalProcess:
    if not rate_per_s > 0:
        raise ValueError(f"the arrival rate must be > 0, not {rate_per_s}")
    if kind == "poisson":
        return Poisson(rate_per_s)
    if kind == "constant":
        return Constant(rate_per_s)
    if kind == "burst":
        if burst_size < 1:
            raise ValueError("burst size must be >= 1")
        return Burst(rate_per_s, burst_size)
    raise ValueError(f"unknown arrival process {kind!r}: poisson, constant or burst")


def fitted_gaps(process: ArrivalProcess, rng: random.Random, count: int) -> list[float]:
    """The first ``count`` gaps, rescaled so that the last arrival is at exactly count/rate (vLLM's benchmark does
    this). For a Poisson process that is the process conditioned on its span: the arrival times are then distributed
    as sorted uniform draws over [0, count/rate]. It takes the schedule's random span (sd about 1/sqrt(count) of it)
    out of the measured throughput."""
    gaps = [gap for gap, _ in zip(process.gaps(rng), range(count), strict=False)]
    total = sum(gaps)
    if total <= 0 or math.isinf(process.rate_per_s):
        return gaps
    scale = count / process.rate_per_s / total
    return [gap * scale for gap in gaps]


def arrival_times(process: ArrivalProcess, rng: random.Random, *, count: int | None = None,
                  horizon_s: float | None = None) -> list[float]:
    """Arrival offsets in seconds from the start: the first ``count`` of them, or all before ``horizon_s``."""
    if count is None and horizon_s is None:
        raise ValueError("give a count, a horizon, or both")
    times: list[float] = []
    t = 0.0
    for gap in process.gaps(rng):
        if count is not None and len(times) >= count:
            break
        t += gap
        if horizon_s is not None and t >= horizon_s:
            break
        times.append(t)
    return times
