"""Routing across replicas, circuit breakers, and retrying on another replica before the first byte."""

from __future__ import annotations

import asyncio
import collections

import httpx

from sluice.clock import FakeClock
from sluice.config import SimSettings, parse_settings
from sluice.engines import BreakerState, CircuitBreaker, EnginePool, Replica, Router
from tests.conftest import LiveSim, serve_gateway
from tests.redis_server import free_port


def replicas(n: int, **kw) -> list[Replica]:
    return [Replica(f"http://10.0.0.{i}:8000", **kw) for i in range(n)]


def test_least_outstanding_respects_weights():
    a, b = Replica("http://a", weight=1.0, outstanding=2), Replica("http://b", weight=4.0, outstanding=4)
    assert Router([a, b]).order([a, b])[0] is b  # 4 in flight of weight 4 is less loaded than 2 of weight 1


def test_least_kv_prefers_the_emptiest_cache_and_treats_unknown_as_full():
    rs = replicas(3)
    kv = {rs[0].url: 0.9, rs[1].url: 0.2}
    assert [r.url for r in Router(rs, "least_kv", kv_usage=kv.get).order(rs)] == [rs[1].url, rs[0].url, rs[2].url]


def test_prefix_affinity_keeps_a_conversation_on_one_replica_and_spreads_conversations():
    rs = replicas(4)
    router = Router(rs, "prefix_affinity")
    chats = [f"system prompt\x1fconversation {i}" for i in range(400)]
    first = {c: router.order(rs, c)[0].url for c in chats}
    assert all(router.order(rs, c)[0].url == first[c] for c in chats)  # the same replica every turn
    spread = collections.Counter(first.values())
    assert len(spread) == 4 and min(spread.values()) > 50


def test_prefix_affinity_moves_only_the_keys_of_a_replica_that_leaves():
    rs = replicas(4)
    router = Router(rs, "prefix_affinity")
    chats = [f"conversation {i}" for i in range(400)]
    before = {c: router.order(rs, c)[0] for c in chats}
    without = [r for r in rs if r is not rs[2]]
    after = {c: router.order(without, c)[0] for c in chats}
    moved = [c for c in chats if before[c] is not after[c]]
    assert moved and all(before[c] is rs[2] for c in moved)


def test_prefix_affinity_gives_way_when_its_replica_is_much_busier():
    rs = replicas(2)
    router = Router(rs, "prefix_affinity")
    key = "conversation"
    home = router.order(rs, key)[0]
    home.outstanding = 10
    assert router.order(rs, key)[0] is not home


def test_circuit_opens_after_failures_then_half_opens_for_one_trial():
    clock = FakeClock()
    breaker = CircuitBreaker(clock, failures=3, open_s=10)
    for _ in range(3):
        assert breaker.allows()
        breaker.on_failure()
    assert breaker.state is BreakerState.OPEN and not breaker.allows()
    clock.advance(10)
    assert breaker.state is BreakerState.HALF_OPEN and breaker.allows()
    breaker.on_send()
    assert not breaker.allows()  # one trial at a time
    breaker.on_failure()
    assert breaker.state is BreakerState.OPEN
    clock.advance(10)
    breaker.on_send()
    breaker.on_success()
    assert breaker.state is BreakerState.CLOSED and breaker.allows()


async def test_a_half_open_trial_withdrawn_before_its_answer_lets_the_next_one_go():
    """A trial request whose client left (or which the gate stopped) before the replica answered says nothing about
    the replica: the half-open circuit must not wait forever for that trial's verdict."""
    accepted = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        await reader.read()  # never answers
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    clock = FakeClock()
    replica = Replica(f"http://127.0.0.1:{port}", breaker=CircuitBreaker(clock, failures=1, open_s=10))
    pool = EnginePool([replica])
    try:
        replica.breaker.on_failure()
        clock.advance(10)
        assert replica.breaker.state is BreakerState.HALF_OPEN
        trial = asyncio.ensure_future(pool.post("/v1/completions", b"{}", {"content-type": "application/json"}))
        await asyncio.wait_for(accepted.wait(), 5)
        assert not replica.breaker.allows()  # its one trial is out
        trial.cancel()
        await asyncio.gather(trial, return_exceptions=True)
        assert replica.breaker.allows() and replica.outstanding == 0
    finally:
        await pool.close()
        server.close()
        await server.wait_closed()


def test_an_overloaded_replica_is_retried_on_another_and_a_dead_one_skipped():
    busy_settings = SimSettings(max_num_seqs=1, max_waiting=0)
    with LiveSim(busy_settings, "m") as busy, LiveSim(SimSettings(speed=100), "m") as free:
        settings = parse_settings({"auth": {"mode": "open"}, "models": [{"name": "m", "admission": {"enabled": False},
            "engine": {"urls": [busy.url, free.url, f"http://127.0.0.1:{free_port()}"], "weights": [100, 1, 100],
                       "breaker_failures": 1, "breaker_open_s": 60}}]})
        long = {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 4000, "ignore_eos": True,
                "stream": True}
        with serve_gateway(settings) as gw, httpx.Client(base_url=gw.url, timeout=30) as http:
            with http.stream("POST", "/v1/chat/completions", json=long) as hog:
                lines = hog.iter_lines()
                next(lines)
                assert busy.engine.num_running == 1  # the heaviest replica took it, and is now full
                for _ in range(5):  # the dead replica refuses connections, the busy one answers 503: both retried
                    r = http.post("/v1/chat/completions", json={**long, "stream": False, "max_tokens": 2})
                    assert r.status_code == 200, r.text
