"""How many requests a pool may have in flight: the limit algorithms, apart from the gate that applies them.

As in Netflix's concurrency-limits, ``Limit.update(sample)`` learns from every settled request: its latency
(time to first token: the part that grows when the engine queues) and its outcome. ``FixedLimit`` never moves;
``AIMDLimit`` adds one on success and backs off on drops or slow answers; ``GradientLimit`` follows the ratio of
the long-run latency to the recent one (Gradient2), once per sampling window (as concurrency-limits wraps it in a
``WindowedLimit``: moved per sample, it overshoots the engine's seats and collapses in turn). Neither adaptive limit
grows while the engines say they are saturated (their own queues are full): growing then only moves the queue from
the gateway, where priorities and fair shares hold, into the engine, where they do not; the gradient shrinks then.
``PerReplicaLimit`` applies a limit learnt per replica to a pool whose replicas come and go.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from sluice.admission._ticket import Outcome
from sluice.clock import Clock


@dataclass(slots=True)  # made per request: not frozen (a frozen __init__ costs 3x), never changed
class Sample:
    latency_s: float | None  # time to first token, when the request got that far
    in_flight: int  # requests in flight when it was admitted
    outcome: Outcome
    saturated: bool = False  # the engines reported saturation when it ended


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
        elif sample.in_flight * 2 >= self._value and not sample.saturated:  # grow only when the limit holds back
            self._value = min(self._max, self._value + 1)


SATURATED_GRADIENT = 0.75


class GradientLimit:
    """Gradient2, windowed: each window of at least ``window_s`` and ``window_samples`` samples (taken while the
    window was what held traffic back) gives one latency, the window's mean; the limit then moves once, toward
    ``limit × gradient + sqrt(limit)`` where gradient = (tolerance × long-run latency + slack) ÷ the window's,
    clamped to [0.5, 1], and at most 0.75 in a window during which the engines reported saturation (their queue is
    where the excess waits, out of the gateway's priorities; first-token latency grows only once it is long). Drops
    shrink the limit by a tenth, once per window."""

    def __init__(self, clock: Clock, *, initial: int, minimum: int, maximum: int, tolerance: float = 1.5,
                 smoothing: float = 0.2, long_window: int = 60, window_s: float = 0.5, window_samples: int = 10,
                 latency_slack_s: float = 0.05) -> None:
        self._clock = clock
        self._value = float(initial)
        self._min, self._max = minimum, maximum
        self._tolerance = tolerance
        self._smoothing = smoothing
        self._slack_s = latency_slack_s  # an absolute allowance: jitter on a 20 ms first token is not queueing
        self._long: float | None = None
        self._long_alpha = 2 / (long_window + 1)  # in windows
        self._window_s, self._window_samples = window_s, window_samples
        self._started = clock.now()
        self._sum, self._count = 0.0, 0
        self._dropped = self._saturated = False

    @property
    def value(self) -> int:
        return int(self._value)

    def update(self, sample: Sample) -> None:
        if sample.outcome is Outcome.IGNORED:
            return
        self._saturated |= sample.saturated
        if sample.outcome is Outcome.DROPPED:
            self._dropped = True
        elif sample.latency_s is not None and sample.latency_s > 0 and sample.in_flight * 2 >= self._value:
            self._sum += sample.latency_s
            self._count += 1
        now = self._clock.now()
        if now - self._started >= self._window_s and (self._count >= self._window_samples or self._dropped):
            self._close_window()
            self._started = now

    def _close_window(self) -> None:
        if self._dropped:
            self._value = max(self._min, self._value * 0.9)
        elif self._count:
            latency = self._sum / self._count
            self._long = latency if self._long is None else self._long + self._long_alpha * (latency - self._long)
            if self._long / latency > 2:  # the long view lags a recovery: let it catch up
                self._long *= 0.95
            gradient = max(0.5, min(1.0, (self._tolerance * self._long + self._slack_s) / latency))
            if self._saturated:  # the engines queue: shrink, whatever the latency says so far
                gradient = min(gradient, SATURATED_GRADIENT)
            target = self._value * gradient + (0.0 if self._saturated else math.sqrt(self._value))
            self._value = min(self._max, max(self._min, (1 - self._smoothing) * self._value + self._smoothing * target))
        self._sum, self._count = 0.0, 0
        self._dropped = self._saturated = False


class PerReplicaLimit:
    """A limit learnt per replica and applied to the pool: ``inner`` (in one replica's units) times the replicas that
    take requests now, within [minimum, maximum]. A replica added widens the window at once; one that drains
    narrows it. Samples reach ``inner`` in its own units (in flight per replica)."""

    def __init__(self, inner: Limit, replicas: Callable[[], int], *, minimum: int, maximum: int) -> None:
        self.inner = inner
        self._replicas = replicas
        self._min, self._max = minimum, maximum

    @property
    def value(self) -> int:
        return min(self._max, max(self._min, self.inner.value * max(1, self._replicas())))

    def update(self, sample: Sample) -> None:
        replicas = max(1, self._replicas())
        self.inner.update(replace(sample, in_flight=math.ceil(sample.in_flight / replicas)))
