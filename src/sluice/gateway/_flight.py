"""One request from admission to its end: what it holds (a quota reservation, a place in the pool's window), what
its place lets it do at the gate, and the one place that gives it all back, whatever way the request ends."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sluice.admission import Outcome, Permit
from sluice.engines import Replica, UpstreamResponse
from sluice.errors import EngineUnavailableError
from sluice.gateway._route import ModelRoute
from sluice.quota import Pricer, QuotaLimiter, Reservation
from sluice.telemetry import RequestRecord, UsageLedger

NOTHING_RAN = {"prompt_tokens": 0, "completion_tokens": 0}


@dataclass(frozen=True, slots=True)
class Settlement:
    """Where a finished request's accounts go: the pricer learns the real prompt size, the usage ledger records
    what was used, the quota limiter reconciles the reservation (its store sends it with its next call, and before
    it closes)."""

    pricer: Pricer
    usage: UsageLedger
    limiter: QuotaLimiter


@dataclass(slots=True)
class Flight:
    settlement: Settlement
    route: ModelRoute
    record: RequestRecord
    reservation: Reservation
    permit: Permit | None = None
    finished: bool = field(default=False)

    @property
    def stopped(self) -> bool:
        """Whether the gate stopped this request (preempted it for a more important one)."""
        return self.permit is not None and self.permit.stopped

    async def post(self, path: str, body: bytes, *, affinity: str | None = None,
                   prefer: Replica | None = None) -> UpstreamResponse:
        """Send the request (or the rest of it) to the route's pool."""
        headers = {"content-type": "application/json", "x-request-id": self.record.request_id}
        return await self.route.pool.post(path, body, headers, affinity=affinity, prefer=prefer)

    def arm(self, stop: Callable[[], object]) -> None:
        """Let the gate preempt this request: ``stop`` ends its upstream request."""
        if self.permit is not None and self.route.gate is not None:
            self.route.gate.arm(self.permit, stop)

    def disarm(self) -> None:
        """The gate may no longer preempt this request."""
        if self.permit is not None and self.route.gate is not None:
            self.route.gate.disarm(self.permit)

    async def resume(self, *, extra_prompt_tokens: int, deadline_s: float) -> None:
        """Give back the place of a request the gate stopped and wait for a place for the rest of it."""
        assert self.permit is not None and self.route.gate is not None
        self.permit = await self.route.gate.resume(self.permit, extra_prompt_tokens=extra_prompt_tokens,
                                                   deadline_s=deadline_s)

    def finish(self, usage: Any, outcome: Outcome) -> None:
        """Record the usage, give the window place back (teaching the window algorithm), and reconcile the quota
        reservation, all without waiting (so it happens even while the request's task is being cancelled).
        ``usage`` None means unknown (the reservation is kept whole)."""
        if self.finished:
            return
        self.finished = True
        reservation, record, settlement = self.reservation, self.record, self.settlement
        prompt: int | None = None
        completion = reservation.price.max_output_tokens
        if isinstance(usage, dict):
            prompt = usage.get("prompt_tokens")
            completion = int(usage.get("completion_tokens") or 0)
            if isinstance(prompt, int) and prompt > 0:
                settlement.pricer.observe(self.route.name, reservation.price, prompt)
        record.tokens_in = prompt if prompt is not None else reservation.price.prompt_tokens
        record.tokens_out = completion
        if usage is not NOTHING_RAN and record.key_id is not None:
            settlement.usage.add(record.key_id, record.user or record.key_id, record.tenant or "default",
                                 record.tokens_in, completion)
        if self.permit is not None and self.route.gate is not None:
            latency = None
            if record.ttft_s is not None:
                latency = max(0.0, record.ttft_s - (record.queue_wait_s or 0.0))
            self.route.gate.release(self.permit, outcome, latency, completion)
        if reservation.buckets or reservation.leases:
            settlement.limiter.settle_soon(reservation, prompt, completion)


def outcome_of(exc: BaseException) -> Outcome:
    """What a failure says about the engines: an overloaded, failing or silent engine is a drop; anything else
    (a client error, a client gone) says nothing about them."""
    if isinstance(exc, (EngineUnavailableError, asyncio.TimeoutError)):
        return Outcome.DROPPED
    return Outcome.IGNORED
