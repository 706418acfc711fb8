"""Requests/s through the gateway with 1 and 2 worker processes (``sluice serve --workers N``), the same load.

    python -m bench.workers                  # --duration 10 --warmup 2 --repeats 3 --connections 64 --max-tokens 16

Processes, all on 127.0.0.1 and free ports, none pinned (``taskset -c 0-1``: the machine has 2 CPUs and they share
them; the kernel decides):
  ``redis-server`` (the quota state: both gateways decide every request in it),
  the engine simulator in its own process (``sluice sim --speed 1e9``: every answer exactly --max-tokens tokens, at
  once, so the gateway is the bottleneck),
  two gateways, one per worker count, both running all along (the idle one costs nothing measurable): API keys on,
  a tier with request and token rates (never reached: every answer is a 200), Redis state, default settings
  otherwise (access log on, to a file),
  ``wrk`` (one thread, --connections connections, a non-streamed chat completion; --stream for a streamed one).
Rounds alternate 1 worker, 2 workers, ... --repeats times; each is a warm-up then a timed wrk run. The CPU seconds
each process used in the timed run (the gateway's summed over its supervisor and workers) show how the two CPUs
were shared; "other processes" is the machine's busy CPU time (/proc/stat) minus theirs: other work on a shared
machine, and kernel time not charged to any process. Output: a markdown table on stdout, everything in
bench/results/workers.json.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.harness import (
    ANY_CPU,
    CLK_TCK,
    MODEL,
    WRK_LUA,
    Processes,
    children_cpu_s,
    command_line,
    cpu_ticks,
    exit_on_signals,
    free_port,
    git_commit,
    log,
    machine,
    preflight,
    request_body,
    run_wrk,
    wait_port,
    wait_until_up,
    write_result,
)
from sluice.identity import generate_key, hash_key

RESULTS = Path(__file__).resolve().parent / "results" / "workers.json"
WORKER_COUNTS = (1, 2)
MEASURED = ("gateway", "sim", "redis", "wrk")


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid`` and its live descendants (a supervisor and its workers)."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(child) for child in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def machine_busy_s() -> float:
    """CPU seconds every CPU of the machine has spent busy so far (not idle, not waiting for I/O), from /proc/stat."""
    return cpu_ticks()[0] / CLK_TCK


def gateway_yaml(port: int, sim_url: str, state: str, key: str, workers: int, access_log: Path) -> str:
    return f"""\
server: {{host: 127.0.0.1, port: {port}, workers: {workers}, access_log_path: "{access_log}"}}
state: {state}
models:
  - name: {MODEL}
    engine: {{urls: ["{sim_url}"]}}
tiers:
  bench: {{requests: 1000000000/hour, tokens: 1000000000000/hour}}
keys:
  - {{id: bench, hash: "{hash_key(key)}", tier: bench}}
