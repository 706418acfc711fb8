"""Shadow limits (quota/_shadow.py), on the memory store and a real Redis: counted exactly while every request is
served, in buckets of their own, charged only when they fit, reconciled with real usage; no store call for a
caller without shadow limits; a failing store on the shadow path fails nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import ValidationError

from sluice.clock import FakeClock, MonotonicClock
from sluice.config import LimitRule, QuotaSettings, ShadowTier, TierSettings
from sluice.errors import RateLimitError, StateUnavailableError
from sluice.identity import Principal
from sluice.quota import Bucket, Lease, MemoryStore, Price, QuotaLimiter, QuotaPolicy, promotion
from sluice.quota._redis import RedisStore
from sluice.quota._shadow import shadow_policy
from sluice.telemetry import ShadowRefusal

FREE = Principal(key_id="k1", user="u1", tenant="acme", tier="free")
PRO = Principal(key_id="k2", user="u2", tenant="acme", tier="pro")
SMALL = Price(prompt_tokens=1, max_output_tokens=1)


@dataclass
class Record:
    """The gateway's request record, as far as shadow limits write on it."""

    request_id: str
    shadow: str | None = None


class Refusals:
    def __init__(self) -> None:
        self.seen: list[ShadowRefusal] = []

    def shadow_refused(self, refusal: ShadowRefusal) -> None:
        self.seen.append(refusal)


class CountingStore:
    """A store that counts what reaches it, and can be made to fail on shadow keys."""

    def __init__(self, inner: Any, fail_shadow: bool = False, hold_shadow: asyncio.Event | None = None) -> None:
        self.inner = inner
        self.fail_shadow = fail_shadow
        self.hold_shadow = hold_shadow  # shadow decisions wait for it
        self.acquires: list[list[str]] = []
        self.settles: list[list[str]] = []

    def _check(self, buckets: Sequence[Bucket], leases: Sequence[Lease]) -> None:
        if self.fail_shadow and any(":shadow:" in x.key for x in (*buckets, *leases)):
            raise StateUnavailableError("the quota store is unavailable")

    async def acquire(self, buckets: Sequence[Bucket], leases: Sequence[Lease], lease_id: str, *args: Any) -> Any:
        self.acquires.append([x.key for x in (*buckets, *leases)])
        self._check(buckets, leases)
        if self.hold_shadow is not None and any(":shadow:" in b.key for b in buckets):
            await self.hold_shadow.wait()
        return await self.inner.acquire(buckets, leases, lease_id, *args)

    async def settle(self, buckets: Sequence[Bucket], deltas: Sequence[int], leases: Sequence[Lease],
                     lease_id: str) -> None:
        self.settles.append([x.key for x in (*buckets, *leases)])
        self._check(buckets, leases)
        await self.inner.settle(buckets, deltas, leases, lease_id)

    def settle_soon(self, buckets: Sequence[Bucket], deltas: Sequence[int], leases: Sequence[Lease],
                    lease_id: str, landed: Any) -> None:  # the live path: it never fails (only shadow keys do)
        self.settles.append([x.key for x in (*buckets, *leases)])
        self.inner.settle_soon(buckets, deltas, leases, lease_id, landed)

    async def void(self, *args: Any) -> None:
        await self.inner.void(*args)

    async def renew(self, leases: Sequence[Lease], lease_id: str) -> None:
        await self.inner.renew(leases, lease_id)

    async def close(self) -> None:
        await self.inner.close()

    def shadow_calls(self) -> int:
        return sum(1 for keys in self.acquires if any(":shadow:" in k for k in keys))


@pytest.fixture(params=["memory", "redis"])
async def store(request):
    if request.param == "memory":
        yield MemoryStore(FakeClock())
        return
    server = request.getfixturevalue("redis_server")
    server.flush()
    shared = RedisStore.from_url(server.url, timeout_s=2.0, clock=MonotonicClock())
    yield shared
    await shared.close()


def tiers(doc: dict[str, Any]) -> dict[str, TierSettings]:
    return {name: TierSettings.model_validate(t) for name, t in doc.items()}


