"""An interleaved A/B of Sluice's CPU per request: the working tree's gateway beside an earlier revision's and the
bare proxy, all running at once, measured in turns (one round: each target non-streamed, then each streamed), so
that the machine's drift (±10% run to run on a shared VM) hits every target alike; the ratios to the bare proxy are
taken round by round.

    python -m bench.ab --base HEAD~3            # --rounds 3 --duration 4; --targets bare_proxy,base,sluice_full
    python -m bench.ab --base HEAD~3 --quota-wait    # and the time each request spends in the quota step
    python -m bench.ab --targets bare_proxy,sluice_open,sluice_full,sluice_full-quota,sluice_full-admission

Targets: ``bare_proxy``, ``sluice_open``, ``sluice_full`` (bench/peers/proxies.py: everything on, quotas on a real
Redis), ``sluice_full-<part>``: everything on but one part, what that part costs (``quota``: the tier without limits;
``redis``: the quotas kept in memory; ``admission``; ``access_log``), and ``base``: ``sluice_full`` as of ``--base``
(a git revision, checked out in a temporary worktree and run from its ``src``). The simulator (``--speed 1e9``,
16-token answers), Redis and wrk (64 connections) run on CPU 0, every gateway on CPU 1. Output: per target and mode,
CPU µs per request, p50/p99, EVALSHA calls per request, the ratio to the bare proxy per round (median last), and what
the run cost CPU 0 (the load's CPU: at 64 connections it is the one that is full, so Redis' and the simulator's CPU
per request set the requests/s, hence the latency, of a closed loop); with ``--quota-wait``, the quota step's time per
request (p50/p90/p99: a probe, bench/probes/sitecustomize.py, in each Sluice target). bench/results/ab.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from bench.harness import (
    RESULTS_DIR,
    ROOT,
    Processes,
    command_line,
    cpu_ticks,
    exit_on_signals,
    free_port,
    git_commit,
    machine,
    process_cpu_s,
    run_wrk,
    wait_until_up,
    write_result,
)
from bench.peers.proxies import Started, Upstream, sluice_yaml, start, start_upstream, wrk_scripts
from bench.peers.settings import PROXY_CPU

RESULTS = RESULTS_DIR / "ab.json"
PROBES = Path(__file__).parent / "probes"
CONNECTIONS = 64


def start_base(procs: Processes, up: Upstream, src: Path, env: dict[str, str] | None = None) -> Started:
    """``sluice_full`` run from another checkout's ``src``."""
    port = free_port()
    config = up.workdir / "base.yaml"
    config.write_text(sluice_yaml(port, up, full=True))
    paths = ":".join(p for p in (str(src), (env or {}).get("PYTHONPATH")) if p)
    proc = procs.start("base", PROXY_CPU, [sys.executable, "-m", "sluice.cli", "serve", "--config", str(config)],
                       env={**(env or {}), "PYTHONPATH": paths})
    wait_until_up(proc, f"http://127.0.0.1:{port}/health")
    return Started(proc, f"http://127.0.0.1:{port}", config.read_text())


def probe_env(name: str, workdir: Path) -> dict[str, str] | None:
    """The quota-wait probe's environment for a Sluice target (None for another)."""
    if name == "bare_proxy":
        return None
    return {"PYTHONPATH": str(PROBES), "SLUICE_PROBE_QUOTA_WAIT": str(workdir / f"quota-wait-{name}.json")}


def quota_waits(started: Started, path: Path) -> dict[str, float]:
    """The probe's quota-step times since its last report, as p50/p90/p99 in ms."""
    path.unlink(missing_ok=True)
    os.kill(started.proc.pid, signal.SIGUSR1)
    for _ in range(200):
        if path.exists():
            break
        time.sleep(0.01)
    waits = sorted(json.loads(path.read_text()))
    if not waits:
        return {}
    return {f"quota_wait_p{q}_ms": 1e3 * waits[int(q / 100 * (len(waits) - 1))] for q in (50, 90, 99)}


