"""Admin changes live only in Redis: at start, and whenever Redis answers again after losing it, the gateway asks
Redis whether it persists, and says so in the log (a warning when nothing persists, or when it cannot tell).
Real redis-server: its CONFIG changed, an ACL user without CONFIG, a kill and a restart."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis as redis_sync

from sluice.clock import MonotonicClock
from sluice.errors import StateUnavailableError
from sluice.identity import Directory
from sluice.state import RedisState


def open_state(url: str) -> RedisState:
    return RedisState.from_url(url, MonotonicClock(), timeout_s=1.0, retry_s=0.05)


def persistence_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "persist" in r.getMessage()]


async def test_a_redis_that_does_not_persist_is_a_warning_and_aof_is_said(redis, caplog):
    state = open_state(redis.url)
    try:
        with caplog.at_level(logging.INFO, logger="sluice"):
            assert await state.check_persistence() is None  # the test server runs with save "" and appendonly no
        [line] = persistence_lines(caplog)
        assert "does not persist" in line and "revoked key works again" in line
        assert caplog.records[-1].levelno == logging.WARNING

        caplog.clear()
        redis_sync.Redis.from_url(redis.url).config_set("appendonly", "yes")
        with caplog.at_level(logging.INFO, logger="sluice"):
            assert await state.check_persistence() == "AOF"
        assert persistence_lines(caplog) == ["the state store persists (AOF)"]

        caplog.clear()
        redis_sync.Redis.from_url(redis.url).config_set("appendonly", "no")
        redis_sync.Redis.from_url(redis.url).config_set("save", "3600 1")
        with caplog.at_level(logging.INFO, logger="sluice"):
            assert await state.check_persistence() == "RDB snapshots"
        assert "AOF recommended" in persistence_lines(caplog)[0]
    finally:
        await state.close()


async def test_a_redis_that_refuses_config_is_said_to_be_unchecked(redis, caplog):
    admin = redis_sync.Redis.from_url(redis.url)
    admin.execute_command("ACL", "SETUSER", "gateway", "on", ">secret-pw", "~*", "&*", "+@all", "-config")
    state = open_state(redis.url.replace("redis://", "redis://gateway:secret-pw@"))
    try:
        with caplog.at_level(logging.INFO, logger="sluice"):
            assert await state.check_persistence() is None
        [line] = persistence_lines(caplog)
        assert line.startswith("could not check whether the state store persists") and "NoPermissionError" in line
        assert "secret-pw" not in line
        assert state.available  # a refused CONFIG is not Redis being down
    finally:
        await state.close()


async def test_the_directory_checks_at_start_and_again_when_redis_comes_back(redis, caplog):
    state = open_state(redis.url)
    directory = Directory.for_state(state, MonotonicClock())
    try:
        with caplog.at_level(logging.INFO, logger="sluice"):
            await directory.start()
            assert any("does not persist" in line for line in persistence_lines(caplog))
            redis_sync.Redis.from_url(redis.url).config_set("appendonly", "yes")
            caplog.clear()

            redis.kill()
            redis.start()  # the same port, and the default configuration again: nothing persists
            with contextlib.suppress(StateUnavailableError):  # the lost connection marks it down; the probe
                await state.run(lambda client: client.ping(), "ping")  # finds it up again
            for _ in range(200):
                if any("does not persist" in line for line in persistence_lines(caplog)):
                    break
                await asyncio.sleep(0.025)
        assert any("does not persist" in line for line in persistence_lines(caplog)), persistence_lines(caplog)
    finally:
        await directory.close()
        await state.close()

