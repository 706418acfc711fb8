"""The gateway's overhead: Sluice (API-key auth on, access log on) against a bare aiohttp proxy and the engine itself.

One command starts everything, runs every scenario, stops everything (by PID, also on error) and reports:

    python -m bench.overhead                 # --duration 5 --warmup 1 --rounds 3 --max-tokens 16
    python -m bench.overhead --state redis   # the same, quotas on a real redis-server (on the path of every request)

Processes, all on 127.0.0.1 and free ports, pinned with taskset on a 2-core machine:
  CPU 1: the proxy under test, alone (the bare proxy, ``bench/bare_proxy.py``, or ``sluice serve``; both run for
         the whole benchmark, and the one not under test is idle);
  CPU 0: the engine simulator (``sluice sim --speed 1e9``, every answer exactly --max-tokens tokens) and the load
         generator, ``wrk`` (one thread; ``apt-get install -y wrk``), driven by a Lua script for the POST.

``--state redis`` starts a ``redis-server`` (CPU 0, beside the simulator: it is not the proxy under test) and
gives the key a tier with quotas (requests/min, tokens/min, concurrent requests; limits far above what the run
uses), so every request makes its quota round trip (reserve, then settle) on the path; ``memory`` (the default)
keeps the state in the gateway's process and the tier without limits.

Scenarios: target {direct to the simulator, bare proxy, sluice} x concurrency {1, 64} x {non-streamed, streamed}
chat completions, each a warm-up then a timed wrk run; the rounds are interleaved and the medians reported.
Output: a markdown table on stdout, everything (each round, CPU use of each process) in bench/results/overhead.json.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import (
    MODEL,
    WRK_LUA,
    Processes,
    command_line,
    exit_on_signals,
    free_port,
    machine,
    preflight,
    request_body,
    run_wrk,
    wait_port,
    wait_until_up,
    write_result,
)
from sluice.identity import generate_key, hash_key

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "overhead.json"
TARGETS = ("direct", "bare_proxy", "sluice")
CONCURRENCIES = (1, 64)
STREAMS = (False, True)
PROXY_CPU, LOAD_CPU = "1", "0"



# ---------------------------------------------------------------------------------------------- report


def median_of(rounds: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in rounds))


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    summary = {}
    for name, rounds in runs.items():
        summary[name] = {
            "rps": median_of(rounds, "rps"),
            "rps_min": min(r["rps"] for r in rounds),
            "rps_max": max(r["rps"] for r in rounds),
            "p50_ms": median_of(rounds, "p50_us") / 1e3,
            "p99_ms": median_of(rounds, "p99_us") / 1e3,
            "requests": sum(r["requests"] for r in rounds),
            "errors": sum(r["errors"] for r in rounds),
            "proxy_cpu_pct": median_of(rounds, "proxy_cpu_pct") if "proxy_cpu_pct" in rounds[0] else None,
            "proxy_cpu_ms_per_request": (
                median_of(rounds, "proxy_cpu_ms_per_request") if "proxy_cpu_pct" in rounds[0] else None),
            "sim_cpu_pct": median_of(rounds, "sim_cpu_pct"),
        }
    return summary


def scenario_name(target: str, concurrency: int, stream: bool) -> str:
    return f"{target}/c{concurrency}/{'stream' if stream else 'full'}"


def derive(summary: dict[str, dict[str, Any]]) -> dict[str, Any]:
    derived: dict[str, Any] = {}
    for c in CONCURRENCIES:
        for stream in STREAMS:
            mode = "stream" if stream else "full"
            bare = summary[scenario_name("bare_proxy", c, stream)]
            sluice = summary[scenario_name("sluice", c, stream)]
            direct = summary[scenario_name("direct", c, stream)]
            derived[f"c{c}/{mode}"] = {
                "sluice_rps_pct_of_bare": 100 * sluice["rps"] / bare["rps"],
                "sluice_added_p50_ms": sluice["p50_ms"] - direct["p50_ms"],
                "bare_added_p50_ms": bare["p50_ms"] - direct["p50_ms"],
                "sluice_added_p50_ms_vs_bare": sluice["p50_ms"] - bare["p50_ms"],
                "sluice_cpu_per_request_x_bare": sluice["proxy_cpu_ms_per_request"] / bare["proxy_cpu_ms_per_request"],
            }
    return derived


def markdown(summary: dict[str, dict[str, Any]], derived: dict[str, Any]) -> str:
    lines = [
        "| target | concurrency | mode | requests/s (median; min–max) | p50 ms | p99 ms | proxy CPU % | proxy CPU ms/request | sim CPU % | errors |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in CONCURRENCIES:
        for stream in STREAMS:
            for target in TARGETS:
                s = summary[scenario_name(target, c, stream)]
                cpu = "–" if s["proxy_cpu_pct"] is None else f"{s['proxy_cpu_pct']:.0f}"
                per_req = "–" if s["proxy_cpu_pct"] is None else f"{s['proxy_cpu_ms_per_request']:.3f}"
                lines.append(
                    f"| {target} | {c} | {'stream' if stream else 'full'} | "
                    f"{s['rps']:.0f} ({s['rps_min']:.0f}–{s['rps_max']:.0f}) | {s['p50_ms']:.3f} | {s['p99_ms']:.3f} | "
                    f"{cpu} | {per_req} | {s['sim_cpu_pct']:.0f} | {s['errors']} of {s['requests']} |"
                )
    lines += [
        "",
        "| concurrency | mode | sluice req/s as % of bare proxy | sluice added p50 vs direct (ms) | bare proxy added p50 vs direct (ms) | sluice p50 minus bare proxy p50 (ms) | sluice CPU/request ÷ bare proxy's |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for c in CONCURRENCIES:
        for stream in STREAMS:
            d = derived[f"c{c}/{'stream' if stream else 'full'}"]
            lines.append(
                f"| {c} | {'stream' if stream else 'full'} | {d['sluice_rps_pct_of_bare']:.1f}% | "
                f"{d['sluice_added_p50_ms']:.3f} | {d['bare_added_p50_ms']:.3f} | "
                f"{d['sluice_added_p50_ms_vs_bare']:.3f} | {d['sluice_cpu_per_request_x_bare']:.2f}x |"
            )
    return "\n".join(lines)


def verdict(derived: dict[str, Any]) -> dict[str, Any]:
    """Targets: >= 60% of the bare proxy's req/s (every scenario), < 1 ms added at p50 at concurrency 1."""
    worst_pct = min(d["sluice_rps_pct_of_bare"] for d in derived.values())
    worst_p50 = max(d["sluice_added_p50_ms"] for k, d in derived.items() if k.startswith("c1/"))
    return {
        "throughput_target_pct": 60.0,
        "worst_sluice_rps_pct_of_bare": worst_pct,
        "throughput_target_met": worst_pct >= 60.0,
        "latency_target_ms": 1.0,
        "worst_sluice_added_p50_ms_at_c1": worst_p50,
        "latency_target_met": worst_p50 < 1.0,
    }


