"""An interleaved A/B of Sluice's CPU per request: the working tree's gateway beside an earlier revision's and the
bare proxy, all running at once, measured in turns (one round: each target non-streamed, then each streamed), so
that the machine's drift (±10% run to run on a shared VM) hits every target alike; the ratios to the bare proxy are
taken round by round.

    python -m bench.ab --base HEAD~3            # --rounds 3 --duration 4; --targets bare_proxy,base,sluice_full

Targets: ``bare_proxy``, ``sluice_open``, ``sluice_full`` (bench/peers/proxies.py: everything on, quotas on a real
Redis), and ``base``: ``sluice_full`` as of ``--base`` (a git revision, checked out in a temporary worktree and
run from its ``src``). The simulator (``--speed 1e9``, 16-token answers), Redis and wrk (64 connections) run on
CPU 0, every gateway on CPU 1. Output: per target and mode, CPU µs per request, p50/p99, EVALSHA calls per request
and the ratio to the bare proxy per round (median last); bench/results/ab.json.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import redis

from bench.harness import (
    RESULTS_DIR,
    ROOT,
    Processes,
    command_line,
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
CONNECTIONS = 64


def start_base(procs: Processes, up: Upstream, src: Path) -> Started:
    """``sluice_full`` run from another checkout's ``src``."""
    port = free_port()
    config = up.workdir / "base.yaml"
    config.write_text(sluice_yaml(port, up, full=True))
    proc = procs.start("base", PROXY_CPU, [sys.executable, "-m", "sluice.cli", "serve", "--config", str(config)],
                       env={"PYTHONPATH": str(src)})
    wait_until_up(proc, f"http://127.0.0.1:{port}/health")
    return Started(proc, f"http://127.0.0.1:{port}", config.read_text())


def measure(targets: dict[str, Started], scripts: dict[bool, Path], redis_url: str, rounds: int,
            duration_s: int) -> dict[str, list[dict[str, Any]]]:
    client = redis.Redis.from_url(redis_url)
    for started in targets.values():  # warm up: connections made, code paths run
        for script in scripts.values():
            run_wrk("wrk", started.base_url + "/v1/chat/completions", script, CONNECTIONS, 1)
    runs: dict[str, list[dict[str, Any]]] = {}
    for _ in range(rounds):
        for stream, script in scripts.items():
            for name, started in targets.items():
                client.config_resetstat()
                cpu0 = process_cpu_s(started.proc.pid)
                result = run_wrk("wrk", started.base_url + "/v1/chat/completions", script, CONNECTIONS, duration_s)
                cpu = process_cpu_s(started.proc.pid) - cpu0
                calls = int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))
                runs.setdefault(f"{name}/{'stream' if stream else 'full'}", []).append({
                    "cpu_us_per_request": 1e6 * cpu / result["requests"], "requests": result["requests"],
                    "errors": result["errors"], "p50_ms": result["p50_us"] / 1e3, "p99_ms": result["p99_us"] / 1e3,
                    "evalsha_per_request": calls / result["requests"]})
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
    lines = ["| target / mode | CPU µs/request (rounds) | p50 / p99 ms (first round) | EVALSHA per request "
             "| × bare proxy (rounds; median) |", "|---|---|---|---:|---|"]
    by_ratio = ratios(runs)
    for key, rounds in runs.items():
        r = by_ratio.get(key)
        told = "–" if r is None else f"{' '.join(f'{x:.2f}' for x in r)}; **{statistics.median(r):.2f}**"
        cpu = " ".join(f"{x['cpu_us_per_request']:.0f}" for x in rounds)
        lines.append(f"| {key} | {cpu} | "
                     f"{rounds[0]['p50_ms']:.1f} / {rounds[0]['p99_ms']:.1f} | "
                     f"{rounds[0]['evalsha_per_request']:.2f} | {told} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD", help="the git revision the target 'base' runs (default HEAD)")
    parser.add_argument("--targets", default="bare_proxy,base,sluice_full")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=4, help="seconds of each wrk run (default 4)")
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
            targets = {name: start_base(procs, up, worktree / "src") if name == "base" else start(name, procs, up, {})
                       for name in names}
            runs = measure(targets, scripts, up.redis_url, args.rounds, args.duration)
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
