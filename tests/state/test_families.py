"""The families on the state layer (cache, usage, key directory), each degrading its own way while a real Redis is
down, logging once per outage rather than once per request, and working again once the probe sees Redis back."""

from __future__ import annotations

import asyncio
import logging

import pytest

from sluice.cache import RedisCache
from sluice.clock import MonotonicClock
from sluice.errors import StateUnavailableError
from sluice.identity import Directory, IssuedKey
from sluice.state import RedisState
from sluice.telemetry import Usage, UsageLedger
from sluice.telemetry._usage import RedisUsage
from tests.conftest import wait_until


@pytest.fixture
async def state(redis):
    state = RedisState.from_url(redis.url, MonotonicClock(), timeout_s=1.0, retry_s=0.05)
    yield state
    await state.close()


async def back(state: RedisState) -> bool:
    return await asyncio.to_thread(wait_until, lambda: state.available)


async def test_the_cache_is_a_miss_while_redis_is_down_logged_once_per_outage(redis, state, caplog):
    cache = RedisCache(state)
    await cache.set("{sluice}:cache:t", b"answer", ttl_s=60)
    assert await cache.get("{sluice}:cache:t") == b"answer"
    with caplog.at_level(logging.WARNING, logger="sluice.cache"):
        for _outage in range(2):
            redis.kill()
            assert [await cache.get("{sluice}:cache:t") for _ in range(20)] == [None] * 20
            await cache.set("{sluice}:cache:t", b"other", ttl_s=60)  # skipped, not raised
            redis.start()  # empty
            assert await back(state)
            await cache.set("{sluice}:cache:t", b"again", ttl_s=60)
            assert await cache.get("{sluice}:cache:t") == b"again"
    assert caplog.text.count("response cache unavailable") == 2  # one line per outage


async def test_usage_is_kept_through_an_outage_and_reading_it_meanwhile_is_503(redis, state, caplog):
    ledger = UsageLedger(RedisUsage(state), MonotonicClock())
    ledger.add("k", "u", "t", 10, 5)
    await ledger.flush()
    redis.kill()
    with caplog.at_level(logging.WARNING, logger="sluice"):
        for _ in range(5):
            ledger.add("k", "u", "t", 1, 1)
            await ledger.flush()  # kept, not lost
    assert caplog.text.count("could not write usage") == 1
    with pytest.raises(StateUnavailableError):
        await ledger.read("key", "k")
    redis.start()  # empty: what was written before the outage is gone with it; what was kept is written now
    assert await back(state)
    assert await ledger.read("key", "k") == Usage(requests=5, tokens_in=5, tokens_out=5)


async def test_a_directory_change_while_redis_is_down_is_refused_and_the_mirror_kept(redis, state):
    directory = Directory.for_state(state, MonotonicClock(), refresh_s=0.05)
    await directory.start()
    await directory.put_key(IssuedKey("a", "sha256:" + "0" * 64, "u", "t", "default"))
    redis.kill()
    with pytest.raises(StateUnavailableError) as refused:
        await directory.put_key(IssuedKey("b", "sha256:" + "1" * 64, "u", "t", "default"))
    assert refused.value.status == 503 and refused.value.reason == "state_unavailable"
    with pytest.raises(StateUnavailableError):
        await directory.revoke("a")
    await asyncio.sleep(0.2)  # refreshes fail meanwhile
    assert directory.issued("sha256:" + "0" * 64) is not None and not directory.is_revoked("a")
    await directory.close()
