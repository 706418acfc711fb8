"""Where Sluice's CPU goes under load, step by step of the pipeline: py-spy samples of "Sluice, everything on"
(API keys, quotas on a real Redis, admission, metrics, access log) at concurrency 64, folded by pipeline step.

    python -m bench.profile_gateway     # --seconds 10 --rate 500; or with the peers: python -m bench.peers --profile

The gateway runs alone on CPU 1, the simulator (``--speed 1e9``, 16-token answers), Redis, wrk (64 connections)
and py-spy (in its own venv under the peers' cache directory, ``--nonblocking``: the gateway is never paused) on
CPU 0. py-spy counts only samples where a thread is running, so a step's share is its share of the gateway's CPU
(waiting, such as the quota batch's wait for its round trip, costs latency, not CPU, and does not show here).
Each sample goes to the step of its innermost frame that is Sluice's (by module, below) or a known library's (uvicorn
and httptools: HTTP server; aiohttp: the engine client; redis: quota; prometheus_client: metrics; logging: access
log); a sample with neither is the event loop's (uvloop, asyncio task steps).
Output: the table of shares (non-streamed and streamed), the top functions, and bench/results/profile_gateway.json.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import (
    RESULTS_DIR,
    Processes,
    command_line,
    exit_on_signals,
    git_commit,
    log,
    machine,
    write_result,
)
from bench.peers.install import wheel_command
from bench.peers.proxies import start, start_upstream, wrk_scripts
from bench.peers.settings import PY_SPY, cache_dir

RESULTS = RESULTS_DIR / "profile_gateway.json"
CONNECTIONS = 64
# (step, module prefixes under sluice/), innermost Sluice frame first; the first prefix that matches decides.
SLUICE_STEPS = (
    ("HTTP parse and server (uvicorn, httptools, Sluice's protocol)", ("gateway/_http_protocol", "gateway/server",
                                                                       "gateway/_connections", "gateway/_exchange")),
    ("ASGI layer, middleware, routes", ("gateway/_asgi", "gateway/middleware", "gateway/app", "gateway/routes/",
                                        "gateway/_responses", "gateway/_disconnect")),
    ("auth (API key lookup)", ("identity/",)),
    ("pricing (prompt tokens)", ("quota/_pricing", "quota/_tokenizer")),
    ("quota (limiter, Redis store, batching, headers)", ("quota/", "state")),
    ("admission", ("admission/", "gateway/_gates")),
    ("upstream client (engine call and its answer)", ("engines/_pool", "engines/_backend", "engines/_errors",
                                                    "engines/_http_client", "engines/_http_connection")),
    ("routing (pool, replicas)", ("engines/",)),
    ("SSE relay and usage reconcile", ("gateway/_relay", "gateway/_resume", "protocol/_sse")),
    ("request parsing and validation", ("protocol/",)),
    ("access log", ("telemetry/_access_log", "telemetry/_log_limit")),
    ("usage accounting", ("telemetry/_usage",)),
    ("metrics", ("telemetry/",)),
    ("response cache", ("cache/",)),
    ("pipeline glue (gateway/service.py, flight, route)", ("gateway/",)),
)
# A sample without any Sluice frame: its innermost library frame.
LIBRARY_STEPS = (
    ("HTTP parse and server (uvicorn, httptools, Sluice's protocol)", ("/uvicorn/", "/httptools/", "/h11/")),
    ("ASGI layer, middleware, routes", ("/starlette/",)),
    ("quota (limiter, Redis store, batching, headers)", ("/redis/",)),
    ("upstream client (engine call and its answer)", ("/aiohttp/", "/httpx/", "/httpcore/", "/yarl/", "/multidict/")),
    ("metrics", ("/prometheus_client/",)),
    ("access log", ("/logging/",)),
)
# Sluice frames that are no step of their own: the process's main (every sample has it) and small helpers whose
# caller is the step (the clock, request ids).
SLUICE_PASS_THROUGH = ("cli", "clock", "ids")
EVENT_LOOP = "event loop (uvloop, asyncio task steps, no Sluice frame)"


def frame_file(frame: str) -> str:
    """``func (path/file.py:12)`` -> ``path/file.py``."""
    inner = frame.rpartition(" (")[2]
    return inner.rstrip(")").rpartition(":")[0]


def step_of(frames: list[str]) -> tuple[str, str]:
    """The pipeline step of one sample (frames root first) and the innermost Sluice function, if any: the innermost
    frame that is a known library's (the HTTP server, the engine and Redis clients, prometheus_client, logging) or
    Sluice's own (by module) decides; other frames (json, pydantic, asyncio) count for the code that called them."""
    func = ""
    for frame in reversed(frames):
        path = frame_file(frame)
        if "/sluice/" in path and "/sluice/sim/" not in path:
            module = path.rpartition("/sluice/")[2]
            if module.startswith(SLUICE_PASS_THROUGH):
                continue
            func = f"{frame.partition(' (')[0]} ({module})"
            for step, prefixes in SLUICE_STEPS:
                if module.startswith(prefixes):
                    return step, func
            return f"other Sluice code ({module})", func
        for step, parts in LIBRARY_STEPS:
            if any(part in path for part in parts):
                return step, func
    return EVENT_LOOP, func