def limiter(store: Any, tier_doc: dict[str, Any], quota: dict[str, Any] | None = None,
            observer: Refusals | None = None) -> QuotaLimiter:
    policy = QuotaPolicy(tiers(tier_doc), QuotaSettings.model_validate(quota or {}))
    return QuotaLimiter(policy, store, FakeClock(), shadow_observer=observer)


def test_a_tier_carries_its_shadow_and_a_rule_its_mode():
    tier = TierSettings.model_validate({"requests": "20/minute", "shadow": {"requests": "10/minute"},
                                        "limits": [{"per": "tenant", "tokens": "9/minute", "mode": "shadow"}]})
    assert tier.shadow is not None and tier.shadow.requests is not None and tier.shadow.requests.amount == 10
    assert [r.per for r in tier.rules()] == ["key"]  # a shadow rule is not a live one
    assert LimitRule.model_validate({"requests": "1/minute"}).mode == "enforce"
    with pytest.raises(ValidationError, match="at least one"):
        ShadowTier.model_validate({})
    with pytest.raises(ValidationError):
        LimitRule.model_validate({"requests": "1/minute", "mode": "dry-run"})
    with pytest.raises(ValidationError):
        TierSettings.model_validate({"shadow": {"priority": 3}})  # a shadow changes limits only


def test_shadow_keys_live_apart_under_the_same_hash_tag():
    doc = tiers({"free": {"requests": "20/minute", "shadow": {"requests": "10/minute"}}})
    quota = QuotaSettings.model_validate({"limits": [{"per": "global", "requests": "5/minute", "mode": "shadow"}]})
    live = QuotaPolicy(doc, quota).plan(FREE, "m", SMALL)
    shadow = shadow_policy(doc, quota)
    assert shadow is not None
    planned = shadow.plan(FREE, "m", SMALL)
    assert [b.key for b in live.buckets] == ["{sluice}:tier.free:key=k1:*:requests"]  # the global shadow rule: not live
    assert [b.key for b in planned.buckets] == ["{sluice}:shadow:tier.free:key=k1:*:requests",
                                                "{sluice}:shadow:all:global=*:*:requests"]
    assert [(b.info.amount, b.info.per) for b in planned.buckets] == [(10, "key"), (5, "global")]
    assert shadow_policy(tiers({"free": {"requests": "20/minute"}}), QuotaSettings()) is None


async def test_shadow_refusals_are_counted_exactly_while_every_request_is_served(store):
    seen = Refusals()
    quota = limiter(store, {"free": {"requests": "20/hour", "shadow": {"requests": "10/hour"}}}, observer=seen)
    records = [Record(f"req-{i}") for i in range(15)]
    reservations = [await quota.reserve(FREE, "m", SMALL, witness=r) for r in records]  # none refused
    assert reservations[-1].ratelimit.headers()["x-ratelimit-remaining-requests"] == "5"  # live: 20/hour, 15 taken
    assert [r.request_id for r in seen.seen] == [f"req-{i}" for i in range(10, 15)]
    assert {(r.tier, r.scope, r.limit, r.reason) for r in seen.seen} == {("free", "key", "requests", "quota_requests")}
    assert "Limit 10" in seen.seen[0].message
    assert [r.shadow for r in records] == [None] * 10 + ["quota_requests on tier free"] * 5
    # A shadow refusal charged nothing: the shadow bucket is full, not five units over (the next unit is one
    # interval away, 6 minutes at 10/hour).
    shadow = quota.shadow._policy
    assert shadow is not None
    probe = shadow.plan(FREE, "m", SMALL).buckets
    decision = await store.acquire(probe, [], "probe-1")
    assert not decision.allowed and 0 < decision.retry_after_s <= 360.0
    await quota.close()


