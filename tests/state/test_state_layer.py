"""The state layer on a real redis-server: one translation of errors, one judge of Redis' health, a pool that does
not keep stale connections, and a recovery that is noticed with no traffic."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import pytest
import redis.asyncio as aioredis

from sluice.clock import MonotonicClock
from sluice.errors import StateUnavailableError
from tests.conftest import wait_until
from tests.redis_server import RedisServer, free_port


def open_state(url: str, *, timeout_s: float = 1.0, retry_s: float = 0.1):
    from sluice.state import RedisState

    return RedisState.from_url(url, MonotonicClock(), timeout_s=timeout_s, retry_s=retry_s)


async def ping(state) -> bytes:
    return await state.run(lambda client: client.echo(b"x"), "test")


async def seen_by_redis(server: RedisServer, command: str) -> tuple[int, int]:
    """How many ``command`` calls Redis ran, and how many connections it accepted, so far."""
    admin = aioredis.from_url(server.url)
    commands, stats = await admin.info("commandstats"), await admin.info("stats")
    await admin.aclose()
    return int(commands.get(f"cmdstat_{command}", {}).get("calls", 0)), int(stats["total_connections_received"])


async def test_a_restart_costs_no_outage_and_leaves_no_stale_connection(redis):
    """After a Redis restart every pooled connection is stale. The first call that meets one drops them all and is
    sent again on a fresh connection: no call fails, Redis never counts as down, and no stale connection is left
    to fail later (each used to, one by one, each time sending the gateway back to degraded mode). Watchers hear
    once that Redis answers again after a lost connection (it may have restarted empty)."""
    state = open_state(redis.url)
    changes: list[bool] = []
    state.watch(changes.append)
    await asyncio.gather(*(ping(state) for _ in range(8)))  # several connections in the pool
    pool = state.client.connection_pool
    assert len(pool._available_connections) > 1
    redis.kill()
    redis.start()
    assert await ping(state) == b"x"
    stale = [c for c in pool._available_connections if c.is_connected and c not in pool._in_use_connections]
    assert len(stale) <= 1  # at most the fresh one the retry used
    assert all(r == b"x" for r in await asyncio.gather(*(ping(state) for _ in range(32))))
    assert state.available and state.outages == 0
    assert changes == [True]  # once, not once per stale connection: "answers again, may have forgotten"
    await state.close()


async def test_a_dead_redis_is_one_outage_and_its_return_is_noticed_without_traffic(redis):
    state = open_state(redis.url, retry_s=0.05)
    changes: list[bool] = []
    state.watch(changes.append)
    await asyncio.gather(*(ping(state) for _ in range(8)))
    redis.kill()
    outcomes = await asyncio.gather(*(ping(state) for _ in range(32)), return_exceptions=True)
    assert all(isinstance(o, StateUnavailableError) for o in outcomes)
    assert not state.available and state.outages == 1 and changes == [False]
    redis.start()
    assert await asyncio.to_thread(wait_until, lambda: state.available, 10.0)  # the probe; no call made meanwhile
    assert changes == [False, True] and state.outages == 1
    assert await ping(state) == b"x"
    await state.close()


async def test_while_down_calls_fail_at_once_without_reaching_redis(redis):
    """Redis paused: the first call times out and marks it down; the next ones are refused without being sent or
    even opening a connection (each would have waited for a timeout). Counted by Redis itself once it runs again."""
    state = open_state(redis.url, timeout_s=0.1, retry_s=0.2)
    await ping(state)
    echoes, connections = await seen_by_redis(redis, "echo")
    os.kill(redis.proc.pid, signal.SIGSTOP)
    try:
        with pytest.raises(StateUnavailableError):
            await ping(state)  # sent; times out
        refused = await asyncio.gather(*(ping(state) for _ in range(50)), return_exceptions=True)
    finally:
        os.kill(redis.proc.pid, signal.SIGCONT)
    assert all(isinstance(r, StateUnavailableError) for r in refused)
    echoes_after, connections_after = await seen_by_redis(redis, "echo")
    assert echoes_after - echoes == 1
    assert connections_after - connections <= 3  # this count's own, and the probe's: not one per refused call
    await state.close()


async def test_errors_are_translated_once_and_say_nothing_of_the_url(caplog):
    """A call to an unreachable Redis raises StateUnavailableError (503, OpenAI-shaped), caused by redis-py's error;
    neither the error nor the log carries the URL's password."""
    state = open_state(f"redis://:s3cret-password@127.0.0.1:{free_port()}/0")
    with caplog.at_level(logging.WARNING), pytest.raises(StateUnavailableError) as raised:
        await ping(state)
    error = raised.value
    assert error.status == 503 and error.reason == "state_unavailable"
    assert error.body()["error"]["type"] == "server_error" and error.body()["error"]["code"] == "state_unavailable"
    assert error.__cause__ is not None and not isinstance(error.__cause__, StateUnavailableError)
    assert "s3cret" not in str(error.body()) and "s3cret" not in caplog.text
    assert "state store unavailable" in caplog.text
    await state.close()


async def test_a_gateway_shares_one_state_between_quota_cache_usage_and_keys(redis):
    from sluice.config import parse_settings
    from sluice.gateway._runtime import open_service
    from sluice.telemetry import GatewayMetrics

    settings = parse_settings({"state": redis.url, "auth": {"mode": "open"},
                               "models": [{"name": "m", "sim": {"speed": 100}}]})
    async with open_service(settings, MonotonicClock(), GatewayMetrics()) as runtime:
        service = runtime.service
        states = {id(service.limiter.store.shared.state), id(service.cache._state),
                  id(service.usage._backend._state), id(service.directory.backend._state)}
        assert len(states) == 1
