"""Shadow limits: checked, charged and reconciled like live ones, reported, never enforced.

A limit runs in shadow when its rule says ``mode: shadow`` (in a tier's ``limits`` or in ``quota.limits``), or
as a tier's candidate (``tiers.<name>.shadow``: the tier as it would be with those fields changed, all of its
rules). The shadow rules make a ``QuotaPolicy`` of their own whose keys live under ``<prefix>:shadow``, so shadow
buckets and permits never touch live ones, and are decided by the same store (the same Lua script or memory
store): all-or-nothing, charged only when the whole shadow plan fits (a shadow refusal charges nothing, as an
enforced one would), reconciled with the request's real usage when it ends.

Only a request whose principal has shadow rules pays for them (one more store operation, run alongside the live
decision); a store failure on the shadow path is logged and otherwise ignored. The live decision alone decides:
a shadow refusal only counts (``ShadowObserver``), and notes itself on the request (``ShadowWitness``: the access
log line carries it, with the request id).

Shadow checks do not wait in line: a shadow refusal means "would not have fitted at once" (a tier's
``max_wait_s`` is not modelled). A request the live limits refuse is still checked in shadow: a shadow grant for
it stays charged at its reserved price (it would have run had the shadow limits been the live ones) and gives its
permits back at once (how long it would have run is unknown).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from sluice.clock import Clock
from sluice.config import LimitRule, QuotaSettings, TierSettings
from sluice.identity import Principal
from sluice.ids import IdSource
from sluice.quota._headers import refusal
from sluice.quota._model import Bucket, Decision, Lease
from sluice.quota._policy import QuotaPolicy
from sluice.quota._pricing import Price
from sluice.quota._store import QuotaStore
from sluice.telemetry import ShadowRefusal

log = logging.getLogger("sluice.quota")

T = TypeVar("T")


class ShadowObserver(Protocol):
    def shadow_refused(self, refusal: ShadowRefusal) -> None: ...


class ShadowWitness(Protocol):
    """The request being decided (the gateway's request record): its id, and where a shadow refusal is noted."""

    request_id: str
    shadow: str | None


@dataclass(frozen=True, slots=True)
class ShadowHold:
    """What a request holds in shadow, granted: settled with the request's usage like a live reservation."""

    rid: str
    buckets: tuple[Bucket, ...]
    leases: tuple[Lease, ...]
    price: Price


def candidate(tier: TierSettings) -> TierSettings | None:
    """The tier as its shadow would make it (None: it has no shadow)."""
    if tier.shadow is None:
        return None
    return tier.model_copy(update={name: getattr(tier.shadow, name) for name in tier.shadow.model_fields_set})


def shadow_rules(tier: TierSettings) -> list[LimitRule]:
    """The rules a tier runs in shadow, as enforced rules: its candidate's (every rule of the tier as the shadow
    would make it), or else its own ``mode: shadow`` rules."""
    proposed = candidate(tier)
    if proposed is None:
        return [_enforced(r) for r in tier.limits if r.mode == "shadow"]
    shorthand = [LimitRule(per="key", requests=proposed.requests, tokens=proposed.tokens,
                           concurrent=proposed.concurrent)] if (
        proposed.requests or proposed.tokens or proposed.concurrent) else []
    return shorthand + [_enforced(r) for r in proposed.limits]


def shadow_policy(tiers: Mapping[str, TierSettings], quota: QuotaSettings,
                  key_prefix: str = "{sluice}") -> QuotaPolicy | None:
    """The policy of every shadow rule, keyed under ``<key_prefix>:shadow`` (the same hash tag as the live
    keys); None when nothing runs in shadow."""
    tier_rules = {name: rules for name, tier in tiers.items() if (rules := shadow_rules(tier))}
    shared = [_enforced(r) for r in quota.limits if r.mode == "shadow"]
    if not tier_rules and not shared:
        return None
    return QuotaPolicy({name: TierSettings(limits=rules) for name, rules in tier_rules.items()},
                       quota.model_copy(update={"limits": shared}), key_prefix=f"{key_prefix}:shadow")


def promotion(tier: TierSettings) -> dict[str, object]:
    """The change (field by field, as a PATCH) that makes what a tier runs in shadow its live limits: its shadow's
    fields, its ``mode: shadow`` rules enforced, the shadow dropped. Empty: nothing runs in shadow."""
    proposed = candidate(tier) or tier
    given = tier.shadow.model_fields_set if tier.shadow is not None else set()
    change: dict[str, object] = {name: _plain(getattr(proposed, name)) for name in given if name != "limits"}
    if "limits" in given or any(r.mode == "shadow" for r in proposed.limits):
        change["limits"] = [_plain(_enforced(r)) for r in proposed.limits]
    if change or tier.shadow is not None:
        change["shadow"] = None
    return change


class ShadowQuota:
    """Runs the shadow rules of a live policy (rebuilt whenever the live policy is replaced) against ``store``."""

    def __init__(self, store: QuotaStore, clock: Clock, observer: ShadowObserver | None = None) -> None:
        self.store = store
        self._clock = clock
        self._observer = observer
        self._for: QuotaPolicy | None = None  # the live policy the shadow one was built from
        self._policy: QuotaPolicy | None = None
        self._ids = IdSource()
        self._held: dict[str, ShadowHold] = {}  # granted holds with permits, renewed until settled
        self._renewer: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()  # decisions and give-backs, held until done

    def begin(self, live: QuotaPolicy, principal: Principal, model: str, price: Price,
              witness: ShadowWitness | None) -> asyncio.Task[ShadowHold | None] | None:
        """Start the shadow decision of one request, alongside its live one; None (and no store call) when no
        shadow rule applies to it."""
        if live is not self._for:
            self._for, self._policy = live, shadow_policy(live.tiers, live.quota, live.key_prefix)
        if self._policy is None:
            return None
        plan = self._policy.plan(principal, model, price)
        if not plan.buckets and not plan.leases:
            return None
        hold = ShadowHold(f"{self._ids.next()}.shadow", plan.buckets, plan.leases, price)
        return self._spawn(self._decide(hold, principal, witness))

    def abandon(self, decision: asyncio.Task[ShadowHold | None]) -> None:
        """A shadow decision its request will not settle (the live limits refused it, or its caller left): once
        decided, a grant gives its permits back; its charges stay (it would have run, had the shadow been live)."""
        def decided(task: asyncio.Task[ShadowHold | None]) -> None:
            if not task.cancelled() and task.exception() is None and (hold := task.result()) is not None:
                self.spawn(self.settle(hold, lambda bucket, price: 0))

        decision.add_done_callback(decided)

    def spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run bookkeeping that must finish even though its caller is gone."""
        return self._spawn(work)

    def _spawn(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def settle(self, hold: ShadowHold | None, delta: Callable[[Bucket, Price], int]) -> None:
        """Reconcile a shadow grant with the request's real usage (``delta`` per bucket, against what it was
        charged) and give its permits back. Never raises: the request's own accounting is done."""
        if hold is None:
            return
        self._held.pop(hold.rid, None)
        deltas = [delta(b, hold.price) for b in hold.buckets]
        if not any(deltas) and not hold.leases:
            return
        try:
            await self.store.settle(hold.buckets, deltas, hold.leases, hold.rid)
        except Exception as exc:  # noqa: BLE001 - shadow accounting must never fail a request
            log.warning("could not settle the shadow limits of a request: %s", exc)

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            self._renewer = None

    async def _decide(self, hold: ShadowHold, principal: Principal,
                      witness: ShadowWitness | None) -> ShadowHold | None:
        try:
            decision = await self.store.acquire(hold.buckets, hold.leases, hold.rid)
        except Exception as exc:  # noqa: BLE001 - a store failure on the shadow path never fails the request
            log.warning("shadow limits not checked for request %s: %s", witness.request_id if witness else "?", exc)
            return None
        if decision.allowed:
            if hold.leases:
                self._held[hold.rid] = hold
                self._start_renewer()
            return hold
        self._refused(hold, decision, principal, witness)
        return None

    def _refused(self, hold: ShadowHold, decision: Decision, principal: Principal,
                 witness: ShadowWitness | None) -> None:
        error = refusal(hold.buckets, hold.leases, decision)
        if decision.refused_lease is not None:
            lease = hold.leases[decision.refused_lease]
            per, kind, scope = lease.per, "concurrent", lease.scope
        else:
            info = hold.buckets[decision.refused_bucket or 0].info
            per, kind, scope = info.per, info.kind, info.scope
        request_id = witness.request_id if witness is not None else hold.rid
        if witness is not None:
            witness.shadow = f"{error.reason} on {scope}"
        if self._observer is not None:
            self._observer.shadow_refused(ShadowRefusal(request_id, principal.tier, per, kind, error.reason,
                                                        error.message, self._clock.now()))

    def _start_renewer(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew_forever())

    async def _renew_forever(self) -> None:
        """Keep the shadow permits of long requests alive, as the live ones are."""
        while self._held:
            ttl_s = min(lease.ttl_s for hold in self._held.values() for lease in hold.leases)
            await self._clock.sleep(ttl_s / 3)
            for hold in list(self._held.values()):
                try:
                    await self.store.renew(hold.leases, hold.rid)
                except Exception:  # noqa: BLE001 - a shadow permit may expire; the request goes on
                    log.warning("could not renew the shadow permits of %s", hold.rid, exc_info=True)


def _enforced(rule: LimitRule) -> LimitRule:
    return rule.model_copy(update={"mode": "enforce"}) if rule.mode != "enforce" else rule


def _plain(value: object) -> object:
    """A setting as the admin API takes it (JSON-shaped)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_defaults=True)
    return value
