"""Part 3: a gateway's requests/s with quotas on Redis against quotas off (wrk)."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.harness import (
    MODEL,
    WRK_LUA,
    Processes,
    free_port,
    preflight,
    request_body,
    run_wrk,
    wait_until_up,
)
from bench.limiter.decisions import access_log_outcomes, live_leases, redis_evalsha_stats
from bench.limiter.settings import GATEWAY_CPU, LOAD_CPU, TARGET_PCT, log
from sluice.identity import generate_key, hash_key

# ---------------------------------------------------------------------------------------------- part 3: gateway


GATEWAYS = ("off", "on", "on_t1s")
GATEWAY_LABELS = {
    "off": "off (memory://, no limits)",
    "on": "on (redis://, per-key requests+tokens+concurrent, defaults)",
    "on_t1s": "on, diagnostic: same + quota.store_timeout_s 1 (never degrades)",
}


def gateway_config(port: int, sim_url: str, key: str, name: str) -> str:
    """``off``: no limits, memory://. ``on``: high per-key limits on Redis, every other setting default.
    ``on_t1s``: as ``on`` but with a 1 s store timeout, so that the decisions really go to Redis (see the docs)."""
    state, quota = "memory://", ""
    tier = "{default: {}}"
    if name != "off":
        state = "REDIS"
        tier = '{pro: {requests: "600000/minute", tokens: "100000000/minute", concurrent: 1000}}'
    if name == "on_t1s":
        quota = "quota: {store_timeout_s: 1.0}\n"
    return (
        f"server: {{host: 127.0.0.1, port: {port}}}\n"
        f"auth: {{mode: api_key}}\n"
        f"state: {state}\n"
        f"models:\n  - name: {MODEL}\n    engine: {{dialect: vllm, urls: ['{sim_url}']}}\n"
        f"tiers: {tier}\n{quota}"
        f"keys:\n  - {{id: bench-{name}, hash: '{hash_key(key)}', tenant: default, "
        f"tier: {'default' if name == 'off' else 'pro'}}}\n"
    )


def part_gateway(args: argparse.Namespace, wrk: str, workdir: Path, procs: Processes, redis_url: str,
                 redis_port: int) -> dict[str, Any]:
    key = generate_key()
    sim_port = free_port()
    ports = {name: free_port() for name in GATEWAYS}
    sim_url = f"http://127.0.0.1:{sim_port}"
    for name in GATEWAYS:
        (workdir / f"{name}.yaml").write_text(
            gateway_config(ports[name], sim_url, key, name).replace("state: REDIS", f"state: {redis_url}"))
    n = str(args.max_tokens)
    sim = procs.start("sim", LOAD_CPU, [
        sys.executable, "-m", "sluice.cli", "sim", "--model", MODEL, "--host", "127.0.0.1", "--port", str(sim_port),
        "--speed", "1e9", "--output-len-min", n, "--output-len-max", n,
    ])
    gateways = {
        name: procs.start(f"gateway_{name}", GATEWAY_CPU,
                          [sys.executable, "-m", "sluice.cli", "serve", "--config", str(workdir / f"{name}.yaml")])
        for name in GATEWAYS
    }
    wait_until_up(sim, sim_url + "/health")
    for name, proc in gateways.items():
        wait_until_up(proc, f"http://127.0.0.1:{ports[name]}/health")
        for stream in (False, True):
            preflight(f"http://127.0.0.1:{ports[name]}", key, stream, args.max_tokens)
    scripts = {}
    for stream in (False, True):
        scripts[stream] = workdir / f"{'stream' if stream else 'full'}.lua"
        scripts[stream].write_text(WRK_LUA.format(body=request_body(stream, args.max_tokens), key=key))

    evalsha0 = redis_evalsha_stats(redis_port)
    runs: dict[str, list[dict[str, Any]]] = {}
    for round_ in range(args.rounds):
        for stream in (False, True):
            for name in GATEWAYS[round_ % 3:] + GATEWAYS[:round_ % 3]:  # rotated: none always first
                url = f"http://127.0.0.1:{ports[name]}/v1/chat/completions"
                if args.warmup > 0:
                    run_wrk(wrk, url, scripts[stream], 64, args.warmup)
                proc = gateways[name]
                calls0 = redis_evalsha_stats(redis_port)["calls"]
                cpu0, t0 = proc.cpu_s(), time.monotonic()
                result = run_wrk(wrk, url, scripts[stream], 64, args.duration)
                elapsed, cpu1 = time.monotonic() - t0, proc.cpu_s()
                result["evalsha_per_request"] = (redis_evalsha_stats(redis_port)["calls"] - calls0) / max(
                    1, result["requests"])
                result["gateway_cpu_pct"] = 100 * (cpu1 - cpu0) / elapsed
                result["gateway_cpu_ms_per_request"] = 1e3 * (cpu1 - cpu0) / max(1, result["requests"])
                result["round"] = round_
                mode = "stream" if stream else "full"
                runs.setdefault(f"{name}/{mode}", []).append(result)
                log(f"gateway quotas {name} {mode} round {round_}: {result['rps']:.0f} req/s, "
                    f"p50 {result['p50_us'] / 1e3:.2f} ms, p99 {result['p99_us'] / 1e3:.2f} ms, "
                    f"non-2xx {result['non2xx']}, errors {result['errors']}, CPU {result['gateway_cpu_pct']:.0f}%, "
                    f"EVALSHA/request {result['evalsha_per_request']:.3f}")
    for proc in (sim, *gateways.values()):
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} died during the run:\n{proc.log_tail()}")
    evalsha1 = redis_evalsha_stats(redis_port)
    time.sleep(1.0)  # let the gateways' settle tasks finish before counting permits left in Redis
    leaked = {name: live_leases(redis_port, f"{{sluice}}:tier.pro:key=bench-{name}") for name in ("on", "on_t1s")}
    degraded_lines = {name: [line for line in gateways[name].log_path.read_text(errors="replace").splitlines()
                             if "quota store" in line] for name in ("on", "on_t1s")}
    summary = {}
    for name, rounds in runs.items():
        summary[name] = {
            "rps": statistics.median(r["rps"] for r in rounds),
            "rps_min": min(r["rps"] for r in rounds),
            "rps_max": max(r["rps"] for r in rounds),
            "p50_ms": statistics.median(r["p50_us"] for r in rounds) / 1e3,
            "p99_ms": statistics.median(r["p99_us"] for r in rounds) / 1e3,
            "gateway_cpu_pct": statistics.median(r["gateway_cpu_pct"] for r in rounds),
            "gateway_cpu_ms_per_request": statistics.median(r["gateway_cpu_ms_per_request"] for r in rounds),
            "evalsha_per_request": statistics.median(r["evalsha_per_request"] for r in rounds),
            "requests": sum(r["requests"] for r in rounds),
            "non2xx": sum(r["non2xx"] for r in rounds),
            "errors": sum(r["errors"] for r in rounds),
        }
    ratios = {mode: 100 * summary[f"on/{mode}"]["rps"] / summary[f"off/{mode}"]["rps"] for mode in ("full", "stream")}
    ratios_t1s = {mode: 100 * summary[f"on_t1s/{mode}"]["rps"] / summary[f"off/{mode}"]["rps"]
                  for mode in ("full", "stream")}
    return {
        "runs": runs,
        "summary": summary,
        "on_over_off_pct": ratios,
        "target_pct": TARGET_PCT,
        "target_met": all(v >= TARGET_PCT for v in ratios.values()),
        "on_t1s_over_off_pct": ratios_t1s,
        "evalsha_calls_during_gateway_part": evalsha1["calls"] - evalsha0["calls"],
        "evalsha_usec_per_call_whole_run": evalsha1["usec_per_call"],
        "leases_left_in_redis_after_run": leaked,
        "access_log_outcomes": {name: access_log_outcomes(gateways[name]) for name in GATEWAYS},
        "quota_store_log_lines_count": {k: len(v) for k, v in degraded_lines.items()},
        "quota_store_log_lines_first": {k: v[:10] for k, v in degraded_lines.items()},
        "configs": {name: (workdir / f"{name}.yaml").read_text() for name in GATEWAYS},
    }
