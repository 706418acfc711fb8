"""The over-budget policies at the quota step, on an injected clock: what a reservation is charged, what it says,
and how a tag's debt is repaid by time."""

from __future__ import annotations

import asyncio

import pytest

from sluice.clock import FakeClock
from sluice.config import QuotaSettings, TierSettings
from sluice.errors import RateLimitError
from sluice.identity import Principal
from sluice.quota import MemoryStore, Price, QuotaLimiter, QuotaPolicy

INTERVAL_S = 0.6  # 100 tokens a minute
TIERS = {
    name: TierSettings.model_validate({"tokens": "100/minute", "over_budget": name, "max_wait_s": wait})
    for name, wait in (("refuse", 0), ("clamp", 0), ("cut", 30), ("tag", 0))
}


def caller(tier: str) -> Principal:
    return Principal(key_id=f"k-{tier}", user="u", tenant="t", tier=tier)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def limiter(clock: FakeClock) -> QuotaLimiter:
    return QuotaLimiter(QuotaPolicy(TIERS, QuotaSettings()), MemoryStore(clock), clock)


async def test_refuse_keeps_todays_all_or_nothing(limiter: QuotaLimiter) -> None:
    with pytest.raises(RateLimitError):
        await limiter.reserve(caller("refuse"), "m", Price(10, 500))


async def test_clamp_reserves_what_is_left_per_answer_and_settles_the_rest(limiter: QuotaLimiter,
                                                                          clock: FakeClock) -> None:
    held = await limiter.reserve(caller("clamp"), "m", Price(10, 40))
    assert held.over_budget is None and held.price.max_output_tokens == 40  # it fit: untouched
    await limiter.settle(held, 10, 40)
    clamped = await limiter.reserve(caller("clamp"), "m", Price(10, 2 * 250, sequences=2))
    assert clamped.over_budget == "clamp" and clamped.price.max_output_tokens == 40  # 100 - 50 - 10
    assert clamped.ratelimit.headers()["x-ratelimit-remaining-tokens"] == "0"
    await limiter.settle(clamped, 10, 30)  # 10 unused: refunded
    with pytest.raises(RateLimitError):  # 10 left: less than the prompt and 16 per answer
        await limiter.reserve(caller("clamp"), "m", Price(10, 500))
    clock.advance(16 * INTERVAL_S)
    last = await limiter.reserve(caller("clamp"), "m", Price(10, 500))
    assert last.price.max_output_tokens == 16  # 10 + 16 refilled: exactly the floor


async def test_a_clamp_that_waits_in_line_gets_what_has_refilled_when_its_floor_fits(limiter: QuotaLimiter,
                                                                                     clock: FakeClock) -> None:
    first = await limiter.reserve(caller("cut"), "m", Price(10, 90))  # the whole budget
    assert first.over_budget is None
    waiting = asyncio.ensure_future(limiter.reserve(caller("cut"), "m", Price(10, 500)))
    await clock.run_for(25 * INTERVAL_S)  # 10 + 16 refill after 26 units' time: not yet
    assert not waiting.done()
    await clock.run_for(2 * INTERVAL_S)
    got = await waiting
    assert got.over_budget == "cut" and got.price.max_output_tokens == 16


async def test_tag_charges_it_whole_into_debt_and_refuses_until_time_repays_it(limiter: QuotaLimiter,
                                                                              clock: FakeClock) -> None:
    tagged = await limiter.reserve(caller("tag"), "m", Price(10, 300))
    assert tagged.over_budget == "tag" and tagged.price.max_output_tokens == 300
    await limiter.settle(tagged, 10, 300)  # used it all: 210 in debt
    with pytest.raises(RateLimitError) as info:
        await limiter.reserve(caller("tag"), "m", Price(10, 20))
    # until its floor fits: the debt and the prompt and 16 tokens
    assert float(info.value.headers["retry-after-ms"]) / 1000 == pytest.approx((210 + 26) * INTERVAL_S, abs=1e-3)
    clock.advance((210 + 30) * INTERVAL_S)
    fits = await limiter.reserve(caller("tag"), "m", Price(10, 20))
    assert fits.over_budget is None  # repaid: it fits whole, nothing to tag
    with pytest.raises(RateLimitError):  # its floor is its whole price: an ordinary request, refused
        await limiter.reserve(caller("tag"), "m", Price(1, 15))