def measure(targets: dict[str, Started], scripts: dict[bool, Path], up: Upstream, rounds: int,
            duration_s: int, probes: dict[str, Path]) -> dict[str, list[dict[str, Any]]]:
    client = redis.Redis.from_url(up.redis_url)
    load = {"redis": up.redis_pid, "sim": up.sim_pid}
    for started in targets.values():  # warm up: connections made, code paths run
        for script in scripts.values():
            run_wrk("wrk", started.base_url + "/v1/chat/completions", script, CONNECTIONS, 1)
    runs: dict[str, list[dict[str, Any]]] = {}
    for _ in range(rounds):
        for stream, script in scripts.items():
            for name, started in targets.items():
                client.config_resetstat()
                if name in probes:
                    quota_waits(started, probes[name])  # what the warm-up and the last run left: dropped
                cpu0 = process_cpu_s(started.proc.pid)
                load0 = {k: process_cpu_s(pid) for k, pid in load.items() if pid is not None}
                busy0, total0 = cpu_ticks("cpu0")
                result = run_wrk("wrk", started.base_url + "/v1/chat/completions", script, CONNECTIONS, duration_s)
                busy1, total1 = cpu_ticks("cpu0")
                cpu = process_cpu_s(started.proc.pid) - cpu0
                n = result["requests"]
                calls = int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))
                run = {"cpu_us_per_request": 1e6 * cpu / n, "requests": n, "rps": result["rps"],
                       "errors": result["errors"], "p50_ms": result["p50_us"] / 1e3, "p99_ms": result["p99_us"] / 1e3,
                       "evalsha_per_request": calls / n, "cpu0_busy": (busy1 - busy0) / max(1, total1 - total0),
                       **{f"{k}_cpu_us_per_request": 1e6 * (process_cpu_s(load[k]) - v) / n
                          for k, v in load0.items()}}  # type: ignore[arg-type]
                if name in probes:
                    run.update(quota_waits(started, probes[name]))
                runs.setdefault(f"{name}/{'stream' if stream else 'full'}", []).append(run)
    return runs


def ratios(runs: dict[str, list[dict[str, Any]]]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for key, rounds in runs.items():
        name, _, mode = key.partition("/")
        base = runs.get(f"bare_proxy/{mode}")
        if name != "bare_proxy" and base:
            out[key] = [r["cpu_us_per_request"] / b["cpu_us_per_request"] for r, b in zip(rounds, base, strict=True)]
    return out


def report(runs: dict[str, list[dict[str, Any]]]) -> str:
    lines = ["| target / mode | CPU µs/request (rounds) | × bare proxy (rounds; median) | requests/s | p50 / p99 ms "
             "| EVALSHA per request | CPU 0: busy, Redis / simulator µs per request | quota step p50 / p90 / p99 ms |",
             "|---|---|---|---:|---|---:|---|---|"]
    by_ratio = ratios(runs)
    for key, rounds in runs.items():
        r = by_ratio.get(key)
        told = "–" if r is None else f"{' '.join(f'{x:.2f}' for x in r)}; **{statistics.median(r):.2f}**"
        cpu = " ".join(f"{x['cpu_us_per_request']:.0f}" for x in rounds)

        def med(field: str, rounds: list[dict[str, Any]] = rounds) -> float:
            return statistics.median(x.get(field, math.nan) for x in rounds)

        waits = ("–" if "quota_wait_p50_ms" not in rounds[0] or key.startswith("bare_proxy") else
                 f"{med('quota_wait_p50_ms'):.2f} / {med('quota_wait_p90_ms'):.2f} / {med('quota_wait_p99_ms'):.2f}")
        lines.append(f"| {key} | {cpu} | {told} | {med('rps'):.0f} | {med('p50_ms'):.1f} / {med('p99_ms'):.1f} | "
                     f"{med('evalsha_per_request'):.2f} | {100 * med('cpu0_busy'):.0f}%, "
                     f"{med('redis_cpu_us_per_request'):.0f} / {med('sim_cpu_us_per_request'):.0f} | {waits} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD", help="the git revision the target 'base' runs (default HEAD)")
    parser.add_argument("--targets", default="bare_proxy,base,sluice_full")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=4, help="seconds of each wrk run (default 4)")
    parser.add_argument("--quota-wait", action="store_true",
                        help="time the quota step of every request in the Sluice targets (a probe, bench/probes)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    exit_on_signals()
    names = args.targets.split(",")
    with tempfile.TemporaryDirectory(prefix="sluice-ab-") as tmp:
        workdir = Path(tmp)
        procs = Processes(workdir)
        worktree = workdir / "base"
        try:
            if "base" in names:
                subprocess.run(["git", "worktree", "add", "--detach", "-q", str(worktree), args.base], cwd=ROOT,
                               check=True)
            up = start_upstream(procs, workdir)
            scripts = wrk_scripts(up)
            envs = {name: probe_env(name, workdir) if args.quota_wait else None for name in names}
            targets = {name: start_base(procs, up, worktree / "src", envs[name]) if name == "base"
                       else start(name, procs, up, {}, envs[name]) for name in names}
            probes = {name: Path(env["SLUICE_PROBE_QUOTA_WAIT"]) for name, env in envs.items() if env}
            runs = measure(targets, scripts, up, args.rounds, args.duration, probes)
        finally:
            procs.stop_all()
            if worktree.exists():
                subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT, check=False)
    table = report(runs)
    result = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "command": command_line(),
              "commit": git_commit(), "base": args.base, "machine": machine(wrk=True), "runs": runs,
              "ratios": ratios(runs), "table": table}
    write_result(args.output, result)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
