"""A real DNS server for the tests: Debian's dnsmasq on 127.0.0.1 and a free port, answering only from its own records.

Addresses (A and AAAA) come from a hosts file: ``set_hosts`` rewrites it and sends SIGHUP, on which dnsmasq clears
its cache and re-reads it (its log says ``read FILE - N names``; we wait for that line). SRV records and CNAMEs are
command-line options, which SIGHUP does not re-read: ``set_records`` restarts the server on the same port. Names
under ``domain`` that it does not know are NXDOMAIN (``--local``); it forwards nothing anywhere (``--no-resolv``).
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.message
import dns.query


def dnsmasq_binary() -> str | None:
    return shutil.which("dnsmasq") or next((p for p in ("/usr/sbin/dnsmasq",) if os.access(p, os.X_OK)), None)


def required() -> bool:
    """In CI a missing dnsmasq is a failure, not a skip (.ci/run installs it)."""
    return bool(os.environ.get("CI"))


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (dnsmasq listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket() as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no port free for both UDP and TCP")


@dataclass(frozen=True)
class Srv:
    name: str
    target: str
    port: int
    priority: int = 0
    weight: int = 100


class DnsServer:
    """One dnsmasq, stopped by its PID; ``pause``/``resume`` freeze it (SIGSTOP/SIGCONT) to make it unreachable."""

    def __init__(self, binary: str, domain: str = "cluster.local") -> None:
        self.binary = binary
        self.domain = domain
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="sluice-dns-"))
        self.hosts_path = self.dir / "hosts"
        self.log_path = self.dir / "dnsmasq.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._srv: list[Srv] = []
        self._cnames: dict[str, str] = {}
        self._hosts: dict[str, Sequence[str]] = {}

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, hosts: Mapping[str, Sequence[str]] | None = None, srv: Sequence[Srv] = (),
              cnames: Mapping[str, str] | None = None) -> DnsServer:
        self._hosts = dict(hosts or {})
        self.hosts_path.write_text(_hosts_file(self._hosts))
        self._srv, self._cnames = list(srv), dict(cnames or {})
        args = [self.binary, "--keep-in-foreground", "--conf-file=/dev/null", f"--user={getpass.getuser()}",
                f"--port={self.port}", "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
                f"--addn-hosts={self.hosts_path}", f"--local=/{self.domain}/", "--pid-file=", "--log-facility=-",
                "--log-queries"]
        args += [f"--srv-host={r.name},{r.target},{r.port},{r.priority},{r.weight}" for r in self._srv]
        args += [f"--cname={alias},{target}" for alias, target in self._cnames.items()]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log)
        self._wait_answering()
        return self

    def set_hosts(self, hosts: Mapping[str, Sequence[str]]) -> None:
        """Serve these addresses from now on (a reload, as a headless Service's endpoints change)."""
        assert self.proc is not None
        reads = self._reads()
        self._hosts = dict(hosts)
        self.hosts_path.write_text(_hosts_file(hosts))
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while self._reads() == reads:
            if time.monotonic() > deadline:
                raise RuntimeError(f"dnsmasq did not re-read {self.hosts_path}: {self.log_path.read_text()[-500:]}")
            time.sleep(0.01)

    def set_records(self, srv: Sequence[Srv], cnames: Mapping[str, str] | None = None) -> None:
        """Serve these SRV records (and CNAMEs) from now on: a restart on the same port, the addresses kept."""
        self.stop()
        self.start(self._hosts, srv, cnames)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)  # a paused process dies only once it runs again
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def queries(self, name: str, rdtype: str) -> int:
        """How many ``rdtype`` queries of ``name`` it has received (its log says ``query[A] NAME from ...``)."""
        return self.log_path.read_text(errors="replace").count(f"query[{rdtype}] {name} from ")

    def close(self) -> None:
        """Stop it and remove its files."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _reads(self) -> int:
        return self.log_path.read_text(errors="replace").count(f"read {self.hosts_path} - ")

    def _wait_answering(self) -> None:
        deadline = time.monotonic() + 10
        probe = dns.message.make_query(f"probe.{self.domain}", "A")
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"dnsmasq exited: {self.log_path.read_text()[-1000:]}")
            try:
                dns.query.udp(probe, "127.0.0.1", port=self.port, timeout=0.2)
                return
            except (dns.exception.Timeout, OSError):
                time.sleep(0.02)
        raise RuntimeError("dnsmasq did not answer")


def _hosts_file(hosts: Mapping[str, Sequence[str]]) -> str:
    return "".join(f"{address} {name}\n" for name, addresses in hosts.items() for address in addresses)
