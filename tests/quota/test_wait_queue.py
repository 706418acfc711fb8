"""Waiting for quota (a tier's ``max_wait_s``) on an injected clock: waiters are served in arrival order as the
bucket refills, and one that cannot make it within its wait is refused at once, told when it would get through."""

from __future__ import annotations

import asyncio

import pytest

from sluice.clock import FakeClock
from sluice.config import QuotaSettings, TierSettings
from sluice.errors import RateLimitError
from sluice.identity import Principal
from sluice.quota import MemoryStore, Price, QuotaLimiter, QuotaPolicy, Reservation

PRICE = Price(prompt_tokens=1, max_output_tokens=1)


class Waits:
    """The limiter's observer: how many wait now, and how long each admitted waiter waited."""

    def __init__(self) -> None:
        self.now = 0
        self.waited: list[float] = []

    def quota_waiting(self, delta: int) -> None:
        self.now += delta

    def quota_waited(self, seconds: float) -> None:
        self.waited.append(seconds)


def limiter(clock: FakeClock, store: MemoryStore | None = None, observer: Waits | None = None,
            **tier: object) -> QuotaLimiter:
    policy = QuotaPolicy({"t": TierSettings.model_validate(tier)}, QuotaSettings())
    return QuotaLimiter(policy, store or MemoryStore(clock), clock, observer=observer)


def caller(key: str = "k") -> Principal:
    return Principal(key_id=key, user=key, tenant="acme", tier="t")


