"""The last minutes of each replica's speed as the gateway sees it, for the console: time to first token (from
dispatch, the admission wait left out) and time per output token of streamed answers, per second.

Fed by ``GatewayMetrics.request_done`` (a dict lookup and two appends per request); read by the console's snapshot.
Times are the records' own (the gateway's injected clock), so the reader passes ``now_s`` from the same clock.
Bounded: ``span_s`` seconds per replica, ``max_samples_per_s`` timings kept a second for the percentiles (sums and
counts stay exact), ``max_replicas`` replicas (one silent for ``span_s`` is forgotten first).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SUMMARY_S = 60  # the percentiles cover this many last seconds


@dataclass(slots=True)
class _Second:
    ttft_s: list[float] = field(default_factory=list)
    tpot_s: list[float] = field(default_factory=list)
    ttft_count: int = 0
    ttft_sum_s: float = 0.0


Replica = tuple[str, str]  # (model, replica URL)


class ReplicaTimings:
    def __init__(self, *, span_s: int = 300, max_samples_per_s: int = 64, max_replicas: int = 256) -> None:
        self.span_s = span_s
        self._max_samples = max_samples_per_s
        self._max_replicas = max_replicas
        self._seconds: dict[Replica, dict[int, _Second]] = {}  # per replica, seconds in insertion order

    def record(self, model: str, replica: str, ended_s: float, ttft_s: float | None, tpot_s: float | None) -> None:
        """One answer of ``replica`` that ended at ``ended_s``, with its TTFT and TPOT where known."""
        if ttft_s is None and tpot_s is None:
            return
        seconds = self._seconds.get((model, replica))
        if seconds is None:
            if len(self._seconds) >= self._max_replicas:
                self._forget_oldest()
            seconds = self._seconds[(model, replica)] = {}
        second = int(ended_s)
        bucket = seconds.get(second)
        if bucket is None:
            bucket = seconds[second] = _Second()
            _forget_before(seconds, second - self.span_s)
        if ttft_s is not None:
            bucket.ttft_count += 1
            bucket.ttft_sum_s += ttft_s
            if len(bucket.ttft_s) < self._max_samples:
                bucket.ttft_s.append(ttft_s)
        if tpot_s is not None and len(bucket.tpot_s) < self._max_samples:
            bucket.tpot_s.append(tpot_s)

    def view(self, model: str, replica: str, now_s: float) -> dict[str, Any]:
        """The last ``SUMMARY_S`` seconds' TTFT and TPOT percentiles (``None`` with no answer), and the mean TTFT of
        every second of the last ``span_s`` that had one, oldest first: ``[[ago_s, ttft_s], ...]``."""
        seconds = self._seconds.get((model, replica), {})
        last = int(now_s)
        recent = [b for s, b in seconds.items() if last - s < SUMMARY_S]
        return {
            "ttft_s": _percentiles([t for b in recent for t in b.ttft_s]),
            "tpot_s": _percentiles([t for b in recent for t in b.tpot_s]),
            "answers_last_min": sum(b.ttft_count for b in recent),
            "ttft_series": [[last - s, round(b.ttft_sum_s / b.ttft_count, 4)] for s, b in seconds.items()
                            if b.ttft_count and 0 <= last - s < self.span_s],
        }

    def _forget_oldest(self) -> None:
        stalest = min(self._seconds, key=lambda r: max(self._seconds[r], default=0))
        del self._seconds[stalest]


def _forget_before(seconds: dict[int, _Second], oldest: int) -> None:
    while seconds:
        first = next(iter(seconds))
        if first >= oldest:
            return
        del seconds[first]


def _percentiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    return {"p50": round(_at(ordered, 0.5), 4), "p95": round(_at(ordered, 0.95), 4), "count": len(ordered)}


def _at(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
