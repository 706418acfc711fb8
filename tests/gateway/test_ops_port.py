"""`sluice serve --ops-port`: the admin API and /metrics on a port of their own, with one process or several."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sluice.config import SimSettings
from sluice.gateway.server import STARTUP_FAILURE
from tests.conftest import LiveSim
from tests.multiprocess.test_workers import HI, KEYS, Supervised, write_config
from tests.redis_server import free_port

CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def sim() -> Iterator[LiveSim]:
    with LiveSim(SimSettings(), model_name="m") as live:
        yield live


def test_every_worker_serves_the_ops_port_and_the_public_port_refuses_it(redis_server, sim, tmp_path):
    redis_server.flush()
    config = write_config(tmp_path / "sluice.yaml", redis_server.url, sim.url)
    ops_port = free_port()
    gateway = Supervised(config, tmp_path / "gateway.log", workers=2, extra=("--ops-port", str(ops_port)))
    try:
        gateway.wait_listening()
        ops = f"http://127.0.0.1:{ops_port}"
        for _ in range(6):  # a connection each: the kernel spreads them over both workers' ops sockets
            merged = httpx.get(ops + "/metrics", timeout=10)
            assert merged.status_code == 200
            assert _value(merged.text, "sluice_gateway_workers") == 2  # whichever worker answered merged both
        assert httpx.get(gateway.url + "/metrics").status_code == 404
        assert httpx.get(gateway.url + "/health").status_code == 200
        assert httpx.get(ops + "/health").status_code == 200
        auth = {"authorization": f"Bearer {KEYS['roomy']}"}
        assert httpx.post(gateway.url + CHAT, json=HI, headers=auth, timeout=10).status_code == 200
        assert httpx.post(ops + CHAT, json=HI, headers=auth, timeout=10).status_code == 404
    finally:
        gateway.stop()


def test_a_taken_ops_port_stops_the_start_with_one_line(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ops_port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "sluice.cli", "serve", "--port", str(free_port()),
                               "--ops-port", str(ops_port)], capture_output=True, text=True, timeout=60,
                              cwd=tmp_path)
    assert done.returncode == STARTUP_FAILURE, done.stderr
    assert f"cannot listen on the operations port 127.0.0.1:{ops_port}" in done.stderr
    assert "Traceback" not in done.stderr


def _value(text: str, name: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    return None


@pytest.mark.parametrize("flags, said", [(["--port", "9000", "--ops-port", "9000"], "is the public port"),
                                         (["--ops-port", "0"], "a port from 1 to 65535")])
def test_an_ops_port_flag_that_cannot_work_is_a_configuration_error(flags, said, capsys):
    from sluice.cli import main

    assert main(["serve", *flags]) == 2
    assert said in capsys.readouterr().err
