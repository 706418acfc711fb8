"""Streams at scale through one gateway, and the pool's cap on upstream connections (``engine.max_connections``).

The engine is the simulator on a real socket, on a fake clock held still: every stream sent to it stays open (its
headers sent, no token yet) until the test lets the clock run. So "5,000 streams at once" is not a matter of
timing: the test waits until the engine holds all 5,000, each through its own gateway connection, then lets them
finish, and checks every one ended with its usage and ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp
import pytest
import yaml
from multidict import CIMultiDict

import sluice
from sluice.clock import FakeClock
from sluice.config import SimSettings, parse_settings
from sluice.sim import SimServer
from tests.conftest import LiveServer, metric_value, serve_gateway, wait_until
from tests.garbage import left_for_the_collector
from tests.gateway_process import GatewayProcess

CHAT = "/v1/chat/completions"
MAX_TOKENS = 3
STREAMS = 5_000
BATCH = 500  # streams opened at a time: the listeners' accept queues are not flooded with SYNs


class FrozenSim:
    """The simulator in a thread of its own, on a fake clock that moves only while ``run()`` lets it."""

    def __init__(self, settings: SimSettings, model_name: str = "m") -> None:
        self.settings = settings
        self.model_name = model_name
        self.clock = FakeClock()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._driver: asyncio.Task[None] | None = None

    def __enter__(self) -> FrozenSim:
        self.thread.start()
        start = SimServer.start(self.settings, model_name=self.model_name, clock=self.clock)
        self.server = asyncio.run_coroutine_threadsafe(start, self.loop).result(timeout=30)
        self.url = self.server.url
        return self

    def __exit__(self, *exc: object) -> None:
        self.hold()
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)

    @property
    def holding(self) -> int:
        """Requests the engine holds (running or waiting)."""
        return self.server.engine.num_running + self.server.engine.num_waiting

    def run(self) -> None:
        """Let time pass (fast) until ``hold()``."""
        async def drive() -> None:
            while True:
                self.clock.advance(0.5)
                await asyncio.sleep(0.001)

        def start() -> None:
            self._driver = self.loop.create_task(drive())

        self.loop.call_soon_threadsafe(start)

    def hold(self) -> None:
        async def stop() -> None:
            if self._driver is not None:
                self._driver.cancel()
                self._driver = None

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(timeout=10)


def chat(model: str = "m") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": MAX_TOKENS,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}


async def one_stream(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    """Send one streamed request and read it to its end: its status, headers, and what its stream said."""
    async with http.post(url + CHAT, json=chat()) as resp:
        raw = await resp.read()
    lines = [line for line in raw.split(b"\n") if line.startswith(b"data: ")]
    usage = None
    for line in lines:
        if b'"usage":{' in line:
            usage = json.loads(line[6:])["usage"]
    return {"status": resp.status, "headers": CIMultiDict(resp.headers), "body": raw, "usage": usage,
            "done": bool(lines) and lines[-1] == b"data: [DONE]"}


def completed(result: dict[str, Any]) -> bool:
    usage = result["usage"]
    return result["status"] == 200 and result["done"] and usage is not None \
        and usage["completion_tokens"] == MAX_TOKENS


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"{needed} file descriptors needed; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


# -- 5,000 streams at once -------------------------------------------------------------------------------


@pytest.fixture
def big_sim() -> Iterator[FrozenSim]:
    # every stream holds one sequence: a seat and a KV block (prompt + output < 16 tokens) each
    settings = SimSettings(max_num_seqs=STREAMS, num_kv_blocks=STREAMS + 1024, max_model_len=8192)
    with FrozenSim(settings) as sim:
        yield sim


async def test_5000_concurrent_streams_through_one_gateway_all_complete(big_sim: FrozenSim, tmp_path: Path) -> None:
    raise_fd_limit(STREAMS * 2 + 2_000)  # here: a client socket and the engine's socket per stream
    config = {
        "server": {"access_log": False},
        "auth": {"mode": "open"},
        "models": [{
            "name": "m",
            "engine": {"urls": [big_sim.url], "max_connections": STREAMS},
            # a window wider than the pool's cap: the gate keeps it at the cap
            "admission": {"watch_load": False, "window": {"initial": STREAMS + 1_000, "max": 8_192}},
        }],
    }
    (tmp_path / "sluice.yaml").write_text(yaml.safe_dump(config))
    gateway = GatewayProcess(tmp_path / "sluice.yaml", tmp_path / "gateway.log")  # its own process, fds, CPU
    try:
        gateway.wait_healthy()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=60, sock_read=300)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as http:
            tasks: list[asyncio.Task[dict[str, Any]]] = []
            for opened in range(BATCH, STREAMS + 1, BATCH):
                tasks += [asyncio.create_task(one_stream(http, gateway.url)) for _ in range(BATCH)]
                await held_by_engine(big_sim, opened, tasks)
            assert big_sim.holding == STREAMS  # all 5,000 at the engine at once, each through the gateway
            assert metric_value(gateway.url, "sluice_requests_in_flight", route=CHAT) == STREAMS
            big_sim.run()
            results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=300)
        failed = [r for r in results if not completed(r)]
        assert not failed, f"{len(failed)} of {STREAMS} streams did not complete, e.g. {failed[0]}"
        assert metric_value(gateway.url, "sluice_requests_in_flight", route=CHAT) == 0
    finally:
        gateway.stop()


async def held_by_engine(sim: FrozenSim, count: int, tasks: list[asyncio.Task[dict[str, Any]]]) -> None:
    """Wait (bounded) until the engine holds ``count`` requests; a stream that ended early fails at once."""
    for _ in range(12_000):
        if sim.holding >= count:
            return
        ended = [t.result() for t in tasks if t.done()]
        assert not ended, f"a stream ended while the engine was held: {ended[0]}"
        await asyncio.sleep(0.01)
    raise AssertionError(f"the engine holds {sim.holding} of {count} streams")


# -- the pool's cap --------------------------------------------------------------------------------------


@pytest.fixture
def small_sim() -> Iterator[FrozenSim]:
    with FrozenSim(SimSettings(max_num_seqs=64)) as sim:
        yield sim


def gateway_for(sim: FrozenSim, cap: int, wait_s: float, admission: dict[str, Any]) -> LiveServer:
    return serve_gateway(parse_settings({
        "auth": {"mode": "open"},
        "models": [{"name": "m", "engine": {"urls": [sim.url], "max_connections": cap, "connection_wait_s": wait_s},
                    "admission": admission}],
    }))


async def test_without_a_gate_requests_beyond_the_cap_get_503_upstream_saturated(small_sim: FrozenSim) -> None:
    with gateway_for(small_sim, cap=4, wait_s=0.3, admission={"enabled": False}) as gw:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            held = [asyncio.create_task(one_stream(http, gw.url)) for _ in range(4)]
            assert await asyncio.to_thread(wait_until, lambda: small_sim.holding == 4)
            refused = await asyncio.wait_for(one_stream(http, gw.url), 30)  # waits its 0.3 s, then refused
            assert refused["status"] == 503
            assert refused["headers"]["x-sluice-reason"] == "upstream_saturated"
            assert refused["headers"]["retry-after"] == "1"
            error = json.loads(refused["body"])["error"]
            assert error["code"] == "upstream_saturated" and error["type"] == "server_error"
            assert set(error) == {"message", "type", "param", "code"}
            with left_for_the_collector() as garbage:  # refusals freed by reference counting, not left in cycles
                for _ in range(3):
                    assert (await asyncio.wait_for(one_stream(http, gw.url), 30))["status"] == 503
                await asyncio.sleep(0.2)
            assert not sluice_frames(garbage)
            assert small_sim.holding == 4  # none of them reached the engine
            small_sim.run()
            assert all(completed(r) for r in await asyncio.wait_for(asyncio.gather(*held), 60))
            assert completed(await asyncio.wait_for(one_stream(http, gw.url), 30))  # the slots came back
        assert metric_value(gw.url, "sluice_rejections_total", reason="upstream_saturated", model="m") == 4


def sluice_frames(garbage: list[object]) -> list[str]:
    return sorted({f"{o.f_code.co_qualname} ({os.path.basename(o.f_code.co_filename)})" for o in garbage
                   if isinstance(o, FrameType) and o.f_code.co_filename.startswith(os.path.dirname(sluice.__file__))})


async def test_with_a_gate_the_window_never_exceeds_the_cap(small_sim: FrozenSim) -> None:
    """The window asks for 64 in flight; the pool has 4 connections. The gate dispatches 4 and queues the rest in
    its own queue (priorities, fair shares, deadlines), where a window above the cap would have sent them on to
    wait for a connection and be refused as saturated."""
    admission = {"watch_load": False, "window": {"kind": "aimd", "initial": 64, "min": 8, "max": 128}}
    with gateway_for(small_sim, cap=4, wait_s=0.05, admission=admission) as gw:
        route = gw.app.state.service.routes["m"]
        gate, pool = route.gate, route.pool
        assert gate.limit.value == 4
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            tasks = [asyncio.create_task(one_stream(http, gw.url)) for _ in range(10)]
            assert await asyncio.to_thread(wait_until, lambda: len(gate.queue) == 6 and small_sim.holding == 4)
            assert (gate.in_flight, pool.connections.in_use, pool.connections.waiting) == (4, 4, 0)
            assert metric_value(gw.url, "sluice_admission_limit", model="m") == 4
            assert metric_value(gw.url, "sluice_upstream_connections", model="m", state="in_use") == 4
            assert metric_value(gw.url, "sluice_upstream_connections", model="m", state="waiting") == 0
            assert metric_value(gw.url, "sluice_upstream_connections_limit", model="m") == 4
            small_sim.run()
            results = await asyncio.wait_for(asyncio.gather(*tasks), 60)
        assert [r["status"] for r in results] == [200] * 10 and all(map(completed, results))
        assert gate.limit.value <= 4  # the adaptive window grew on successes, up to the cap and no further
        assert metric_value(gw.url, "sluice_rejections_total", reason="upstream_saturated", model="m") is None
