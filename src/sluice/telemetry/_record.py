from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass(slots=True)
class RequestRecord:
    """What happened to one request, filled in as it moves through the pipeline, then logged and counted."""

    request_id: str
    method: str
    route: str
    started_s: float
    at: float | None = None  # Unix time it arrived (the planner replays an access log by it)
    status: int = 0
    reason: str | None = None
    key_id: str | None = None
    user: str | None = None
    tenant: str | None = None
    tier: str | None = None
    model: str | None = None
    replica: str | None = None
    stream: bool = False
    cache: str | None = None  # "hit" or "miss", for a cacheable request
    queue_wait_s: float | None = None
    ttft_s: float | None = None
    ttft_slo_s: float | None = None  # its tier's TTFT target, when it has one (goodput counts those met)
    shadow: str | None = None  # what shadow limits would have refused it for (never enforced)
    over_budget: str | None = None  # admitted over its token budget by its tier's policy: clamp, cut or tag
    preempted: int | None = None  # times the gate stopped it for a more important request (its stream resumed)
    prompt_estimate: int | None = None  # prompt tokens priced at admission (what the quota reserved)
    max_tokens: int | None = None  # output tokens reserved at admission
    tokens_in: int | None = None
    tokens_out: int | None = None
    duration_s: float | None = None

    def as_log(self) -> dict[str, Any]:
        return {name: v for name in _LOGGED if (v := getattr(self, name)) is not None}


_LOGGED = tuple(f.name for f in fields(RequestRecord) if f.name != "started_s")
