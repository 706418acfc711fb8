"""How many requests a pool may have in flight: the limit algorithms, apart from the gate that applies them.

As in Netflix's concurrency-limits, ``Limit.update(sample)`` learns from every settled request: its latency
(time to first token: the part that grows when the engine queues) and its outcome. ``FixedLimit`` never moves;
``AIMDLimit`` adds one on success and backs off on drops or slow answers; ``GradientLimit`` follows the ratio of
the long-run latency to the recent one (Gradient2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from sluice.admission._ticket import Outcome
from sluice.clock import Clock


@dataclass(frozen=True, slots=True)
class Sample:
    latency_s: float | None  # time to first token, when the request got that far
    in_flight: int  # requests in flight when it was admitted
    outcome: Outcome


class Limit(Protocol):
    @property
    def value(self) -> int: ...

    def update(self, sample: Sample) -> None: ...


class FixedLimit:
    def __init__(self, value: int) -> None:
        self._value = value

    @property
    def value(self) -> int:
        return self._value

    def update(self, sample: Sample) -> None:
        return None


class AIMDLimit:
    def __init__(self, clock: Clock, *, initial: int, minimum: int, maximum: int, backoff: float = 0.9,
                 latency_threshold_s: float | None = None, cooldown_s: float = 1.0) -> None:
        self._clock = clock
        self._value = float(initial)
        self._min, self._max = minimum, maximum
        self._backoff = backoff
        self._threshold = latency_threshold_s
        self._cooldown_s = cooldown_s
        self._last_decrease = -math.inf

    @property
    def value(self) -> int:
        return int(self._value)

    def update(self, sample: Sample) -> None:
        if sample.outcome is Outcome.IGNORED:
            return
        slow = self._threshold is not None and sample.latency_s is not None and sample.latency_s > self._threshold
        if sample.outcome is Outcome.DROPPED or slow:
            now = self._clock.now()
            if now - self._last_decrease >= self._cooldown_s:  # one decrease per cooldown, not one per drop
                self._value = max(self._min, math.floor(self._value * self._backoff))
                self._last_decrease = now
        elif sample.in_flight * 2 >= self._value:  # only grow when the limit is what holds traffic back
            self._value = min(self._max, self._value + 1)


class GradientLimit:
    def __init__(self, *, initial: int, minimum: int, maximum: int, tolerance: float = 1.5,
                 smoothing: float = 0.2, long_window: int = 600, short_window: int = 10,
                 latency_slack_s: float = 0.05) -> None:
        self._value = float(initial)
        self._min, self._max = minimum, maximum
        self._tolerance = tolerance
        self._smoothing = smoothing
        self._slack_s = latency_slack_s  # an absolute allowance: jitter on a 20 ms first token is not queueing
        self._long: float | None = None
        self._short: float | None = None
        self._long_alpha = 2 / (long_window + 1)
        self._short_alpha = 2 / (short_window + 1)

    @property
    def value(self) -> int:
        return int(self._value)

    def update(self, sample: Sample) -> None:
        if sample.outcome is Outcome.IGNORED:
            return
        if sample.outcome is Outcome.DROPPED:
            self._value = max(self._min, self._value * 0.9)
            return
        if sample.latency_s is None or sample.latency_s <= 0:
            return
        rtt = sample.latency_s
        self._short = rtt if self._short is None else self._short + self._short_alpha * (rtt - self._short)
        self._long = rtt if self._long is None else self._long + self._long_alpha * (rtt - self._long)
        if self._long / self._short > 2:  # the long view lags a recovery: let it catch up
            self._long *= 0.95
        if sample.in_flight < self._value / 2:
            return  # not limited by the window: the sample says nothing about it
        gradient = max(0.5, min(1.0, (self._tolerance * self._long + self._slack_s) / self._short))
        target = self._value * gradient + math.sqrt(self._value)
        self._value = min(self._max, max(self._min, (1 - self._smoothing) * self._value + self._smoothing * target))
