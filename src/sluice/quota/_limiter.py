"""The quota step: reserve what a request may cost before it runs, settle what it really cost after.

Tokens are charged the OpenAI way: ``prompt + max_tokens`` are reserved at admission, and when the request
ends the difference to the engine's ``usage`` is refunded (or charged). A request that would fit within its
tier's ``max_wait_s`` waits for the bucket to refill instead of being refused.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Protocol

from sluice.clock import Clock
from sluice.identity import Principal
from sluice.ids import IdSource
from sluice.quota._headers import ratelimit_headers, refusal
from sluice.quota._model import Bucket, Lease
from sluice.quota._policy import QuotaPolicy
from sluice.quota._pricing import Price
from sluice.quota._store import QuotaStore

log = logging.getLogger("sluice.quota")


class QuotaObserver(Protocol):
    def quota_waiting(self, delta: int) -> None: ...

    def quota_waited(self, seconds: float) -> None: ...


@dataclass(slots=True)
class Reservation:
    """What one admitted request holds: its charges and permits, until ``QuotaLimiter.settle``."""

    rid: str
    buckets: tuple[Bucket, ...]
    leases: tuple[Lease, ...]
    price: Price
    headers: dict[str, str] = field(default_factory=dict)
    settled: bool = False


class QuotaLimiter:
    def __init__(self, policy: QuotaPolicy, store: QuotaStore, clock: Clock,
                 observer: QuotaObserver | None = None) -> None:
        self.policy = policy  # replaced whole on a configuration reload; state lives in the store
        self.store = store
        self._clock = clock
        self._observer = observer
        self._held: dict[str, Reservation] = {}
        self._renewer: asyncio.Task[None] | None = None
        self._ids = IdSource()

    async def reserve(self, principal: Principal, model: str, price: Price, tighten: float = 1.0) -> Reservation:
        """Charge every applicable limit at once, waiting up to the tier's ``max_wait_s``; raise 429 otherwise.
        ``tighten`` < 1 scales the caller's tier rates down (protection mode)."""
        plan = self.policy.plan(principal, model, price, tighten)
        rid = self._ids.next()
        if not plan.buckets and not plan.leases:
            return Reservation(rid, (), (), price)
        deadline = self._clock.now() + self.policy.max_wait_s(principal)
        waited_s = 0.0
        while True:
            decision = await self.store.acquire(plan.buckets, plan.leases, rid)
            if decision.allowed:
                if waited_s and self._observer:
                    self._observer.quota_waited(waited_s)
                reservation = Reservation(rid, plan.buckets, plan.leases, price,
                                          ratelimit_headers(plan.buckets, decision.states))
                if plan.leases:
                    self._held[rid] = reservation
                    self._start_renewer()
                return reservation
            now = self._clock.now()
            if decision.never or now + decision.retry_after_s > deadline:
                raise refusal(plan.buckets, plan.leases, decision)
            pause = min(decision.retry_after_s, deadline - now)
            await self._wait(pause)
            waited_s += pause
            rid = self._ids.next()  # one decision, one id (a store fences each operation by it)

    async def settle(self, reservation: Reservation, prompt_tokens: int | None, completion_tokens: int) -> None:
        """Reconcile the reservation with what was used, and give back its permits. Safe to call twice."""
        if reservation.settled:
            return
        reservation.settled = True
        self._held.pop(reservation.rid, None)
        price = reservation.price
        used_in = price.prompt_tokens if prompt_tokens is None else prompt_tokens
        deltas = [_delta(b, price, used_in, completion_tokens) for b in reservation.buckets]
        if any(deltas) or reservation.leases:
            await self.store.settle(reservation.buckets, deltas, reservation.leases, reservation.rid)

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            self._renewer = None

    async def _wait(self, seconds: float) -> None:
        if self._observer:
            self._observer.quota_waiting(+1)
        try:
            await self._clock.sleep(seconds)
        finally:
            if self._observer:
                self._observer.quota_waiting(-1)

    def _start_renewer(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew_forever())

    async def _renew_forever(self) -> None:
        """Keep the permits of long requests alive: renew every held lease at a third of its time to live."""
        while self._held:
            await self._clock.sleep(self.policy.quota.lease_ttl_s / 3)
            for reservation in list(self._held.values()):
                try:
                    await self.store.renew(reservation.leases, reservation.rid)
                except Exception:  # noqa: BLE001 - a failed renewal must not stop the others; the lease may expire
                    log.warning("could not renew concurrency permits of %s", reservation.rid, exc_info=True)


def _delta(bucket: Bucket, price: Price, used_in: int, used_out: int) -> int:
    kind = bucket.info.kind
    if kind == "tokens":
        return used_in + used_out - price.total
    if kind == "input_tokens":
        return used_in - price.prompt_tokens
    if kind == "output_tokens":
        return used_out - price.max_output_tokens
    return 0