async def test_shadow_buckets_never_touch_live_ones(store):
    seen = Refusals()
    quota = limiter(store, {"free": {"requests": "3/hour", "shadow": {"requests": "100/hour"}}}, observer=seen)
    for _ in range(3):
        await quota.reserve(FREE, "m", SMALL)
    with pytest.raises(RateLimitError):  # live: 3/hour, whatever the shadow allows
        await quota.reserve(FREE, "m", SMALL)
    assert seen.seen == []
    probe = quota.shadow._policy.plan(FREE, "m", SMALL).buckets  # type: ignore[union-attr]
    decision = await store.acquire(probe, [], "probe-2")
    assert decision.allowed and decision.states[0].remaining == 100 - 5  # 4 checked in shadow (one refused live)


async def test_a_request_refused_live_is_noted_in_shadow_too(store):
    seen = Refusals()
    quota = limiter(store, {"free": {"requests": "1/hour", "shadow": {"requests": "1/hour"}}}, observer=seen)
    await quota.reserve(FREE, "m", SMALL)
    record = Record("refused-live")
    with pytest.raises(RateLimitError):
        await quota.reserve(FREE, "m", SMALL, witness=record)
    assert record.shadow == "quota_requests on tier free"  # on the record before the 429 is logged
    assert [r.request_id for r in seen.seen] == ["refused-live"]


async def test_shadow_charges_are_reconciled_with_real_usage(store):
    seen = Refusals()
    quota = limiter(store, {"free": {"tokens": "100000/hour", "shadow": {"tokens": "1000/hour"}}}, observer=seen)
    price = Price(prompt_tokens=100, max_output_tokens=500)
    first = await quota.reserve(FREE, "m", price)
    assert first.shadow is not None
    await quota.settle(first, 100, 50)  # 600 reserved, 150 used: 450 given back to the shadow bucket too
    second = await quota.reserve(FREE, "m", price)  # 150 + 600 fits 1000; unreconciled, 1200 would not
    assert second.shadow is not None and seen.seen == []
    third = await quota.reserve(FREE, "m", price)  # 750 + 600 does not
    assert third.shadow is None and [r.limit for r in seen.seen] == ["tokens"]
    await quota.settle(second, 100, 500)
    await quota.settle(third, 100, 500)  # nothing held in shadow: nothing to settle there


async def test_no_shadow_limit_no_extra_store_call():
    store = CountingStore(MemoryStore(FakeClock()))
    quota = limiter(store, {"free": {"requests": "20/hour"}, "pro": {"requests": "20/hour",
                                                                     "shadow": {"requests": "2/hour"}}})
    for _ in range(5):
        await quota.settle(await quota.reserve(FREE, "m", SMALL), 1, 1)
    assert len(store.acquires) == 5 and store.shadow_calls() == 0
    for _ in range(5):
        await quota.settle(await quota.reserve(PRO, "m", SMALL), 1, 1)
    assert len(store.acquires) == 15 and store.shadow_calls() == 5  # one shadow decision per shadowed request
    # A reload without the shadow (the live policy is replaced whole): the extra call goes with it.
    quota.policy = QuotaPolicy(tiers({"pro": {"requests": "20/hour"}}), QuotaSettings())
    await quota.reserve(PRO, "m", SMALL)
    assert len(store.acquires) == 16 and store.shadow_calls() == 5


async def test_a_store_failure_on_the_shadow_path_never_fails_a_request(caplog):
    store = CountingStore(MemoryStore(FakeClock()), fail_shadow=True)
    seen = Refusals()
    quota = limiter(store, {"free": {"tokens": "1000/hour", "concurrent": 2,
                                     "shadow": {"tokens": "10/hour", "concurrent": 1}}}, observer=seen)
    record = Record("req-x")
    for _ in range(2):
        reservation = await quota.reserve(FREE, "m", Price(5, 5), witness=record)
        await quota.settle(reservation, 5, 1)
    assert store.shadow_calls() == 2 and seen.seen == [] and record.shadow is None
    assert "shadow limits not checked for request req-x" in caplog.text
    # and a failing settle of a shadow grant is swallowed too
    store.fail_shadow = False
    granted = await quota.reserve(FREE, "m", Price(1, 1))
    assert granted.shadow is not None
    store.fail_shadow = True
    await quota.settle(granted, 1, 0)
    assert "could not settle the shadow limits" in caplog.text
    await quota.close()