# ---------------------------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description="Sluice's overhead against a bare proxy and the engine itself.")
    parser.add_argument("--duration", type=int, default=5, help="seconds of each timed wrk run (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of warm-up before each run, 0 for none (default 1)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every scenario (default 3)")
    parser.add_argument("--max-tokens", type=int, default=16, help="tokens per answer (default 16)")
    parser.add_argument("--output", type=Path,
                        help=f"results file (default {RESULTS.name}, or overhead-redis.json with --state redis)")
    parser.add_argument("--state", choices=("memory", "redis"), default="memory",
                        help="the gateway's state: in its process (no quotas), or a real redis-server with quotas")
    parser.add_argument("--keep-logs", type=Path, help="copy the processes' stderr logs into this directory")
    args = parser.parse_args()
    if args.output is None:
        args.output = RESULTS if args.state == "memory" else RESULTS.with_name("overhead-redis.json")

    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk is not installed: apt-get update && apt-get install -y wrk", file=sys.stderr)
        return 2
    if args.state == "redis" and shutil.which("redis-server") is None:
        print("--state redis needs redis-server: apt-get install -y redis-server", file=sys.stderr)
        return 2
    if shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        print("needs taskset (util-linux) and at least 2 CPUs", file=sys.stderr)
        return 2

    # SIGTERM/SIGHUP end the run through the same finally as Ctrl-C and errors.
    exit_on_signals()

    with tempfile.TemporaryDirectory(prefix="sluice-overhead-") as tmp:
        workdir = Path(tmp)
        procs = Processes(workdir)
        try:
            result = run(args, wrk, workdir, procs)
        finally:
            procs.stop_all(args.keep_logs)
    write_result(args.output, result)
    print(result["table"])
    v = result["verdict"]
    print()
    print(f"throughput target (sluice >= 60% of bare proxy req/s, worst scenario): "
          f"{v['worst_sluice_rps_pct_of_bare']:.1f}% -> {'MET' if v['throughput_target_met'] else 'MISSED'}")
    print(f"latency target (sluice adds < 1 ms at p50, concurrency 1, worst mode): "
          f"{v['worst_sluice_added_p50_ms_at_c1']:.3f} ms -> {'MET' if v['latency_target_met'] else 'MISSED'}")
    print(f"access log lines written by the gateway: {result['gateway_access_log_lines']}")
    print(f"wrote {args.output}")
    return 0