"""


def run(args: argparse.Namespace) -> dict[str, Any]:
    key = generate_key()
    with tempfile.TemporaryDirectory(prefix="sluice-workers-bench-") as tmp:
        workdir = Path(tmp)
        procs = Processes(workdir)
        try:
            redis_port = free_port()
            redis = procs.start("redis", ANY_CPU, [args.redis_server, "--port", str(redis_port), "--bind", "127.0.0.1",
                                                   "--save", "", "--appendonly", "no", "--dir", str(workdir)])
            wait_port(redis, redis_port)
            sim_port = free_port()
            sim = procs.start("sim", ANY_CPU, [sys.executable, "-m", "sluice.cli", "sim", "--model", MODEL, "--port",
                                               str(sim_port), "--speed", "1e9", "--max-num-seqs", "1024"])
            sim_url = f"http://127.0.0.1:{sim_port}"
            wait_until_up(sim, sim_url + "/health")
            gateways = {}
            for workers in WORKER_COUNTS:
                port = free_port()
                config = workdir / f"sluice-{workers}.yaml"
                config.write_text(gateway_yaml(port, sim_url, f"redis://127.0.0.1:{redis_port}/0", key, workers,
                                               workdir / f"access-{workers}.log"))
                proc = procs.start(f"gateway-{workers}", ANY_CPU,
                                   [sys.executable, "-m", "sluice.cli", "serve", "--config", str(config)])
                url = f"http://127.0.0.1:{port}"
                wait_until_up(proc, url + "/health", timeout_s=60)
                preflight(url, key, args.stream, args.max_tokens)
                gateways[workers] = (proc, url)
            script = workdir / "chat.lua"
            script.write_text(WRK_LUA.format(body=request_body(args.stream, args.max_tokens), key=key))
            rounds: dict[int, list[dict[str, Any]]] = {n: [] for n in WORKER_COUNTS}
            for repeat in range(args.repeats):
                for workers, (proc, url) in gateways.items():
                    target = url + "/v1/chat/completions"
                    run_wrk(args.wrk, target, script, args.connections, args.warmup, cpu=ANY_CPU)
                    before = (tree_cpu_s(proc.pid), sim.cpu_s(), redis.cpu_s(), children_cpu_s(), machine_busy_s())
                    result = run_wrk(args.wrk, target, script, args.connections, args.duration, cpu=ANY_CPU)
                    after = (tree_cpu_s(proc.pid), sim.cpu_s(), redis.cpu_s(), children_cpu_s(), machine_busy_s())
                    seconds = result["duration_us"] / 1e6
                    for name, b, a in zip((*MEASURED, "machine"), before, after, strict=True):
                        result[f"{name}_cpu_pct"] = 100 * (a - b) / seconds
                    result["gateway_cpu_ms_per_request"] = 10 * result["gateway_cpu_pct"] / result["rps"]
                    result["others_cpu_pct"] = result["machine_cpu_pct"] - sum(result[f"{n}_cpu_pct"] for n in MEASURED)
                    result["load_avg_1m"] = os.getloadavg()[0]
                    rounds[workers].append(result)
                    log(f"round {repeat + 1}/{args.repeats}, {workers} worker(s): {result['rps']:.0f} requests/s, "
                        f"{result['errors']} errors, CPU % gateway {result['gateway_cpu_pct']:.0f} sim "
                        f"{result['sim_cpu_pct']:.0f} redis {result['redis_cpu_pct']:.0f} wrk "
                        f"{result['wrk_cpu_pct']:.0f}, other processes {result['others_cpu_pct']:.0f}")
        finally:
            procs.stop_all()
    return {"rounds": {str(n): r for n, r in rounds.items()}, "summary": summarise(rounds)}


def summarise(rounds: dict[int, list[dict[str, Any]]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for workers, runs in rounds.items():
        summary[str(workers)] = {
            "rps": statistics.median(r["rps"] for r in runs),
            "rps_min": min(r["rps"] for r in runs),
            "rps_max": max(r["rps"] for r in runs),
            "p50_ms": statistics.median(r["p50_us"] for r in runs) / 1e3,
            "p99_ms": statistics.median(r["p99_us"] for r in runs) / 1e3,
            "errors": sum(r["errors"] for r in runs),
            "gateway_cpu_ms_per_request": statistics.median(r["gateway_cpu_ms_per_request"] for r in runs),
            **{f"{name}_cpu_pct": statistics.median(r[f"{name}_cpu_pct"] for r in runs)
               for name in (*MEASURED, "others")},
        }
    summary["ratio_2_to_1"] = summary["2"]["rps"] / summary["1"]["rps"]
    return summary


def table(summary: dict[str, Any]) -> str:
    lines = ["| workers | requests/s (median, min-max) | p50 ms | p99 ms | errors | CPU % gateway / sim / redis / wrk "
             "| CPU % of other processes | gateway CPU ms per request |", "|---|---|---|---|---|---|---|---|"]
    for workers in WORKER_COUNTS:
        s = summary[str(workers)]
        lines.append(f"| {workers} | {s['rps']:.0f} ({s['rps_min']:.0f}-{s['rps_max']:.0f}) | {s['p50_ms']:.1f} | "
                     f"{s['p99_ms']:.1f} | {s['errors']} | {s['gateway_cpu_pct']:.0f} / {s['sim_cpu_pct']:.0f} / "
                     f"{s['redis_cpu_pct']:.0f} / {s['wrk_cpu_pct']:.0f} | {s['others_cpu_pct']:.0f} | "
                     f"{s['gateway_cpu_ms_per_request']:.2f} |")
    lines.append(f"\n2 workers / 1 worker: **{summary['ratio_2_to_1']:.2f}x**")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds of each timed wrk run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of wrk before each timed run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--stream", action="store_true", help="streamed chat completions")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"results file (default {RESULTS})")
    parser.add_argument("--wrk", default=shutil.which("wrk") or "wrk")
    parser.add_argument("--redis-server", default=shutil.which("redis-server") or "redis-server")
    args = parser.parse_args()
    if not shutil.which(args.wrk) or not shutil.which(args.redis_server):
        print("bench.workers needs wrk and redis-server (apt-get install -y wrk redis-server)", file=sys.stderr)
        return 2
    exit_on_signals()
    started = datetime.datetime.now(datetime.UTC)
    result = run(args)
    result.update(command=command_line(), started=started.isoformat(), commit=git_commit(),
                  machine=machine(wrk=True), settings=vars(args))
    write_result(args.output, result)
    print(table(result["summary"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