class Outcomes:
    """Each request's fate and the fake time it was decided at, in the order decisions came."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.log: list[tuple[str, str, float]] = []
        self.errors: dict[str, RateLimitError] = {}

    async def call(self, quota: QuotaLimiter, name: str, price: Price = PRICE, key: str = "k") -> Reservation | None:
        try:
            reservation = await quota.reserve(caller(key), "m", price)
        except RateLimitError as err:
            self.log.append((name, "429", self.clock.now()))
            self.errors[name] = err
            return None
        self.log.append((name, "ok", self.clock.now()))
        return reservation


async def start(*coros: object) -> list[asyncio.Task[object]]:
    """Start the calls in this order (each reaches the limiter before the next starts)."""
    tasks = []
    for coro in coros:
        tasks.append(asyncio.ensure_future(coro))  # type: ignore[arg-type]
        await asyncio.sleep(0)
    return tasks


async def test_three_waiters_two_served_in_order_the_third_refused_at_once():
    clock, waits = FakeClock(), Waits()
    quota = limiter(clock, observer=waits, requests={"rate": "1/second", "burst": 1}, max_wait_s=1.5)
    out = Outcomes(clock)
    tasks = await start(*(out.call(quota, name) for name in ("first", "second", "third")))
    await clock.run_for(0)
    assert out.log == [("first", "ok", 0.0), ("third", "429", 0.0)]  # the third knows now, without waiting
    assert waits.now == 1  # the second waits
    err = out.errors["third"]
    assert err.headers["retry-after"] == "2" and err.headers["retry-after-ms"] == "2000"  # behind the second
    assert "Please try again in 2s." in err.message
    await clock.run_for(1.5)
    await asyncio.gather(*tasks)
    assert out.log[2] == ("second", "ok", 1.0)
    assert waits.now == 0 and waits.waited == [1.0]


async def test_waiters_are_served_in_arrival_order_one_per_refill():
    clock = FakeClock()
    quota = limiter(clock, requests={"rate": "1/second", "burst": 1}, max_wait_s=10)
    out = Outcomes(clock)
    tasks = await start(*(out.call(quota, f"r{i}") for i in range(6)))
    await clock.run_for(6)
    await asyncio.gather(*tasks)
    assert out.log == [(f"r{i}", "ok", float(i)) for i in range(6)]


async def test_a_newcomer_does_not_jump_the_line_when_a_little_has_refilled():
    clock = FakeClock()
    # 60 tokens a minute: one token back every second; the bucket holds 10.
    quota = limiter(clock, tokens={"rate": "60/minute", "burst": 10}, max_wait_s=30)
    out = Outcomes(clock)
    await out.call(quota, "drain", Price(prompt_tokens=5, max_output_tokens=5))
    big = asyncio.ensure_future(out.call(quota, "big", Price(prompt_tokens=4, max_output_tokens=4)))  # 8: at t=8
    await clock.run_for(2)  # two tokens are back: enough for a small request, not for the big one waiting
    small = asyncio.ensure_future(out.call(quota, "small", Price(prompt_tokens=1, max_output_tokens=1)))
    await clock.run_for(20)
    await asyncio.gather(big, small)
    assert out.log == [("drain", "ok", 0.0), ("big", "ok", 8.0), ("small", "ok", 10.0)]


async def test_a_waiter_that_leaves_lets_those_behind_it_move_up():
    clock = FakeClock()
    quota = limiter(clock, requests={"rate": "1/second", "burst": 1}, max_wait_s=2.5)
    out = Outcomes(clock)
    first, leaving, last = await start(*(out.call(quota, name) for name in ("first", "leaving", "last")))
    await clock.run_for(0.5)
    assert [name for name, _, _ in out.log] == ["first"]  # "last" waits: its turn (t=2) is within its 2.5 s
    leaving.cancel()  # its client went away
    await clock.run_for(3)
    await asyncio.gather(first, last)
    assert out.log == [("first", "ok", 0.0), ("last", "ok", 1.0)]


async def test_a_waiter_told_to_wait_is_refused_as_soon_as_it_cannot_make_it():
    clock = FakeClock()
    quota = limiter(clock, requests={"rate": "1/second", "burst": 1}, max_wait_s=2.5)
    out = Outcomes(clock)
    tasks = await start(*(out.call(quota, name) for name in ("first", "second", "third")))
    await clock.run_for(0.5)
    assert [name for name, _, _ in out.log] == ["first"]  # the third's turn (t=2) is within its wait
    # Someone settles a request that used more than it reserved: the bucket is one unit deeper.
    store = quota.store
    assert isinstance(store, MemoryStore)
    bucket = quota.policy.plan(caller(), "m", PRICE).buckets[0]
    store.settle_now([bucket], [1], [], "debt")
    # The second's try at t=1 finds the debt and learns the bucket's real state: the third cannot make it by 2.5.
    await clock.run_for(1)
    assert ("third", "429", 1.0) in out.log
    assert out.errors["third"].headers["retry-after"] == "2"  # at t=3, after the second (t=2)
    await clock.run_for(2)
    await asyncio.gather(*tasks)
    assert ("second", "ok", 2.0) in out.log


async def test_a_refund_moves_the_line_forward():
    clock = FakeClock()
    quota = limiter(clock, tokens={"rate": "60/minute", "burst": 60}, max_wait_s=60)
    out = Outcomes(clock)
    running = await out.call(quota, "running", Price(prompt_tokens=10, max_output_tokens=50))
    assert running is not None
    waiting = asyncio.ensure_future(out.call(quota, "waiting", Price(prompt_tokens=10, max_output_tokens=20)))
    await clock.run_for(1)
    assert len(out.log) == 1  # it needs 30 tokens: 29 more seconds of refill
    await quota.settle(running, prompt_tokens=10, completion_tokens=5)  # 45 tokens given back
    await clock.run_for(0)
    assert waiting.done() and out.log[1] == ("waiting", "ok", 1.0)


async def test_another_gateway_taking_the_refill_is_best_effort_and_the_limit_stays_exact():
    clock = FakeClock()
    shared = MemoryStore(clock)  # one store, two gateways: each has its own line
    here = limiter(clock, store=shared, requests={"rate": "1/second", "burst": 1}, max_wait_s=1.5)
    there = limiter(clock, store=shared, requests={"rate": "1/second", "burst": 1}, max_wait_s=1.5)
    out = Outcomes(clock)

    async def at(seconds: float, quota: QuotaLimiter, name: str) -> None:
        await clock.sleep(seconds)
        await out.call(quota, name)

    # The other gateway's request sleeps first, so at t=1 it reaches the store before this gateway's waiter.
    tasks = [asyncio.ensure_future(at(1.0, there, "elsewhere"))]
    tasks += await start(out.call(here, "first"), out.call(here, "waiter"))
    await clock.run_for(3)
    await asyncio.gather(*tasks)
    assert out.log == [("first", "ok", 0.0), ("elsewhere", "ok", 1.0), ("waiter", "429", 1.0)]
    assert out.errors["waiter"].headers["retry-after"] == "1"  # what the store says now: at t=2


@pytest.mark.parametrize("max_wait_s", [0, 0.5])
async def test_without_enough_wait_a_refusal_is_immediate_and_takes_nothing(max_wait_s):
    clock, waits = FakeClock(), Waits()
    quota = limiter(clock, observer=waits, requests={"rate": "1/second", "burst": 1}, max_wait_s=max_wait_s)
    out = Outcomes(clock)
    await start(out.call(quota, "first"), out.call(quota, "second"))
    await clock.run_for(0)
    assert out.log == [("first", "ok", 0.0), ("second", "429", 0.0)]
    assert out.errors["second"].headers["retry-after"] == "1"
    assert waits.now == 0 and waits.waited == []
