"""A pool's cap on requests at its engines (``engine.max_connections``): a request beyond it waits for a slot a
bounded time, in arrival order, then is refused with 503 ``upstream_saturated``; slots come back however a
request ends.

The engine is the simulator on a real socket, its clock frozen (a fake one) so that streams stay open as long as a
test needs; the pool's bounded wait runs on a fake clock of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest

from sluice.clock import FakeClock
from sluice.config import SimSettings
from sluice.engines import EnginePool, Replica, UpstreamResponse
from sluice.errors import EngineUnavailableError, NotFoundError, UpstreamError
from sluice.sim import SimServer
from tests.redis_server import free_port

CHAT = "/v1/chat/completions"
HEADERS = {"content-type": "application/json"}
WAIT_S = 5.0


def body(stream: bool = True, **extra: object) -> bytes:
    return orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                         "ignore_eos": True, "stream": stream, **extra})


@pytest.fixture
async def engine() -> AsyncIterator[tuple[SimServer, FakeClock]]:
    clock = FakeClock()  # frozen: no step ends, every stream stays open until the test moves it
    server = await SimServer.start(SimSettings(max_num_seqs=64), model_name="m", clock=clock)
    try:
        yield server, clock
    finally:
        await server.stop()


def pool_for(urls: list[str], cap: int, wait_s: float = WAIT_S) -> tuple[EnginePool, FakeClock]:
    clock = FakeClock()
    return EnginePool([Replica(u) for u in urls], max_connections=cap, connection_wait_s=wait_s, clock=clock), clock


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def at_engine(server: SimServer, count: int) -> None:
    """Wait (bounded) until the engine holds ``count`` requests."""
    for _ in range(500):
        if server.engine.num_running + server.engine.num_waiting == count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the engine holds {server.engine.num_running + server.engine.num_waiting}, not {count}")


async def test_a_request_beyond_the_cap_is_refused_after_the_bounded_wait(engine) -> None:
    server, _ = engine
    pool, clock = pool_for([server.url], cap=2)
    try:
        held = [await pool.post(CHAT, body(), HEADERS) for _ in range(2)]
        third = asyncio.ensure_future(pool.post(CHAT, body(), HEADERS))
        await settle()
        assert not third.done() and pool.connections.waiting == 1  # it waits, it was not sent
        clock.advance(WAIT_S - 0.01)
        await settle()
        assert not third.done()
        clock.advance(0.01)
        with pytest.raises(EngineUnavailableError) as refused:
            await asyncio.wait_for(third, 5)
        error = refused.value
        assert (error.status, error.reason, error.code) == (503, "upstream_saturated", "upstream_saturated")
        assert error.headers["retry-after"] == "1"
        assert error.body()["error"]["type"] == "server_error"
        await at_engine(server, 2)  # the refused request never reached the engine
        assert pool.connections.in_use == 2 and pool.connections.waiting == 0
        for upstream in held:
            upstream.close()
        assert pool.connections.in_use == 0
    finally:
        await pool.close()


async def test_a_waiting_request_gets_the_slot_a_finished_one_frees_first_come_first_served(engine) -> None:
    server, _ = engine
    pool, _ = pool_for([server.url], cap=1)
    try:
        first = await pool.post(CHAT, body(), HEADERS)
        second = asyncio.ensure_future(pool.post(CHAT, body(), HEADERS))
        await settle()
        third = asyncio.ensure_future(pool.post(CHAT, body(), HEADERS))
        await settle()
        assert pool.connections.waiting == 2
        first.close()
        got: UpstreamResponse = await asyncio.wait_for(second, 5)
        assert got.status == 200 and not third.done()  # the slot went to the one that waited longest
        assert pool.connections.in_use == 1
        got.close()
        (await asyncio.wait_for(third, 5)).close()
        assert pool.connections.in_use == 0 and pool.connections.waiting == 0
    finally:
        await pool.close()


async def test_a_waiting_request_whose_client_left_takes_no_slot(engine) -> None:
    server, _ = engine
    pool, _ = pool_for([server.url], cap=1)
    try:
        first = await pool.post(CHAT, body(), HEADERS)
        waiting = asyncio.ensure_future(pool.post(CHAT, body(), HEADERS))
        await settle()
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        first.close()
        assert pool.connections.in_use == 0 and pool.connections.waiting == 0
        (await asyncio.wait_for(pool.post(CHAT, body(), HEADERS), 5)).close()
    finally:
        await pool.close()


async def test_a_slot_handed_over_as_its_request_is_cancelled_is_passed_on(engine) -> None:
    server, _ = engine
    pool, _ = pool_for([server.url], cap=1)
    try:
        first = await pool.post(CHAT, body(), HEADERS)
        doomed = asyncio.ensure_future(pool.post(CHAT, body(), HEADERS))
        await settle()
        after = asyncio.ensure_future(pool.post(CHAT, body(), HEADERS))
        await settle()
        first.close()  # hands the slot to `doomed`, which is cancelled before it runs again
        doomed.cancel()
        await asyncio.gather(doomed, return_exceptions=True)
        (await asyncio.wait_for(after, 5)).close()
        assert pool.connections.in_use == 0
    finally:
        await pool.close()


async def test_with_no_wait_a_full_pool_refuses_at_once(engine) -> None:
    server, _ = engine
    pool, _ = pool_for([server.url], cap=1, wait_s=0)
    try:
        held = await pool.post(CHAT, body(), HEADERS)
        with pytest.raises(EngineUnavailableError) as refused:
            await pool.post(CHAT, body(), HEADERS)
        assert refused.value.reason == "upstream_saturated"
        held.close()
    finally:
        await pool.close()


async def test_slots_come_back_however_a_request_ends(engine) -> None:
    """With one slot and no wait, a slot kept by any ending would refuse the next request."""
    server, sim_clock = engine
    pool, _ = pool_for([server.url], cap=1, wait_s=0)
    try:
        with pytest.raises(UpstreamError):  # an engine's client error (400), relayed
            await pool.post(CHAT, orjson.dumps({"model": "m", "messages": [], "max_tokens": 100_000}), HEADERS)
        with pytest.raises(NotFoundError):  # the engine's 404
            await pool.post(CHAT, body(model="other"), HEADERS)
        full = asyncio.ensure_future(pool.post(CHAT, body(stream=False), HEADERS))
        await at_engine(server, 1)
        await sim_clock.run_for(1.0)
        assert (await (await asyncio.wait_for(full, 5)).read()).startswith(b"{")  # a full answer, read whole
        stream = await pool.post(CHAT, body(), HEADERS)
        await sim_clock.run_for(1.0)
        chunks = []
        while (chunk := await stream.next_chunk()) is not None:
            chunks.append(chunk)
        assert b"[DONE]" in b"".join(chunks)
        stream.close()
        cancelled = asyncio.ensure_future(pool.post(CHAT, body(), HEADERS))
        await asyncio.sleep(0)
        cancelled.cancel()
        await asyncio.gather(cancelled, return_exceptions=True)
        assert pool.connections.in_use == 0
        (await pool.post(CHAT, body(), HEADERS)).close()
    finally:
        await pool.close()
    dead, _ = pool_for([f"http://127.0.0.1:{free_port()}"], cap=1, wait_s=0)
    try:
        for _ in range(2):  # unreachable: refused as such, never as saturated
            with pytest.raises(EngineUnavailableError) as unreachable:
                await dead.post(CHAT, body(), HEADERS)
            assert unreachable.value.reason == "engine_unreachable"
        assert dead.connections.in_use == 0
    finally:
        await dead.close()
