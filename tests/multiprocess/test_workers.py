"""`sluice serve --workers 2` on a real Redis: one port, two processes, limits exact across them, one /metrics for
both, a killed worker restarted, nothing left behind after SIGTERM (or after the supervisor itself is killed)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from sluice.config import SimSettings
from sluice.identity import hash_key
from tests.conftest import LiveSim, wait_until
from tests.redis_server import free_port

KEYS = {"burst": "sk-sluice-workers-burst-0123456789", "roomy": "sk-sluice-workers-roomy-0123456789"}
BURST = 12
CHAT = "/v1/chat/completions"
HI = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


class Supervised:
    """`sluice serve --workers N` as a child process, read through its log."""

    def __init__(self, config: Path, log: Path, workers: int = 2, extra: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sluice.cli", "serve", "--config", str(config), "--port", str(self.port),
             "--workers", str(workers), *extra],
            stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=log.parent,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_listening(self, timeout_s: float = 60.0) -> None:
        assert wait_until(lambda: "Workers: " in self.log() or self.proc.poll() is not None, timeout_s), self.log()
        assert self.proc.poll() is None, self.log()

    def worker_pids(self) -> dict[int, int]:
        """Worker index -> pid of its current process, from the supervisor's log."""
        text = self.log()
        listed = re.search(r"Workers: \d+ processes \(pids ([\d, ]+)\)", text)
        assert listed is not None, text
        pids = dict(enumerate(int(p) for p in listed.group(1).split(", ")))
        for index, pid in re.findall(r"^worker (\d+) restarted \(pid (\d+)\)", text, re.MULTILINE):
            pids[int(index)] = int(pid)
        return pids

    def metrics_dir(self) -> Path:
        found = re.search(r"their sockets: (\S+)", self.log())
        assert found is not None
        return Path(found.group(1))

    def descendants(self) -> set[int]:
        found, todo = set(), [self.proc.pid]
        while todo:
            pid = todo.pop()
            for task in Path(f"/proc/{pid}/task").glob("*"):
                for child in (task / "children").read_text().split():
                    found.add(int(child))
                    todo.append(int(child))
        return found

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except FileNotFoundError:
        return ""


def running(pid: int) -> bool:
    """Alive and not a zombie (a zombie has closed its sockets; its parent just has not reaped it yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def worker_exposition(directory: Path, index: int) -> str:
    """One worker's own metrics, from its unix socket (as `curl --unix-socket` would read them)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(directory / f"worker-{index}.sock"))
        sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200"), head
    return body.decode()


