"""``python -m bench.redis_cluster``: quota decisions per second (reserve then settle, 3 buckets + 1 lease) through
the Redis store on one redis-server and on a Redis Cluster of three masters and three replicas (tests/redis_cluster.py,
the one the tests use), interleaved rounds on the same machine. Every decision of a deployment lives on the
``{sluice}`` slot, so the cluster's cost is the client's routing (redis-py's cluster client), not Redis'."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
from pathlib import Path
from typing import Any

import uvloop

from bench.harness import Proc, command_line, free_port, git_commit, log, machine, wait_port, write_result
from bench.limiter.decisions import decisions_run
from tests.redis_cluster import RedisCluster

RESULTS = Path(__file__).parent / "results" / "redis_cluster.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--decision-s", type=float, default=3.0, help="seconds of each timed run (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    binary = shutil.which("redis-server")
    if binary is None or shutil.which("redis-cli") is None:
        raise SystemExit("needs redis-server and redis-cli: apt-get install -y redis-server")
    port = free_port()
    single = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cluster = RedisCluster(binary)
    try:
        wait_port(Proc("redis", single, Path("/dev/null")), port)
        cluster.start()
        urls = {"single": f"redis://127.0.0.1:{port}/0", "cluster": cluster.url}
        runs: dict[str, list[dict[str, Any]]] = {}
        for round_ in range(args.rounds):
            order = list(urls) if round_ % 2 == 0 else list(reversed(urls))
            for c in args.concurrency:
                for name in order:
                    prefix = f"{{bench-{name}-c{c}-r{round_}}}"
                    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                        r = runner.run(decisions_run("redis_direct", urls[name], c, args.decision_s, 0.5, prefix))
                    runs.setdefault(f"{name}/c{c}", []).append(r)
                    log(f"{name} c{c} round {round_}: {r['decisions_per_s']:.0f}/s, "
                        f"client CPU {r['client_cpu_us_per_decision']:.0f} us/decision, "
                        f"cycle p50 {r['cycle_p50_us']:.0f} us")
    finally:
        cluster.stop()
        single.kill()
        single.wait(timeout=10)
    summary: dict[str, Any] = {}
    for key, rounds in runs.items():
        summary[key] = {
            "decisions_per_s": statistics.median(r["decisions_per_s"] for r in rounds),
            "client_cpu_us_per_decision": statistics.median(r["client_cpu_us_per_decision"] for r in rounds),
            "cycle_p50_us": statistics.median(r["cycle_p50_us"] for r in rounds),
        }
    for c in args.concurrency:
        s, k = summary[f"single/c{c}"], summary[f"cluster/c{c}"]
        summary[f"ratio/c{c}"] = {"decisions_per_s": k["decisions_per_s"] / s["decisions_per_s"],
                                  "client_cpu": k["client_cpu_us_per_decision"] / s["client_cpu_us_per_decision"]}
        log(f"c{c}: cluster/single decisions/s {summary[f'ratio/c{c}']['decisions_per_s']:.2f}x, "
            f"client CPU per decision {summary[f'ratio/c{c}']['client_cpu']:.2f}x")
    write_result(args.output, {"command": command_line(), "commit": git_commit("src"), "machine": machine(),
                               "summary": summary, "runs": runs})


if __name__ == "__main__":
    main()
