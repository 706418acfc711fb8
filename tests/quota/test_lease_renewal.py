"""A concurrency permit outlives its time to live while its request runs (the limiter renews it every third of
it), and is given back when the request ends; the renewer runs while something is held, one for the limiter, and
stops once nothing is."""

from __future__ import annotations

import asyncio

import pytest

from sluice.clock import FakeClock
from sluice.config import QuotaSettings, TierSettings
from sluice.errors import RateLimitError
from sluice.identity import Principal
from sluice.quota import MemoryStore, Price, QuotaLimiter, QuotaPolicy

PRICE = Price(prompt_tokens=1, max_output_tokens=1)
TTL_S = 30.0


def _limiter(clock: FakeClock) -> QuotaLimiter:
    policy = QuotaPolicy({"t": TierSettings.model_validate({"concurrent": 1})},
                         QuotaSettings.model_validate({"lease_ttl_s": TTL_S}))
    return QuotaLimiter(policy, MemoryStore(clock), clock)


CALLER = Principal(key_id="k", user="k", tenant="acme", tier="t")


async def test_a_long_request_keeps_its_permit_past_the_time_to_live_and_gives_it_back_at_its_end():
    clock = FakeClock()
    limiter = _limiter(clock)
    held = await limiter.reserve(CALLER, "m", PRICE)
    await clock.run_for(TTL_S * 3)  # three times the time to live: renewed all along
    with pytest.raises(RateLimitError):
        await limiter.reserve(CALLER, "m", PRICE)
    await limiter.settle(held, 1, 1)
    second = await limiter.reserve(CALLER, "m", PRICE)  # the permit came back
    await limiter.settle(second, 1, 1)
    await limiter.close()


async def test_one_renewer_runs_while_permits_are_held_and_it_stops_when_none_is():
    clock = FakeClock()
    limiter = _limiter(clock)
    renewers = set()
    for _ in range(50):  # short requests, each settled at once: no renewer per request
        reservation = await limiter.reserve(CALLER, "m", PRICE)
        renewers.add(limiter._renewer)
        await limiter.settle(reservation, 1, 1)
        await asyncio.sleep(0)  # the renewer's first step runs: nothing is held then
    assert len(renewers) == 1
    (renewer,) = renewers
    assert renewer is not None and not renewer.done()
    await clock.run_for(TTL_S)  # nothing held when it wakes: it stops
    assert renewer.done()
    await limiter.close()