def run(args: argparse.Namespace, wrk: str, workdir: Path, procs: Processes) -> dict[str, Any]:
    key = generate_key()
    sim_port, bare_port, sluice_port = free_port(), free_port(), free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    state, tier = "memory://", "{}"
    if args.state == "redis":
        redis_port = free_port()
        redis = procs.start("redis", LOAD_CPU, [
            str(shutil.which("redis-server")), "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(workdir)])
        wait_port(redis, redis_port)
        state = f"redis://127.0.0.1:{redis_port}/0"
        tier = "{requests: 100000000/minute, tokens: 100000000000/minute, concurrent: 10000}"
    config = workdir / "sluice.yaml"
    config.write_text(
        f"server: {{host: 127.0.0.1, port: {sluice_port}}}\n"
        f"state: {state}\n"
        f"auth: {{mode: api_key}}\n"
        f"models:\n  - name: {MODEL}\n    engine: {{dialect: vllm, urls: ['{sim_url}']}}\n"
        f"tiers: {{default: {tier}}}\n"
        f"keys:\n  - {{id: bench, hash: '{hash_key(key)}', tenant: default, tier: default}}\n"
    )
    n = str(args.max_tokens)
    sim = procs.start("sim", LOAD_CPU, [
        sys.executable, "-m", "sluice.cli", "sim", "--model", MODEL, "--host", "127.0.0.1", "--port", str(sim_port),
        "--speed", "1e9", "--output-len-min", n, "--output-len-max", n,
    ])
    bare = procs.start("bare_proxy", PROXY_CPU, [
        sys.executable, "-m", "bench.bare_proxy", "--upstream", sim_url, "--port", str(bare_port),
    ])
    gateway = procs.start("sluice", PROXY_CPU, [
        sys.executable, "-m", "sluice.cli", "serve", "--config", str(config),
    ])
    wait_until_up(sim, sim_url + "/health")
    wait_port(bare, bare_port)
    wait_until_up(gateway, f"http://127.0.0.1:{sluice_port}/health")

    base_urls = {
        "direct": sim_url,
        "bare_proxy": f"http://127.0.0.1:{bare_port}",
        "sluice": f"http://127.0.0.1:{sluice_port}",
    }
    under_test = {"direct": None, "bare_proxy": bare, "sluice": gateway}
    for target, base in base_urls.items():
        for stream in STREAMS:
            preflight(base, key, stream, args.max_tokens)
    scripts = {}
    for stream in STREAMS:
        scripts[stream] = workdir / f"{'stream' if stream else 'full'}.lua"
        scripts[stream].write_text(WRK_LUA.format(body=request_body(stream, args.max_tokens), key=key))

    runs: dict[str, list[dict[str, Any]]] = {}
    total = args.rounds * len(TARGETS) * len(CONCURRENCIES) * len(STREAMS)
    done = 0
    started = time.monotonic()
    for round_ in range(args.rounds):
        for c in CONCURRENCIES:
            for stream in STREAMS:
                # Rotate the order of the targets each round so none always runs first or last.
                targets = TARGETS[round_ % 3:] + TARGETS[: round_ % 3]
                for target in targets:
                    url = base_urls[target] + "/v1/chat/completions"
                    if args.warmup > 0:
                        run_wrk(wrk, url, scripts[stream], c, args.warmup)
                    proxy = under_test[target]
                    cpu0 = {p.name: p.cpu_s() for p in (sim, bare, gateway)}
                    t0 = time.monotonic()
                    result = run_wrk(wrk, url, scripts[stream], c, args.duration)
                    elapsed = time.monotonic() - t0
                    cpu1 = {p.name: p.cpu_s() for p in (sim, bare, gateway)}
                    result["sim_cpu_pct"] = 100 * (cpu1["sim"] - cpu0["sim"]) / elapsed
                    if proxy is not None:
                        result["proxy_cpu_pct"] = 100 * (cpu1[proxy.name] - cpu0[proxy.name]) / elapsed
                        result["proxy_cpu_ms_per_request"] = 1e3 * (cpu1[proxy.name] - cpu0[proxy.name]) / max(
                            1, result["requests"])
                    result["round"] = round_
                    runs.setdefault(scenario_name(target, c, stream), []).append(result)
                    done += 1
                    print(f"[{done}/{total} {time.monotonic() - started:5.0f}s] {scenario_name(target, c, stream)}: "
                          f"{result['rps']:.0f} req/s, p50 {result['p50_us'] / 1e3:.3f} ms, "
                          f"p99 {result['p99_us'] / 1e3:.3f} ms, errors {result['errors']}", file=sys.stderr)
    for proc in (sim, bare, gateway):
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} died during the run:\n{proc.log_tail()}")

    access_lines = sum(1 for line in gateway.log_path.open(errors="replace") if line.startswith('{"request_id"'))
    summary = summarise(runs)
    derived = derive(summary)
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command_line(),
        "machine": machine(wrk=True),
        "settings": {
            "duration_s": args.duration, "warmup_s": args.warmup, "rounds": args.rounds,
            "max_tokens": args.max_tokens, "proxy_cpu": PROXY_CPU, "sim_and_load_cpu": LOAD_CPU,
            "load_generator": "wrk -t1 --latency (closed loop)", "gateway_auth": "api_key", "gateway_access_log": True,
            "gateway_state": args.state,
        },
        "summary": summary,
        "derived": derived,
        "verdict": verdict(derived),
        "gateway_access_log_lines": access_lines,
        "table": markdown(summary, derived),
        "runs": runs,
    }


if __name__ == "__main__":
    sys.exit(main())
