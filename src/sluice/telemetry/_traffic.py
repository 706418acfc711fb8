"""The last minutes of traffic, per second, for the console: requests, tokens, and refusals (429, 503) by reason
for each tier and tenant, plus the last refusals with their request ids.

Fed by ``GatewayMetrics.request_done`` on the inference routes (a dict lookup and a few additions per request);
read by the console's snapshot. Times are the records' own (the gateway's injected clock), so the reader passes
``now_s`` from the same clock. Bounded: ``span_s`` seconds, ``max_groups`` (tier, tenant) pairs a second (the rest
count as tenant "other"), ``max_refusals`` refusals.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from sluice.telemetry._record import RequestRecord

RATE_WINDOW_S = 10  # per-group rates are averaged over this many seconds
_NOTHING = (0, 0, 0, 0)


def met_ttft_slo(record: RequestRecord) -> bool | None:
    """Whether a request was answered in full, its first token within its tier's TTFT target (goodput); None
    without a target. A whole (non-streamed) answer's first token comes with the rest: its TTFT is its duration.
    A refusal, a failure or an answer cut short (a reason set: client gone, engine failed) never meets it."""
    if record.ttft_slo_s is None:
        return None
    ttft_s = record.ttft_s if record.stream else record.duration_s
    return (200 <= record.status < 300 and record.reason is None and ttft_s is not None
            and ttft_s <= record.ttft_slo_s)


@dataclass(slots=True)
class _Counts:
    requests: int = 0
    tokens: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # "429 quota_tokens" -> count
    good: int = 0  # answered within the tier's TTFT target (goodput)

    def add(self, record: RequestRecord) -> None:
        self.requests += 1
        self.good += met_ttft_slo(record) is True
        self.tokens += (record.tokens_in or 0) + (record.tokens_out or 0)
        if record.status in (429, 503):
            key = f"{record.status} {record.reason or 'unknown'}"
            self.refused[key] = self.refused.get(key, 0) + 1


Group = tuple[str, str]  # (tier, tenant)


class TrafficWindow:
    def __init__(self, *, span_s: int = 300, max_groups: int = 200, max_refusals: int = 50) -> None:
        self.span_s = span_s
        self._max_groups = max_groups
        self._seconds: dict[int, dict[Group, _Counts]] = {}  # in insertion order, oldest first
        self._totals: dict[int, list[int]] = {}  # second -> [requests, tokens, 429s, 503s]: the charts' series
        self._refusals: deque[dict[str, Any]] = deque(maxlen=max_refusals)

    def record(self, record: RequestRecord) -> None:
        """Count one finished request in the second it ended."""
        ended_s = record.started_s + (record.duration_s or 0.0)
        second = int(ended_s)
        groups = self._seconds.get(second)
        if groups is None:
            groups = self._seconds[second] = {}
            self._totals[second] = [0, 0, 0, 0]
            self._forget_before(second - self.span_s)
        totals = self._totals[second]
        totals[0] += 1
        totals[1] += (record.tokens_in or 0) + (record.tokens_out or 0)
        if record.status == 429:
            totals[2] += 1
        elif record.status == 503:
            totals[3] += 1
        group = (record.tier or "", record.tenant or "")
        counts = groups.get(group)
        if counts is None:
            if len(groups) >= self._max_groups:
                group = (group[0], "other")
            counts = groups.setdefault(group, _Counts())
        counts.add(record)
        if record.status in (429, 503):
            self._refusals.append({"request_id": record.request_id, "status": record.status,
                                   "reason": record.reason, "key_id": record.key_id, "tenant": record.tenant,
                                   "tier": record.tier, "model": record.model, "at_s": ended_s})

    def view(self, now_s: float) -> dict[str, Any]:
        """The last ``span_s`` seconds as totals per second (oldest first), each group's rates over the last
        ``RATE_WINDOW_S`` seconds, and the last refusals (newest first)."""
        last = int(now_s)
        series = []
        for second in range(last - self.span_s + 1, last + 1):
            requests, tokens, refused_429, refused_503 = self._totals.get(second, _NOTHING)
            series.append({"ago_s": last - second, "requests": requests, "tokens": tokens,
                           "refused_429": refused_429, "refused_503": refused_503})
        return {"span_s": self.span_s, "series": series, "groups": self._group_rates(last),
                "refusals": [{**{k: v for k, v in r.items() if k != "at_s"}, "ago_s": round(now_s - r["at_s"], 3)}
                             for r in reversed(self._refusals)]}

    def spent(self, now_s: float, window_s: int) -> dict[Group, tuple[int, int]]:
        """Per (tier, tenant): (requests answered and not refused, tokens) over the last ``window_s`` seconds (at
        most ``span_s``)."""
        last = int(now_s)
        spent: dict[Group, list[int]] = {}
        for second in range(last - min(window_s, self.span_s) + 1, last + 1):
            for group, counts in self._seconds.get(second, {}).items():
                into = spent.setdefault(group, [0, 0])
                into[0] += counts.requests - sum(counts.refused.values())
                into[1] += counts.tokens
        return {group: (requests, tokens) for group, (requests, tokens) in spent.items()}

    def _group_rates(self, last: int) -> list[dict[str, Any]]:
        merged: dict[Group, _Counts] = {}
        for second in range(last - RATE_WINDOW_S + 1, last + 1):
            for group, counts in self._seconds.get(second, {}).items():
                into = merged.setdefault(group, _Counts())
                into.requests += counts.requests
                into.tokens += counts.tokens
                into.good += counts.good
                for key, n in counts.refused.items():
                    into.refused[key] = into.refused.get(key, 0) + n
        return [{"tier": tier, "tenant": tenant, "requests_per_s": c.requests / RATE_WINDOW_S,
                 "tokens_per_s": c.tokens / RATE_WINDOW_S, "goodput_per_s": c.good / RATE_WINDOW_S,
                 "refused": dict(sorted(c.refused.items()))}
                for (tier, tenant), c in sorted(merged.items())]

    def _forget_before(self, oldest: int) -> None:
        while self._seconds:
            first = next(iter(self._seconds))
            if first >= oldest:
                return
            del self._seconds[first]
            del self._totals[first]