def fold(raw: str) -> dict[str, Any]:
    """py-spy's raw (collapsed) stacks, summed by step, with the top innermost Sluice functions and leaf frames."""
    steps: collections.Counter[str] = collections.Counter()
    funcs: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        step, func = step_of(frames)
        steps[step] += count
        if func:
            funcs[func] += count
        leaves[frames[-1]] += count
        total += count
    return {"samples": total, "steps": dict(steps.most_common()),
            "top_sluice_functions": dict(funcs.most_common(15)), "top_leaf_frames": dict(leaves.most_common(15))}


def record(py_spy: Path, pid: int, seconds: int, rate: int, out: Path) -> str:
    argv = ["taskset", "-c", "0", str(py_spy), "record", "--nonblocking", "--full-filenames", "-r", str(rate),
            "-d", str(seconds),
            "-f", "raw", "-o", str(out), "-p", str(pid)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(f"py-spy failed ({done.returncode}): {done.stderr[-500:]}")
    return out.read_text()


def profile_under_load(wrk: str, pid: int, base_url: str, script_full: Path, script_stream: Path, py_spy: Path,
                       seconds: int, workdir: Path, rate: int = 500) -> dict[str, Any]:
    """Profile the gateway ``pid`` for ``seconds`` under wrk (64 connections), non-streamed then streamed."""
    modes: dict[str, Any] = {}
    for mode, script in (("full", script_full), ("stream", script_stream)):
        load = subprocess.Popen(
            ["taskset", "-c", "0", wrk, "-t1", f"-c{CONNECTIONS}", f"-d{seconds + 3}s", "--timeout", "10s", "-s",
             str(script), base_url + "/v1/chat/completions"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            time.sleep(1.5)  # wrk connected and the gateway busy before sampling starts
            raw = record(py_spy, pid, seconds, rate, workdir / f"profile-{mode}.txt")
        finally:
            load.wait(timeout=seconds + 60)
        folded = fold(raw)
        folded["cpu_share_of_one_core"] = folded["samples"] / (rate * seconds)
        modes[mode] = folded
        log(f"profiled {mode}: {folded['samples']} samples")
    return {"connections": CONNECTIONS, "seconds": seconds, "rate_hz": rate, "modes": modes,
            "table": table(modes)}


def table(modes: dict[str, Any]) -> str:
    steps = list(dict.fromkeys(s for m in modes.values() for s in m["steps"]))
    names = list(modes)
    lines = ["| pipeline step | " + " | ".join(f"share of CPU, {n}" for n in names) + " |",
             "|---|" + "---:|" * len(names)]
    for step in sorted(steps, key=lambda s: -sum(m["steps"].get(s, 0) / max(1, m["samples"]) for m in
                                                   modes.values())):
        lines.append(f"| {step} | " + " | ".join(
            f"{100 * modes[n]['steps'].get(step, 0) / max(1, modes[n]['samples']):.1f}%" for n in names) + " |")
    lines.append("| samples (share of one core busy) | " + " | ".join(
        f"{modes[n]['samples']} ({100 * modes[n]['cpu_share_of_one_core']:.0f}%)" for n in names) + " |")
    for n in names:
        lines += ["", f"Innermost Sluice functions, {n} (share of samples):", ""]
        lines += [f"- {100 * c / max(1, modes[n]['samples']):.1f}% {f}" for f, c in
                  list(modes[n]["top_sluice_functions"].items())[:10]]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rate", type=int, default=500, help="samples per second (default 500)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--raw", type=Path, help="keep py-spy's raw stacks (profile-full.txt, profile-stream.txt) here")
    args = parser.parse_args()
    exit_on_signals()
    py_spy = wheel_command(PY_SPY, cache_dir())
    with tempfile.TemporaryDirectory(prefix="sluice-profile-") as tmp:
        workdir = Path(tmp)
        procs = Processes(workdir)
        try:
            up = start_upstream(procs, workdir)
            gateway = start("sluice_full", procs, up, {})
            scripts = wrk_scripts(up)
            profile = profile_under_load("wrk", gateway.proc.pid, gateway.base_url, scripts[False], scripts[True],
                                         py_spy, args.seconds, workdir, args.rate)
            if args.raw:
                args.raw.mkdir(parents=True, exist_ok=True)
                for raw in workdir.glob("profile-*.txt"):
                    shutil.copy(raw, args.raw / raw.name)
        finally:
            procs.stop_all()
    result = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "command": command_line(),
              "commit": git_commit(), "machine": machine(wrk=True), **profile}
    write_result(args.output, result)
    print(profile["table"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
