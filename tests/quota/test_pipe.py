"""The Redis store's own connection (quota/_pipe.py) on a real redis-server: calls pipelined and answered in turn,
a restart noticed (watchers told, Redis never down), a paused Redis timed out once and the connection replaced."""

from __future__ import annotations

import asyncio
import os
import signal

import redis.asyncio as aioredis

from sluice.errors import StateUnavailableError
from sluice.quota._redis import RedisStore
from tests.contract.test_quota_stores import bucket, lease, rid


async def until(predicate, timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    assert predicate()


async def redis_counts(url: str) -> tuple[int, int]:
    """EVALSHA calls Redis ran, and connections it accepted, so far."""
    admin = aioredis.from_url(url)
    commands, stats = await admin.info("commandstats"), await admin.info("stats")
    await admin.aclose()
    return int(commands.get("cmdstat_evalsha", {}).get("calls", 0)), int(stats["total_connections_received"])


async def test_a_burst_of_decisions_is_pipelined_on_one_connection_and_each_gets_its_own_answer(redis):
    store = RedisStore.from_url(redis.url)
    b, permits = bucket(150), lease(1000)
    await store.acquire([bucket(1)], [], rid())  # the store's connection is open
    calls_before, connections_before = await redis_counts(redis.url)
    decisions = await asyncio.gather(*(store.acquire([b], [permits], rid()) for _ in range(200)))
    calls, connections = await redis_counts(redis.url)
    assert sum(d.allowed for d in decisions) == 150  # exact: no decision lost, none answered twice
    # every grant saw its own place in the bucket: the remaining counts are 149 down to 0, each once
    assert sorted(d.states[0].remaining for d in decisions if d.allowed) == list(range(150))
    assert calls - calls_before < 200 / 4  # batched: many decisions a script call
    assert connections == connections_before + 1  # the stats client's own; the store opened none
    await store.close()


async def test_a_redis_restart_between_calls_is_noticed_and_costs_no_outage(redis):
    store = RedisStore.from_url(redis.url)
    heard: list[bool] = []
    store.state.watch(heard.append)
    b = bucket(10)
    assert (await store.acquire([b], [], rid())).allowed
    redis.kill()
    redis.start()
    await until(lambda: store._pipe is not None and store._pipe.closed)
    d = await store.acquire([b], [], rid())  # on a fresh connection; Redis restarted empty
    assert d.allowed and d.states[0].remaining == 9
    assert store.state.available and store.state.outages == 0
    assert heard == [True]  # told once: Redis answers again and may have forgotten what the watchers hold
    await store.close()


async def test_a_paused_redis_times_the_call_out_once_and_the_next_one_uses_a_fresh_connection(redis):
    store = RedisStore.from_url(redis.url, timeout_s=0.1, retry_s=0.05)
    b = bucket(10)
    assert (await store.acquire([b], [], rid())).allowed
    first_pipe = store._pipe
    assert redis.proc is not None
    os.kill(redis.proc.pid, signal.SIGSTOP)
    try:
        waiting = [asyncio.ensure_future(store.acquire([b], [], rid())) for _ in range(3)]
        results = await asyncio.gather(*waiting, return_exceptions=True)
        assert all(isinstance(r, StateUnavailableError) for r in results)
        assert not store.state.available and store.state.outages == 1
        assert first_pipe is not None and first_pipe.closed and first_pipe.in_flight == 0
    finally:
        os.kill(redis.proc.pid, signal.SIGCONT)
    await until(lambda: store.state.available)
    await store.give_back.drained()  # the calls that timed out may have run late: each is voided
    d = await store.acquire([b], [], rid())
    assert d.allowed and store._pipe is not first_pipe
    assert d.states[0].remaining == 8  # the first grant and this one: the timed-out three hold nothing
    await store.close()
