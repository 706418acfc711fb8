"""One request from admission to its end: what it holds (a quota reservation, a place in the pool's window) and
the one place that gives it all back, whatever way the request ends."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sluice.admission import Outcome, Permit
from sluice.errors import EngineUnavailableError
from sluice.quota import Reservation
from sluice.telemetry import RequestRecord

if TYPE_CHECKING:
    from sluice.gateway.service import GatewayService, ModelRoute

NOTHING_RAN = {"prompt_tokens": 0, "completion_tokens": 0}


@dataclass(slots=True)
class Flight:
    service: GatewayService
    route: ModelRoute
    record: RequestRecord
    reservation: Reservation
    permit: Permit | None = None
    finished: bool = field(default=False)

    def finish(self, usage: Any, outcome: Outcome) -> None:
        """Record the usage, give the window place back (teaching the window algorithm), and reconcile the quota
        reservation in a task of its own: it must happen even while the request's task is being cancelled.
        ``usage`` None means unknown (the reservation is kept whole)."""
        if self.finished:
            return
        self.finished = True
        reservation, record = self.reservation, self.record
        prompt: int | None = None
        completion = reservation.price.max_output_tokens
        if isinstance(usage, dict):
            prompt = usage.get("prompt_tokens")
            completion = int(usage.get("completion_tokens") or 0)
            if isinstance(prompt, int) and prompt > 0:
                self.service.pricer.observe(self.route.name, reservation.price, prompt)
        record.tokens_in = prompt if prompt is not None else reservation.price.prompt_tokens
        record.tokens_out = completion
        if usage is not NOTHING_RAN and record.key_id is not None:
            self.service.usage.add(record.key_id, record.user or record.key_id, record.tenant or "default",
                                   record.tokens_in, completion)
        if self.permit is not None and self.route.gate is not None:
            latency = None
            if record.ttft_s is not None:
                latency = max(0.0, record.ttft_s - (record.queue_wait_s or 0.0))
            self.route.gate.release(self.permit, outcome, latency, completion)
        if reservation.buckets or reservation.leases:
            self.service.spawn(self.service.limiter.settle(reservation, prompt, completion))


def outcome_of(exc: BaseException) -> Outcome:
    """What a failure says about the engines: an overloaded, failing or silent engine is a drop; anything else
    (a client error, a client gone) says nothing about them."""
    if isinstance(exc, EngineUnavailableError) or isinstance(exc, asyncio.TimeoutError):
        return Outcome.DROPPED
    return Outcome.IGNORED
