"""Failures must be freed by reference counting, not left to the garbage collector.

An exception whose traceback holds a frame that holds the exception (a local, a future, a chained cause) keeps the
request's whole call stack alive until a collection. Under overload the gateway refuses thousands of requests a
second; left in cycles, they made young collections of ~10 ms and full ones of ~100 ms that stalled every stream
(the overload benchmark's premium p99, see docs/benchmarks.md). These tests send failing requests with the
collector off, then look for Sluice's frames among what only a collection could free.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from types import FrameType

import httpx
import pytest

import sluice
from sluice.config import SimSettings, parse_settings
from tests.conftest import LiveSim, serve_gateway
from tests.garbage import left_for_the_collector
from tests.redis_server import free_port

CHAT = "/v1/chat/completions"
SLUICE_DIR = os.path.dirname(sluice.__file__)
HELLO = {"messages": [{"role": "user", "content": "hello"}]}


def frames_left_for_the_collector(send: Callable[[], httpx.Response], times: int = 4) -> list[str]:
    for _ in range(2):
        send()  # first-time paths (imports, caches, connections) out of the way
    time.sleep(0.2)
    with left_for_the_collector() as garbage:
        for _ in range(times):
            send()
        time.sleep(0.2)  # the gateway's thread settles and logs after the answer is sent
    return sorted({f"{o.f_code.co_qualname} ({os.path.basename(o.f_code.co_filename)})" for o in garbage
                   if isinstance(o, FrameType) and o.f_code.co_filename.startswith(SLUICE_DIR)})


@pytest.fixture(scope="module")
def sim() -> Iterator[LiveSim]:
    with LiveSim(SimSettings(max_num_seqs=1, max_waiting=0), model_name="engine") as live:
        yield live


@pytest.fixture(scope="module")
def gateway(sim: LiveSim) -> Iterator[httpx.Client]:
    dead = free_port()  # nothing listens on it
    settings = parse_settings({"auth": {"mode": "open"}, "models": [
        {"name": "m", "engine": {"urls": [sim.url], "served_model": "engine"}},
        {"name": "dead", "engine": {"urls": [f"http://127.0.0.1:{dead}"]}},
    ]})
    with serve_gateway(settings) as live, httpx.Client(base_url=live.url, timeout=30) as client:
        yield client


def test_an_error_from_the_engine(gateway: httpx.Client) -> None:
    def send() -> httpx.Response:
        r = gateway.post(CHAT, json={"model": "m", **HELLO, "max_tokens": 100_000})
        assert r.status_code == 400 and "maximum context length" in r.json()["error"]["message"]
        return r

    assert frames_left_for_the_collector(send) == []


def test_an_engine_that_is_full(gateway: httpx.Client) -> None:
    def send() -> httpx.Response:
        r = gateway.post(CHAT, json={"model": "m", **HELLO, "max_tokens": 4})
        assert r.status_code == 503 and r.headers["x-sluice-reason"] == "engine_overloaded"
        return r

    long = {"model": "m", **HELLO, "max_tokens": 4000, "ignore_eos": True, "stream": True}
    with gateway.stream("POST", CHAT, json=long) as held:
        lines = held.iter_lines()  # kept referenced: a dropped line iterator closes the stream
        next(lines)  # the engine's only seat is taken, and its queue holds nothing
        assert frames_left_for_the_collector(send) == []


def test_an_engine_that_cannot_be_reached(gateway: httpx.Client) -> None:
    def send() -> httpx.Response:
        r = gateway.post(CHAT, json={"model": "dead", **HELLO, "max_tokens": 4})
        assert r.status_code in (502, 503), r.text  # unreachable, then its circuit opens
        return r

    assert frames_left_for_the_collector(send) == []
