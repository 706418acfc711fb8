"""Metrics counted per request in plain numbers, handed to the Prometheus objects when they are read.

A Prometheus child's ``inc``/``observe`` takes a lock and walks a few calls (a histogram also loops over its
buckets); a request updates a dozen of them. A tally adds to plain numbers instead, and marks itself pending;
``Tallies`` is a collector registered on the registry before every metric, so that any read of the registry
(``generate_latest`` for /metrics, ``get_sample_value`` in tests) first hands every pending tally to its child:
the exposition is the same, to the sample, as if each request had updated the children itself.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from prometheus_client import Counter, Histogram
from prometheus_client.metrics_core import Metric


class Tallies:
    """The pending tallies of one registry (a collector that yields nothing: it only publishes)."""

    def __init__(self) -> None:
        self.pending: list[_Tally] = []

    def of(self, metric: Any, child: Any) -> Any:
        """The tally in front of ``child`` (a labelled child of ``metric``); a gauge's ``set`` is not deferred:
        its child itself, except for a gauge that only moves by ``inc``/``dec`` (``GaugeTally`` by request)."""
        if isinstance(metric, Counter):
            return CounterTally(self, child)
        if isinstance(metric, Histogram):
            return HistogramTally(self, child)
        return child

    def gauge(self, child: Any) -> GaugeTally:
        return GaugeTally(self, child)

    def publish(self) -> None:
        pending, self.pending = self.pending, []
        for tally in pending:
            tally.publish()

    def collect(self) -> Iterator[Metric]:
        self.publish()
        return iter(())

    def describe(self) -> Iterator[Metric]:
        return iter(())


class _Tally:
    __slots__ = ("_child", "_owner", "_queued")

    def __init__(self, owner: Tallies, child: Any) -> None:
        self._owner = owner
        self._child = child
        self._queued = False

    def _mark(self) -> None:
        if not self._queued:
            self._queued = True
            self._owner.pending.append(self)

    def publish(self) -> None:
        self._queued = False


class CounterTally(_Tally):
    __slots__ = ("_amount",)

    def __init__(self, owner: Tallies, child: Any) -> None:
        super().__init__(owner, child)
        self._amount = 0.0

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self._amount += amount
        self._mark()

    def publish(self) -> None:
        super().publish()
        amount, self._amount = self._amount, 0.0
        if amount:
            self._child.inc(amount)


class GaugeTally(_Tally):
    """A gauge moved only by ``inc``/``dec`` (requests in flight)."""

    __slots__ = ("_delta",)

    def __init__(self, owner: Tallies, child: Any) -> None:
        super().__init__(owner, child)
        self._delta = 0.0

    def inc(self, amount: float = 1) -> None:
        self._delta += amount
        self._mark()

    def dec(self, amount: float = 1) -> None:
        self._delta -= amount
        self._mark()

    def publish(self) -> None:
        super().publish()
        delta, self._delta = self._delta, 0.0
        if delta:
            self._child.inc(delta)


class HistogramTally(_Tally):
    """Observations counted per bucket as ``Histogram.observe`` counts them (the first bound ``>=`` the value)."""

    __slots__ = ("_bounds", "_counts", "_sum")

    def __init__(self, owner: Tallies, child: Any) -> None:
        super().__init__(owner, child)
        self._bounds: list[float] = list(child._upper_bounds)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0

    def observe(self, amount: float) -> None:
        self._sum += amount
        i = bisect_left(self._bounds, amount)
        if i < len(self._bounds) and amount <= self._bounds[i]:  # NaN falls in no bucket, as in Histogram
            self._counts[i] += 1
        self._mark()

    def publish(self) -> None:
        super().publish()
        child = self._child
        child._sum.inc(self._sum)  # Histogram keeps its own sum and per-bucket counts in these values
        for i, n in enumerate(self._counts):
            if n:
                child._buckets[i].inc(n)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
