"""A real Redis Cluster for the tests: three masters and three replicas, each a redis-server on 127.0.0.1 and a free
port with its own directory, joined by ``redis-cli --cluster create``. Nodes can be paused (SIGSTOP), resumed,
killed and restarted by PID; ``stop`` ends every one of them."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

from tests.redis_server import free_port

NODE_TIMEOUT_MS = 1000  # how long a silent master is waited for before its replica takes over


def redis_cli() -> str | None:
    return shutil.which("redis-cli")


def command(port: int, *args: str, timeout_s: float = 2.0) -> str:
    """One command through redis-cli, its answer as text."""
    cli = redis_cli()
    assert cli is not None
    return subprocess.run([cli, "-h", "127.0.0.1", "-p", str(port), *args], capture_output=True, text=True,
                          timeout=timeout_s, check=True).stdout


def _answers(port: int, line: bytes = b"PING\r\n", expect: bytes = b"+PONG", timeout_s: float = 0.3) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
            s.sendall(line)
            return s.recv(64).startswith(expect)
    except OSError:
        return False


@dataclass
class ClusterNode:
    binary: str
    port: int = field(default_factory=free_port)
    bus_port: int = field(default_factory=free_port)  # its own (the default, port + 10000, may be taken or > 65535)
    dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="sluice-cluster-"))
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
             "--cluster-port", str(self.bus_port),
             "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
             "--repl-diskless-sync-delay", "0",  # a replica in sync at once (one never synced cannot take over)
             "--save", "", "--appendonly", "no", "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not _answers(self.port):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"redis-server (cluster node) on port {self.port} did not start")
            time.sleep(0.02)

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def kill(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)  # a paused process must be able to die
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def info(self, what: str = "cluster info") -> str:
        return command(self.port, *what.split())


class RedisCluster:
    """Three masters, three replicas (one each)."""

    def __init__(self, binary: str, masters: int = 3) -> None:
        self.nodes = [ClusterNode(binary) for _ in range(2 * masters)]

    @property
    def url(self) -> str:
        """The state URL: every node a seed (any one that answers gives the client the slot map)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self) -> RedisCluster:
        try:
            for node in self.nodes:
                node.start()
            subprocess.run([redis_cli() or "redis-cli", "--cluster", "create",
                            *(f"127.0.0.1:{n.port}" for n in self.nodes), "--cluster-replicas", "1",
                            "--cluster-yes"], capture_output=True, timeout=60, check=True)
            self.wait_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        """Until every running node says the cluster is ok, and every replica is in sync with its master (one that
        never synced could not take over)."""
        deadline = time.monotonic() + timeout_s
        for node in [n for n in self.nodes if n.proc is not None]:
            while not self._ready(node):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the cluster is not ok on port {node.port}: {node.info()}")
                time.sleep(0.05)

    @staticmethod
    def _ready(node: ClusterNode) -> bool:
        replication = node.info("info replication")
        return "cluster_state:ok" in node.info() and (
            "role:slave" not in replication or "master_link_status:up" in replication)

    def node_on(self, port: int) -> ClusterNode:
        return next(n for n in self.nodes if n.port == port)

    def master_of(self, key: str, asking: ClusterNode | None = None) -> ClusterNode:
        """The master serving ``key``'s slot, as a running node sees the cluster."""
        found = self.serving(key, asking)
        if found is None:
            raise RuntimeError(f"no master serves {key}'s slot")
        return found

    def serving(self, key: str, asking: ClusterNode | None = None) -> ClusterNode | None:
        """The master serving ``key``'s slot, as a running node sees the cluster (None: none, e.g. it failed and
        no replica took over yet)."""
        seen_by = asking or next(n for n in self.nodes if n.proc is not None)
        slot = int(command(seen_by.port, "cluster", "keyslot", key).strip())
        for line in seen_by.info("cluster nodes").splitlines():
            fields = line.split()
            if "master" not in fields[2] or "fail" in fields[2]:
                continue
            for span in fields[8:]:
                low, _, high = span.partition("-")
                if low.isdigit() and int(low) <= slot <= int(high or low):
                    return self.node_on(int(fields[1].split("@")[0].rsplit(":", 1)[1]))
        return None

    def role(self, node: ClusterNode, seen_by: ClusterNode) -> str:
        """``master`` or ``slave`` (with ``fail`` when it is known down), as ``seen_by`` sees ``node``."""
        for line in seen_by.info("cluster nodes").splitlines():
            fields = line.split()
            if fields[1].split("@")[0].endswith(f":{node.port}"):
                return fields[2]
        raise RuntimeError(f"node {node.port} unknown to {seen_by.port}")

    def flush(self) -> None:
        for node in self.nodes:
            if node.proc is not None and "role:master" in command(node.port, "info", "replication"):
                command(node.port, "flushall")

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()
        for node in self.nodes:
            shutil.rmtree(node.dir, ignore_errors=True)