async def test_shadow_concurrency_and_rules_in_shadow_mode(store):
    seen = Refusals()
    quota = limiter(store, {"free": {"requests": "100/hour",
                                     "limits": [{"per": "tenant", "concurrent": 1, "mode": "shadow"}]}},
                    quota={"limits": [{"per": "global", "requests": "2/hour", "mode": "shadow"}]}, observer=seen)
    first = await quota.reserve(FREE, "m", SMALL)
    second = await quota.reserve(FREE, "m", SMALL)  # the tenant's one shadow permit is held by the first
    assert first.shadow is not None and second.shadow is None
    assert [(r.scope, r.limit) for r in seen.seen] == [("tenant", "concurrent")]
    await quota.settle(first, 1, 1)
    await quota.settle(second, 1, 1)
    third = await quota.reserve(FREE, "m", SMALL)  # permit back; the global 2/hour: one unit left
    assert third.shadow is not None
    await quota.settle(third, 1, 1)
    await quota.reserve(FREE, "m", SMALL)
    assert [(r.scope, r.limit) for r in seen.seen][-1] == ("global", "requests")
    assert len(first.leases) == 0  # never enforced: the live reservation holds no permit
    await quota.close()


def test_promotion_makes_the_shadow_the_live_limits():
    tier = TierSettings.model_validate({
        "priority": 3, "requests": "20/minute", "tokens": "5000/minute",
        "limits": [{"per": "tenant", "tokens": "9000/minute", "mode": "shadow"}],
        "shadow": {"requests": "10/minute", "concurrent": 2}})
    change = promotion(tier)
    assert change["shadow"] is None
    promoted = TierSettings.model_validate({**tier.model_dump(mode="json", exclude_unset=True), **change})
    expected = shadow_policy({"t": tier}, QuotaSettings())
    assert expected is not None
    assert promoted.priority == 3 and promoted.shadow is None
    assert [r.model_dump() for r in promoted.rules()] == [r.model_dump() for r in expected.tiers["t"].rules()]
    assert shadow_policy({"t": promoted}, QuotaSettings()) is None  # nothing left in shadow
    assert promotion(TierSettings.model_validate({"requests": "1/minute"})) == {}


async def test_a_shadow_grant_of_a_request_refused_live_gives_its_permits_back(store):
    seen = Refusals()
    quota = limiter(store, {"free": {"requests": "1/hour", "shadow": {"requests": "100/hour", "concurrent": 1}}},
                    observer=seen)
    first = await quota.reserve(FREE, "m", SMALL)  # holds the shadow permit until settled
    with pytest.raises(RateLimitError):
        await quota.reserve(FREE, "m", SMALL)  # refused live, and in shadow (the permit is held)
    assert [r.limit for r in seen.seen] == ["concurrent"]
    await quota.settle(first, 1, 1)
    for _ in range(3):  # refused live, granted in shadow: the permit must come back each time
        with pytest.raises(RateLimitError):
            await quota.reserve(FREE, "m", SMALL)
        while quota.shadow._tasks:  # the give-back of the abandoned shadow grant
            await asyncio.sleep(0)
    assert [r.limit for r in seen.seen] == ["concurrent"]
    await quota.close()


async def test_a_caller_gone_between_the_live_grant_and_the_shadow_answer_holds_nothing():
    gate = asyncio.Event()
    store = CountingStore(MemoryStore(FakeClock()), hold_shadow=gate)
    quota = limiter(store, {"free": {"tokens": "1000/hour", "shadow": {"tokens": "1000/hour"}}})
    reserving = asyncio.get_running_loop().create_task(quota.reserve(FREE, "m", Price(100, 400)))
    while store.shadow_calls() == 0 or len(store.acquires) < 2:  # granted live, the shadow answer outstanding
        await asyncio.sleep(0)
    reserving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reserving
    gate.set()
    while quota.shadow._tasks:
        await asyncio.sleep(0)
    # The 500 tokens the cancelled request was granted live came back: a request of the whole 1000 fits.
    whole = await quota.reserve(FREE, "m", Price(100, 900))
    assert whole.ratelimit.headers()["x-ratelimit-remaining-tokens"] == "0"