def total(text: str, name: str, **labels: str) -> float:
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def write_config(path: Path, state: str, sim_url: str) -> Path:
    config = {
        "state": state,
        "models": [{"name": "m", "engine": {"urls": [sim_url]}}],
        "tiers": {
            "burst": {"requests": {"rate": "6/hour", "burst": BURST}},  # within the test: exactly 12 get through
            "roomy": {"requests": "100000/hour"},
        },
        "keys": [{"id": f"w-{t}", "hash": hash_key(k), "tier": t} for t, k in KEYS.items()],
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def sim() -> Iterator[LiveSim]:
    with LiveSim(SimSettings(), model_name="m") as live:
        yield live


@pytest.fixture(scope="module")
def config(redis_server, sim, tmp_path_factory) -> Path:
    redis_server.flush()
    return write_config(tmp_path_factory.mktemp("workers") / "sluice.yaml", redis_server.url, sim.url)


@pytest.fixture(scope="module")
def gateway(config, tmp_path_factory) -> Iterator[Supervised]:
    supervised = Supervised(config, tmp_path_factory.mktemp("workers-log") / "gateway.log")
    try:
        supervised.wait_listening()
        yield supervised
    finally:
        supervised.stop()


async def flood(url: str, key: str, count: int) -> list[int]:
    """``count`` concurrent requests, each on a connection of its own (the kernel spreads connections)."""
    connector = aiohttp.TCPConnector(force_close=True, limit=0)
    async with aiohttp.ClientSession(connector=connector, headers={"authorization": f"Bearer {key}"}) as http:
        async def one() -> int:
            async with http.post(url + CHAT, json=HI) as r:
                await r.read()
                return r.status

        return await asyncio.gather(*(one() for _ in range(count)))


def test_workers_on_memory_state_are_refused_in_one_line(tmp_path: Path) -> None:
    for argv in (["serve", "--workers", "2"], ["serve", "--workers", "0"]):
        done = subprocess.run([sys.executable, "-m", "sluice.cli", *argv, "--port", str(free_port())],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done
        assert "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "needs shared state (state: redis://...)" in subprocess.run(
        [sys.executable, "-m", "sluice.cli", "serve", "--workers", "2"], capture_output=True, text=True,
        timeout=60).stderr


def test_a_port_taken_by_another_process_is_one_line_and_exit_status_3(config: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "sluice.cli", "serve", "--config", str(config), "--port",
                               str(port), "--workers", "2"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in done.stderr
    assert "Traceback" not in done.stderr


async def test_the_limit_holds_exactly_across_both_workers_and_metrics_add_up(gateway: Supervised) -> None:
    statuses = await flood(gateway.url, KEYS["burst"], 80)
    assert statuses.count(200) == BURST, statuses
    assert statuses.count(429) == 80 - BURST
    directory = gateway.metrics_dir()
    assert directory.stat().st_mode & 0o777 == 0o700  # the workers' own expositions: for the gateway's user only
    own = [total(worker_exposition(directory, i), "sluice_requests_total", route=CHAT, tier="burst") for i in (0, 1)]
    assert all(n > 0 for n in own), own  # both workers answered: the limit was shared, not one process's
    assert sum(own) == 80
    merged = httpx.get(gateway.url + "/metrics", timeout=10).text
    assert total(merged, "sluice_requests_total", route=CHAT, tier="burst") == 80
    assert total(merged, "sluice_requests_total", route=CHAT, tier="burst", status="200") == BURST
    assert total(merged, "sluice_gateway_workers") == 2
    alone = httpx.get(gateway.url + "/metrics?worker=self", timeout=10).text
    assert total(alone, "sluice_requests_total", route=CHAT, tier="burst") in own


def test_a_killed_worker_is_restarted_and_the_service_keeps_answering(gateway: Supervised) -> None:
    before = gateway.worker_pids()
    os.kill(before[0], signal.SIGKILL)
    assert wait_until(lambda: not running(before[0]), 10)
    statuses = []
    with httpx.Client(headers={"authorization": f"Bearer {KEYS['roomy']}"}, timeout=10) as http:
        while gateway.worker_pids()[0] == before[0] or len(statuses) < 20:
            statuses.append(http.post(gateway.url + CHAT, json=HI, headers={"connection": "close"}).status_code)
            assert len(statuses) < 5000, gateway.log()
    assert set(statuses) == {200}
    after = gateway.worker_pids()
    assert after[0] != before[0] and running(after[0]) and after[1] == before[1]
    assert f"worker 0 (pid {before[0]}) exited with -9" in gateway.log()
    assert wait_until(lambda: total(httpx.get(gateway.url + "/metrics", timeout=10).text,
                                    "sluice_gateway_workers") == 2, 10)
    os.kill(after[0], signal.SIGKILL)  # dying again soon after its restart: the next restart waits twice as long
    assert wait_until(lambda: gateway.worker_pids()[0] != after[0], 30), gateway.log()
    assert f"worker 0 (pid {after[0]}) exited with -9; restarting it in 1.0 s" in gateway.log()


async def test_sigterm_drains_a_stream_and_leaves_no_process_behind(config: Path, tmp_path: Path) -> None:
    supervised = Supervised(config, tmp_path / "gateway.log")
    try:
        supervised.wait_listening()
        processes = supervised.descendants()
        assert set(supervised.worker_pids().values()) <= processes
        directory = supervised.metrics_dir()
        body = {**HI, "max_tokens": 150, "stream": True, "ignore_eos": True}
        async with aiohttp.ClientSession(headers={"authorization": f"Bearer {KEYS['roomy']}"}) as http:
            async with http.post(supervised.url + CHAT, json=body) as r:
                assert r.status == 200
                await r.content.readline()  # the stream has begun
                supervised.proc.send_signal(signal.SIGTERM)
                rest = await r.read()
        assert rest.rstrip().endswith(b"data: [DONE]")  # the worker drained it before exiting
        assert supervised.proc.wait(timeout=40) == 0
        assert wait_until(lambda: not any(running(pid) for pid in processes), 10), processes
        assert not directory.exists()
        assert supervised.log().count("Sluice is listening") == 1
    finally:
        supervised.stop()


def test_workers_do_not_outlive_a_killed_supervisor(config: Path, tmp_path: Path) -> None:
    supervised = Supervised(config, tmp_path / "gateway.log")
    try:
        supervised.wait_listening()
        workers = set(supervised.worker_pids().values())
        directory = supervised.metrics_dir()
        supervised.proc.kill()
        supervised.proc.wait(timeout=10)
        assert wait_until(lambda: not any(running(pid) for pid in workers), 30), workers
        with pytest.raises(httpx.ConnectError):
            httpx.get(supervised.url + "/health", timeout=2)
        shutil.rmtree(directory)  # a killed supervisor cannot remove its socket directory: the test does
    finally:
        supervised.stop()


def test_engines_of_model_are_launched_once_before_the_workers_and_stopped_after(config: Path, tmp_path: Path) -> None:
    supervised = Supervised(config, tmp_path / "gateway.log",
                            extra=("--model", "demo", "--backend", "sim", "--replicas", "1"))
    try:
        supervised.wait_listening()
        engines = [pid for pid in supervised.descendants() if " sluice.cli sim " in command_line(pid)]
        assert len(engines) == 1, [command_line(pid) for pid in supervised.descendants()]  # workers never launch
        text = supervised.log()
        assert text.count("starting vllm replica") == 1
        healthy = text.index("is healthy")
        assert healthy < text.index("[worker 0]") and healthy < text.index("[worker 1]")
        with httpx.Client(timeout=10) as http:
            answers = [http.post(supervised.url + CHAT, json={**HI, "model": "demo"}, headers={
                "authorization": f"Bearer {KEYS['roomy']}", "connection": "close"}) for _ in range(20)]
        assert [a.status_code for a in answers] == [200] * 20
        assert {a.json()["model"] for a in answers} == {"demo"}
        supervised.proc.send_signal(signal.SIGTERM)
        assert supervised.proc.wait(timeout=40) == 0
        assert wait_until(lambda: not running(engines[0]), 15)
    finally:
        supervised.stop()
