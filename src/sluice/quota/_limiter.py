"""The quota step: reserve what a request may cost before it runs, settle what it really cost after.

Tokens are charged the OpenAI way: ``prompt + max_tokens`` are reserved at admission, and when the request
ends the difference to the engine's ``usage`` is refunded (or charged). A request that would fit within its
tier's ``max_wait_s`` waits in line for the bucket to refill instead of being refused (``_wait_queue``): waiters
are served in arrival order, and one that cannot make it within its wait is refused at once, told when it would.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from sluice.clock import Clock
from sluice.errors import RateLimitError
from sluice.identity import Principal
from sluice.ids import IdSource
from sluice.quota._headers import RateLimit, refusal
from sluice.quota._model import Bucket, Decision, Lease
from sluice.quota._over_budget import BudgetAsk, OverBudget
from sluice.quota._policy import Plan, QuotaPolicy
from sluice.quota._pricing import Price
from sluice.quota._shadow import ShadowHold, ShadowObserver, ShadowQuota, ShadowWitness
from sluice.quota._store import QuotaStore, until_landed
from sluice.quota._wait_queue import WaitQueue

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
    price: Price  # what it was charged: its output clamped to what was left, when its tier's over_budget did
    ratelimit: RateLimit | None = None  # what its decision said of its limits: the answer's x-ratelimit-* headers
    headers: dict[str, str] = field(default_factory=dict)  # more headers for its answer (over-budget's)
    settled: bool = False
    over_budget: OverBudget | None = None  # the policy that admitted it though its whole price did not fit
    shadow: ShadowHold | None = None  # what it holds in shadow limits (``_shadow``), settled with it

    def header_lines(self) -> bytes:
        """Its ``x-ratelimit-*`` headers as HTTP header lines (none for a request no limit applied to)."""
        return b"" if self.ratelimit is None else self.ratelimit.lines()


class QuotaLimiter:
    def __init__(self, policy: QuotaPolicy, store: QuotaStore, clock: Clock,
                 observer: QuotaObserver | None = None, shadow_observer: ShadowObserver | None = None) -> None:
        self.policy = policy  # replaced whole on a configuration reload; state lives in the store
        self.store = store
        self._clock = clock
        self._observer = observer
        self._held: dict[str, Reservation] = {}
        self._renewer: asyncio.Task[None] | None = None
        self._ids = IdSource()
        self._line = WaitQueue(clock)
        self.shadow = ShadowQuota(store, clock, shadow_observer)

    def reserve(self, principal: Principal, model: str, price: Price, tighten: float = 1.0,
                witness: ShadowWitness | None = None) -> Coroutine[Any, Any, Reservation]:
        """The live decision (below), and alongside it the shadow one when shadow limits apply to the caller
        (``_shadow``: noted on ``witness``, the request's record, and counted; never enforced). Without one, the
        live decision's coroutine itself: a caller with no shadow limit pays nothing for them."""
        shadow = self.shadow.begin(self.policy, principal, model, price, witness)
        if shadow is None:
            return self._reserve_live(principal, model, price, tighten)
        return self._reserve_with_shadow(shadow, principal, model, price, tighten)

    async def _reserve_with_shadow(self, shadow: asyncio.Task[ShadowHold | None], principal: Principal, model: str,
                                   price: Price, tighten: float) -> Reservation:
        try:
            reservation = await self._reserve_live(principal, model, price, tighten)
        except BaseException as exc:
            self.shadow.abandon(shadow)  # nobody will settle it: once decided, its permits go back
            if isinstance(exc, RateLimitError):
                await asyncio.wait([shadow])  # its refusal, if any, is on the record before the 429 is logged
            raise
        try:
            reservation.shadow = await asyncio.shield(shadow)
        except asyncio.CancelledError:  # granted, but the caller will never have it: give both back
            self.shadow.abandon(shadow)
            self.shadow.spawn(self.settle(reservation, 0, 0))
            raise
        return reservation

    async def _reserve_live(self, principal: Principal, model: str, price: Price, tighten: float) -> Reservation:
        """Charge every applicable limit at once, or wait in line up to the tier's ``max_wait_s``; raise 429
        otherwise, at once when the request cannot make it within its wait. ``tighten`` < 1 scales the caller's
        tier rates down (protection mode). A tier with an ``over_budget`` policy asks for its floor, stretched
        (``_over_budget``)."""
        ask = BudgetAsk.of(self.policy.tiers.get(principal.tier), price)
        plan = self.policy.plan(principal, model, price if ask is None else ask.floor, tighten)
        stretch = None if ask is None else ask.stretch
        if not plan.buckets and not plan.leases:
            return Reservation(self._ids.next(), (), (), price)
        arrival = self._line.arrival()
        deadline = self._clock.now() + self.policy.max_wait_s(principal)
        first: Decision | None = None
        if not self._line.busy(plan.buckets):  # nobody waits ahead of it here: ask the store straight away
            rid = self._ids.next()
            first = await self.store.acquire(plan.buckets, plan.leases, rid, stretch)
            if first.allowed:
                return self._granted(rid, plan, price, first, ask)
            if first.never or self._clock.now() + first.retry_after_s > deadline:
                raise refusal(plan.buckets, plan.leases, first)
        return await self._wait_in_line(arrival, plan, price, deadline, first, ask)

    async def _wait_in_line(self, arrival: int, plan: Plan, price: Price, deadline: float,
                            last: Decision | None, ask: BudgetAsk | None = None) -> Reservation:
        """Wait for the turn: until the buckets have refilled for every waiter ahead and for this one (and the
        store's own last answer allows), then ask the store; refuse as soon as the turn falls past the deadline."""
        line, started = self._line, self._clock.now()
        waiter = line.join(arrival, plan.buckets)
        if last is not None:
            line.observe(plan.buckets, last, by=waiter)
        not_before = started + (last.retry_after_s if last is not None else 0.0)
        slept = False
        if self._observer:
            self._observer.quota_waiting(+1)
        try:
            while True:
                now = self._clock.now()
                turn = line.turn(waiter)
                wait_s = max(turn.retry_after_s, not_before - now)
                if turn.never or (wait_s > 0 and now + wait_s > deadline):
                    raise refusal(plan.buckets, plan.leases, _too_late(turn, last, wait_s))
                if wait_s > 0:
                    if await line.wait(waiter, wait_s):  # the line changed (a refund, news from the store):
                        not_before = now  # the turn is recomputed from it, the store's last answer is stale
                    slept = True
                    continue
                rid = self._ids.next()  # one decision, one id (a store fences each operation by it)
                last = await self.store.acquire(plan.buckets, plan.leases, rid, None if ask is None else ask.stretch)
                line.observe(plan.buckets, last, by=waiter)
                if last.allowed:
                    if slept and self._observer:
                        self._observer.quota_waited(self._clock.now() - started)
                    return self._granted(rid, plan, price, last, ask)
                if last.never:
                    raise refusal(plan.buckets, plan.leases, last)
                not_before = self._clock.now() + last.retry_after_s
        finally:
            line.leave(waiter)
            if self._observer:
                self._observer.quota_waiting(-1)

    def _granted(self, rid: str, plan: Plan, price: Price, decision: Decision, ask: BudgetAsk | None) -> Reservation:
        buckets, acted = plan.buckets, False
        if ask is not None:
            buckets, price, acted = ask.granted(plan.buckets, decision)
        reservation = Reservation(rid, buckets, plan.leases, price, RateLimit.of(buckets, decision.states),
                                  over_budget=ask.policy if ask is not None and acted else None)
        if plan.leases:
            self._held[rid] = reservation
            self._start_renewer()
        return reservation

    def settle_soon(self, reservation: Reservation, prompt_tokens: int | None, completion_tokens: int,
                    landed: Callable[[], None] | None = None) -> asyncio.Task[None] | None:
        """Reconcile the reservation with what was used, and give back its permits, without waiting: the store
        applies it as soon as it can and never loses it (``QuotaStore.settle_soon``); ``landed`` hears when it
        has. The shadow limits' settlement, if any, runs in the task returned. Safe to call twice."""
        if reservation.settled:
            if landed is not None:
                landed()
            return None
        reservation.settled = True
        self._held.pop(reservation.rid, None)
        price, buckets = reservation.price, reservation.buckets
        used_in = price.prompt_tokens if prompt_tokens is None else prompt_tokens
        deltas = [_delta(b, price, used_in, completion_tokens) for b in buckets]

        def refunded() -> None:  # once the store has it: a waiter woken now will find it
            self._line.refund(buckets, deltas)
            if landed is not None:
                landed()

        if any(deltas) or reservation.leases:
            self.store.settle_soon(buckets, deltas, reservation.leases, reservation.rid, refunded)
        else:
            refunded()
        if reservation.shadow is None:
            return None
        return self.shadow.spawn(self.shadow.settle(reservation.shadow,
                                                    lambda b, p: _delta(b, p, used_in, completion_tokens)))

    async def settle(self, reservation: Reservation, prompt_tokens: int | None, completion_tokens: int) -> None:
        """``settle_soon``, returning once the store has it (and the shadow limits theirs)."""
        shadow = await until_landed(lambda landed: self.settle_soon(reservation, prompt_tokens, completion_tokens,
                                                                    landed))
        if shadow is not None:
            await shadow

    async def close(self) -> None:
        await self.shadow.close()
        if self._renewer is not None:
            self._renewer.cancel()
            self._renewer = None

    def _start_renewer(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew_forever())

    async def _renew_forever(self) -> None:
        """Keep the permits of long requests alive: renew every held lease at a third of its time to live; stop
        once nothing is held (looked at after the sleep: a request settled within a third of the time to live needs
        no renewal, and a renewer that stopped at its first step, before that, would be started again per request)."""
        while True:
            await self._clock.sleep(self.policy.quota.lease_ttl_s / 3)
            if not self._held:
                return
            for reservation in list(self._held.values()):
                try:
                    await self.store.renew(reservation.leases, reservation.rid)
                except Exception:  # noqa: BLE001 - a failed renewal must not stop the others; the lease may expire
                    log.warning("could not renew concurrency permits of %s", reservation.rid, exc_info=True)


def _too_late(turn: Decision, last: Decision | None, wait_s: float) -> Decision:
    """The refusal of a request whose turn comes after its deadline: held by the bucket the line says (with
    ``wait_s``, when it would get through, as its retry-after), or by what the store last refused it for."""
    if turn.never or (turn.refused_bucket is not None and turn.retry_after_s >= wait_s) or last is None:
        return turn
    return dataclasses.replace(last, retry_after_s=wait_s)


def _delta(bucket: Bucket, price: Price, used_in: int, used_out: int) -> int:
    kind = bucket.info.kind
    if kind == "tokens":
        return used_in + used_out - price.total
    if kind == "input_tokens":
        return used_in - price.prompt_tokens
    if kind == "output_tokens":
        return used_out - price.max_output_tokens
    return 0
