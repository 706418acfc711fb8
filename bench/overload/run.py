"""The experiment: capacity first, then every configuration at every load, one process set at a time."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.harness import Processes, command_line, free_port, git_commit, log, machine, wait_until_up
from bench.overload.analysis import analyse, gateway_split, gateway_totals, measured, series_summary
from bench.overload.gateway import gateway_config, priority_reserve
from bench.overload.load import make_tenants, measure_capacity, run_one
from bench.overload.metrics import sim_kind
from bench.overload.report import fmt, markdown, verdicts
from bench.overload.settings import (
    FIFO_PRIORITY,
    GATEWAY_CPU,
    LOAD_CPU,
    MODEL,
    SIM_CPU,
    SIM_FIFO_PRIORITY,
    TENANTS,
    TIERS,
    UNLOADED_LOAD,
)
from sluice.bench import (
    summarize,
    write_plots,
)
from sluice.identity import generate_key


async def run(args: argparse.Namespace, loads: list[float], configs: list[str], workdir: Path,
              procs: Processes) -> dict[str, Any]:
    def sched(fifo_priority: int = FIFO_PRIORITY) -> list[str]:
        return {"fifo": ["chrt", "-f", str(fifo_priority)], "nice": ["nice", "-n", "-10"], "none": []}[args.sched]

    async def start_sim(kind: tuple[str, str]) -> tuple[Any, str]:
        policy, dialect = kind
        # SGLang's priority preemption comes with its priority scheduling (explicit here, with its threshold)
        # and its prefill and decode in one step with --enable-mixed-chunk (its default: prefill-only steps)
        preempt = ["--priority-preemption", "--priority-preemption-threshold", str(args.preempt_threshold),
                   "--mixed-batches" if args.preempt_mixed else "--no-mixed-batches"] \
            if dialect == "sglang" and policy == "priority" else []
        port = free_port()
        name = "-".join(["sim", *([dialect] if dialect != "vllm" else []), *([policy] if policy != "fcfs" else [])])
        proc = procs.start(name, SIM_CPU, [
            *sched(SIM_FIFO_PRIORITY), sys.executable, "-m", "sluice.cli", "sim", "--model", MODEL,
            "--host", "127.0.0.1", "--port", str(port), "--max-num-seqs", str(args.max_num_seqs),
            "--speed", str(args.speed),
            "--output-len-min", str(args.output_range[0]), "--output-len-max", str(args.output_range[1]),
            "--seed", str(args.seed), "--dialect", dialect, "--scheduling-policy", policy, *preempt,
        ])
        url = f"http://127.0.0.1:{port}"
        await asyncio.to_thread(wait_until_up, proc, url + "/health")
        return proc, url

    async def stop(proc: Any) -> None:
        """By its PID; stop_all() skips it once it has exited."""
        proc.popen.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.popen.wait, 10)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            await asyncio.to_thread(proc.popen.wait)

    kind = sim_kind(configs[0])
    sim, sim_url = await start_sim(kind)
    load_before = os.getloadavg()

    capacity = await measure_capacity(sim_url, kind[1], args)
    capacity["sim_policy"], capacity["sim_dialect"] = kind
    log(f"capacity: {capacity['tokens_per_s']:.0f} tokens/s = {capacity['requests_per_s']:.2f} req/s "
        f"(parameters predict {capacity['model_requests_per_s']:.2f}); TPOT p50 {capacity['tpot_p50_ms']:.1f} ms")
    capacity["before"] = dict(capacity)
    slo_tpot_ms = args.slo_tpot_ms or 2 * capacity["tpot_p50_ms"]
    slo = {"ttft_s": args.slo_ttft_s, "tpot_s": slo_tpot_ms / 1e3,
           "tpot_rule": "given" if args.slo_tpot_ms else "2x the engine's TPOT p50 at capacity"}
    keys = {name: generate_key() for name in TENANTS}
    cap_rps = capacity["requests_per_s"]
    result: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command_line(),
        "commit": git_commit(),
        "machine": machine(),
        "settings": {
            "speed": args.speed, "max_num_seqs": args.max_num_seqs, "input_len": args.input_len,
            "output_len": args.output_len, "endpoint": args.endpoint, "loads": loads, "duration_s": args.duration, "warmup_s": args.warmup,
            "unloaded_load": UNLOADED_LOAD, "unloaded_duration_s": args.unloaded_duration,
            "timeout_s": args.timeout, "adaptive": args.adaptive, "window_min": args.window_min,
            "window_max": args.window_max, "tiers": TIERS,
            "tenants": {k: {"tier": t, "share": s} for k, (t, s) in TENANTS.items()},
            "cpus": {"sim": SIM_CPU, "gateway": GATEWAY_CPU, "load_generator": LOAD_CPU}, "seed": args.seed,
            "sched": args.sched,
            "sim_policy": {c: sim_kind(c)[0] for c in configs},
            "sim_dialect": {c: sim_kind(c)[1] for c in configs},
            "preempt_threshold": args.preempt_threshold if "engine-preempt" in configs else None,
            "preempt_mixed_steps": args.preempt_mixed if "engine-preempt" in configs else None,
            "priority_window": {c: priority_reserve(args, c) for c in ("engine-priority", "engine-preempt")
                                if c in configs},
        },
        "capacity": capacity,
        "slo": slo,
        "configs": configs,
        "unloaded": {},
        "runs": {},
        "loadavg_before": load_before,
    }
    for config in configs:
        if sim_kind(config) != kind:  # a fresh simulator with this configuration's policy and dialect
            if sim.popen.poll() is not None:
                raise RuntimeError(f"the simulator died during the run:\n{sim.log_tail()}")
            await stop(sim)
            kind = sim_kind(config)
            sim, sim_url = await start_sim(kind)
            log(f"simulator restarted with --scheduling-policy {kind[0]} --dialect {kind[1]} for {config}")
        gateway = None
        base_url, gateway_url = sim_url, None
        if config != "direct":
            port = free_port()
            cfg = workdir / f"{config}.yaml"
            cfg.write_text(gateway_config(config, args, port, sim_url, keys, workdir / f"{config}.access.log"))
            result.setdefault("gateway_configs", {})[config] = cfg.read_text()
            gateway = procs.start(f"gateway-{config}", GATEWAY_CPU, [
                *sched(), sys.executable, "-m", "sluice.cli", "serve", "--config", str(cfg)])
            base_url = gateway_url = f"http://127.0.0.1:{port}"
            await asyncio.to_thread(wait_until_up, gateway, base_url + "/health")
        gw_keys = keys if gateway else None
        # unloaded: the top tier alone at a tenth of capacity
        tenants = make_tenants(gw_keys, args, only=("premium",))
        results, sampler, drained = await run_one(base_url, sim_url, gateway_url, tenants, UNLOADED_LOAD * cap_rps,
                                                  args.unloaded_duration, 2.0, args.seed, args.timeout,
                                                  args.endpoint, kind[1])
        a = analyse(results, sampler, tenants, warmup_s=2.0, duration_s=args.unloaded_duration,
                    slo_ttft_s=slo["ttft_s"], slo_tpot_s=slo["tpot_s"], max_tokens_per_s=capacity["tokens_per_s"])
        result["unloaded"][config] = {"rate_per_s": UNLOADED_LOAD * cap_rps, "analysis": a}
        log(f"{config} unloaded: premium TTFT p50 {fmt(a['tiers']['premium']['ttft_p50_ms'])} ms, "
            f"p99 {fmt(a['tiers']['premium']['ttft_p99_ms'])} ms")
        tenants = make_tenants(gw_keys, args)
        result["runs"][config] = []
        for i, load in enumerate(loads):
            rate = load * cap_rps
            t_run = time.monotonic()
            access_log = workdir / f"{config}.access.log"
            offset = access_log.stat().st_size if gateway and access_log.exists() else 0
            roles = {"sim": sim, gateway.name if gateway else "": gateway}  # "sim" whatever its policy and dialect
            cpu0 = {name: proc.cpu_s() for name, proc in roles.items() if proc is not None}
            results, sampler, drained = await run_one(base_url, sim_url, gateway_url, tenants, rate, args.duration,
                                                      args.warmup, args.seed + 1 + i, args.timeout,
                                                      args.endpoint, kind[1])
            a = analyse(results, sampler, tenants, warmup_s=args.warmup, duration_s=args.duration,
                        slo_ttft_s=slo["ttft_s"], slo_tpot_s=slo["tpot_s"],
                        max_tokens_per_s=capacity["tokens_per_s"])
            elapsed = time.monotonic() - t_run
            cpu = {name: 100 * (proc.cpu_s() - cpu0[name]) / elapsed for name, proc in roles.items()
                   if proc is not None}
            if gateway is not None:
                a["gateway_split"] = gateway_split(access_log, offset, results, args.warmup, args.duration)
            a["gauges"] = series_summary(sampler.series, args.warmup, args.duration)
            if args.dump_requests:
                args.dump_requests.mkdir(parents=True, exist_ok=True)
                with open(args.dump_requests / f"{config}-{load:g}x.jsonl", "w") as f:
                    for r in results:
                        f.write(json.dumps({k: v for k, v in r.to_json().items() if k != "itl_s"}) + "\n")
            run = {"load": load, "rate_per_s": rate, "analysis": a, "series": sampler.series, "cpu_pct": cpu,
                   "gateway_end": gateway_totals(sampler.end_gateway), "drain_s": drained,
                   "wall_s": time.monotonic() - t_run, "loadavg": os.getloadavg()}
            result["runs"][config].append(run)
            if load == max(loads):
                out_dir = args.plots_dir / f"{config}-{load:g}x"
                out_dir.mkdir(parents=True, exist_ok=True)
                try:
                    window = measured(results, args.warmup, args.duration)
                    write_plots(window, summarize(window, duration_s=args.duration - args.warmup, tenants=tenants),
                                out_dir)
                except ImportError:
                    pass
            prem = a["tiers"]["premium"]
            log(f"{config} {load:g}x ({rate:.1f} req/s): engine {100 * a['engine_share_of_max']:.1f}% of max, "
                f"goodput {a['all']['goodput_per_s']:.1f}/s, rejected {100 * a['all']['rejection_rate']:.0f}%, "
                f"premium p99 TTFT {fmt(prem['ttft_p99_ms'])} ms, Jain {a['jain_goodput']:.3f} "
                f"[{run['wall_s']:.0f} s]")
        if gateway is not None:  # stopped by its PID now
            await stop(gateway)
    if sim.popen.poll() is not None:
        raise RuntimeError(f"the simulator died during the run:\n{sim.log_tail()}")
    # The engine's maximum is re-measured after the runs; the higher of the two is its maximum, and every run's
    # share is restated against it (a maximum depressed by a noisy moment would flatter every share).
    after = await measure_capacity(sim_url, kind[1], args)  # on the last configuration's simulator (no priority fields)
    after["sim_policy"], after["sim_dialect"] = kind
    log(f"capacity after the runs: {after['tokens_per_s']:.0f} tokens/s = {after['requests_per_s']:.2f} req/s")
    capacity["after"] = after
    best = max(capacity["before"]["tokens_per_s"], after["tokens_per_s"])
    capacity["max_tokens_per_s"] = best
    capacity["max_requests_per_s"] = best / args.output_mean
    for runs in [result["runs"][c] for c in configs] + [[u] for u in result["unloaded"].values()]:
        for run in runs:
            run["analysis"]["engine_share_of_max"] = run["analysis"]["engine_tokens_per_s"] / best
    result["loadavg_after"] = os.getloadavg()
    result["verdict"] = verdicts(result)
    result["table"] = markdown(result)
    return result
