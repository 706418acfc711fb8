"""SLO-aware admission under overload: goodput per tier, fixed window alone vs fixed window + ``ttft_slo_s``.

    python -m bench.slo_admission            # ~6 min; results in bench/results/slo_admission.json

One simulated engine (``sluice sim``), two gateways in front of it with the same fixed window (the engine's seats)
and the same tiers (bench/overload's: premium, standard, batch and their ``max_queue_s``); the second also gives
each tier a TTFT target (``--slo``). Its capacity is measured first (closed loop, 2x its seats), then open-loop
Poisson arrivals at 1x, 2x and 3x of it go to each gateway in turn, same seed, the order of the two alternating
from round to round. Goodput: answers in full whose first token came within their tier's target, per second of
the measured window (arrivals after the warmup). Refusal latency: the client's time to a 503 slo_unattainable.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
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
    free_port,
    git_commit,
    log,
    machine,
    wait_until_up,
    write_result,
)
from bench.overload.settings import MODEL, TENANTS, TIERS
from sluice.bench import Fixed, LoadSpec, Poisson, RequestResult, RequestShape, Tenant, percentile, run_load
from sluice.clock import MonotonicClock
from sluice.identity import generate_key, hash_key

RESULTS = RESULTS_DIR / "slo_admission.json"
SIM_CPU, GATEWAY_CPU = "0", "1"
CONFIGS = ("fixed", "slo")


def gateway_config(slo: bool, args: argparse.Namespace, port: int, sim_url: str, keys: dict[str, str],
                   access_log: Path) -> str:
    def tier(name: str, t: dict[str, float]) -> str:
        target = f", ttft_slo_s: {args.targets[name]}" if slo else ""
        max_queue_s = t["max_queue_s"] if args.max_queue_s is None else args.max_queue_s
        return f"  {name}: {{priority: {int(t['priority'])}, max_queue_s: {max_queue_s}{target}}}"

    keys_yaml = "\n".join(f"  - {{id: {n}, hash: '{hash_key(keys[n])}', tenant: {n}, tier: {TENANTS[n][0]}}}"
                          for n in TENANTS)
    return (f"server: {{host: 127.0.0.1, port: {port}, access_log_path: '{access_log}'}}\n"
            f"auth: {{mode: api_key}}\nmodels:\n  - name: {MODEL}\n"
            f"    engine: {{dialect: vllm, urls: ['{sim_url}']}}\n"
            f"    admission: {{window: {{kind: fixed, initial: {args.max_num_seqs}}}}}\n"
            "tiers:\n" + "\n".join(tier(n, t) for n, t in TIERS.items()) + f"\nkeys:\n{keys_yaml}\n")


def tenants(args: argparse.Namespace, keys: dict[str, str] | None) -> tuple[Tenant, ...]:
    return tuple(Tenant(n, Fixed(args.input_len), Fixed(args.output_len), api_key=keys[n] if keys else None,
                        weight=share) for n, (_, share) in TENANTS.items())


async def measure_capacity(sim_url: str, args: argparse.Namespace) -> float:
    """Requests/s the engine finishes with every seat busy (closed loop, twice its seats)."""
    shape = RequestShape(sim_url, MODEL, stream=True, ignore_eos=True, timeout_s=60)
    spec = LoadSpec(concurrency=2 * args.max_num_seqs, duration_s=args.capacity_s)
    record = await run_load(shape, spec, tenants(args, None)[:1], seed=args.seed, clock=MonotonicClock())
    ok = [r for r in record.results if r.ok and r.start_s >= args.capacity_s / 4]
    return len(ok) / (args.capacity_s * 3 / 4)


def analyse(results: list[RequestResult], args: argparse.Namespace) -> dict[str, Any]:
    measured_s = args.duration - args.warmup
    window = [r for r in results if args.warmup <= r.start_s < args.duration]
    tiers: dict[str, Any] = {}
    for tier in TIERS:
        mine = [r for r in window if TENANTS[r.tenant][0] == tier]
        ok = [r for r in mine if r.ok]
        good = [r for r in ok if r.ttft_s is not None and r.ttft_s <= args.targets[tier]]
        slo_refused = sorted(r.e2e_s for r in mine if r.reason == "slo_unattainable" and r.e2e_s is not None)
        reasons: dict[str, int] = {}
        for r in mine:
            if not r.ok:
                reasons[r.reason or str(r.status)] = reasons.get(r.reason or str(r.status), 0) + 1
        ttft = sorted(r.ttft_s for r in ok if r.ttft_s is not None)
        tiers[tier] = {
            "sent": len(mine), "answered": len(ok), "goodput_per_s": len(good) / measured_s,
            "good_share_of_sent": len(good) / len(mine) if mine else None, "refused": reasons,
            "ttft_p50_ms": 1e3 * percentile(ttft, 50) if ttft else None,
            "ttft_p99_ms": 1e3 * percentile(ttft, 99) if ttft else None,
            "slo_refusal_ms": {"count": len(slo_refused),
                               "p50": 1e3 * percentile(slo_refused, 50) if slo_refused else None,
                               "p99": 1e3 * percentile(slo_refused, 99) if slo_refused else None},
        }
    refusals = sorted(r.e2e_s for r in window if r.reason == "slo_unattainable" and r.e2e_s is not None)
    return {"goodput_per_s": sum(t["goodput_per_s"] for t in tiers.values()), "tiers": tiers,
            "slo_refusal_ms": {"count": len(refusals),
                               "p50": 1e3 * percentile(refusals, 50) if refusals else None,
                               "p99": 1e3 * percentile(refusals, 99) if refusals else None}}


def gateway_refusal_ms(access_log: Path, offset: int) -> dict[str, Any]:
    """The gateway's own time to answer slo_unattainable (its access log's duration_s), since ``offset``."""
    with open(access_log, "rb") as f:
        f.seek(offset)
        lines = f.read().splitlines()
    took = sorted(1e3 * doc["duration_s"] for doc in map(json.loads, lines)
                  if doc.get("reason") == "slo_unattainable" and "duration_s" in doc)
    return {"count": len(took), "p50": percentile(took, 50) if took else None,
            "p99": percentile(took, 99) if took else None, "max": took[-1] if took else None}


def summary(runs: list[dict[str, Any]], loads: list[float]) -> list[dict[str, Any]]:
    """Per load: each configuration's goodput (mean over rounds, per tier) and the SLO refusals' latency."""
    rows = []
    for load in loads:
        row: dict[str, Any] = {"load": load}
        for config in CONFIGS:
            mine = [r["analysis"] for r in runs if r["load"] == load and r["config"] == config]
            row[config] = {"goodput_per_s": sum(a["goodput_per_s"] for a in mine) / len(mine),
                           "tiers": {t: sum(a["tiers"][t]["goodput_per_s"] for a in mine) / len(mine) for t in TIERS}}
        slo_runs = [r for r in runs if r["load"] == load and r["config"] == "slo"]
        row["slo_refusal_p99_ms_worst"] = _worst(r["analysis"]["slo_refusal_ms"]["p99"] for r in slo_runs)
        row["gateway_slo_refusal_p99_ms_worst"] = _worst(r["gateway_refusal_ms"]["p99"] for r in slo_runs)
        row["goodput_gain"] = row["slo"]["goodput_per_s"] / max(row["fixed"]["goodput_per_s"], 1e-9)
        rows.append(row)
    return rows


def _worst(values: Any) -> float | None:
    return max((v for v in values if v is not None), default=None)


def markdown(rows: list[dict[str, Any]]) -> str:
    tiers = list(TIERS)
    head = ("| load | goodput fixed (req/s) | goodput SLO-aware | gain | " +
            " | ".join(f"{t} fixed / SLO" for t in tiers) +
            " | slo_unattainable p99, client / gateway (ms, worst round) |")
    lines = [head, "|" + "---|" * (5 + len(tiers))]
    for r in rows:
        per_tier = " | ".join(f"{r['fixed']['tiers'][t]:.2f} / {r['slo']['tiers'][t]:.2f}" for t in tiers)
        p99 = " / ".join("-" if v is None else f"{v:.1f}" for v in (r["slo_refusal_p99_ms_worst"],
                                                                      r["gateway_slo_refusal_p99_ms_worst"]))
        lines.append(f"| {r['load']:g}x | {r['fixed']['goodput_per_s']:.2f} | {r['slo']['goodput_per_s']:.2f} | "
                     f"{r['goodput_gain']:.2f}x | {per_tier} | {p99} |")
    return "\n".join(lines)


async def run(args: argparse.Namespace, procs: Processes, workdir: Path) -> dict[str, Any]:
    port = free_port()
    sim = procs.start("sim", SIM_CPU, [
        sys.executable, "-m", "sluice.cli", "sim", "--model", MODEL, "--host", "127.0.0.1", "--port", str(port),
        "--max-num-seqs", str(args.max_num_seqs), "--speed", str(args.speed), "--seed", str(args.seed)])
    sim_url = f"http://127.0.0.1:{port}"
    await asyncio.to_thread(wait_until_up, sim, sim_url + "/health")
    capacity = await measure_capacity(sim_url, args)
    log(f"capacity {capacity:.2f} req/s")
    keys = {n: generate_key() for n in TENANTS}
    urls: dict[str, str] = {}
    for config in CONFIGS:
        gw_port = free_port()
        cfg = workdir / f"{config}.yaml"
        cfg.write_text(gateway_config(config == "slo", args, gw_port, sim_url, keys, workdir / f"{config}.log"))
        gw = procs.start(f"gateway-{config}", GATEWAY_CPU, [sys.executable, "-m", "sluice.cli", "serve",
                                                            "--config", str(cfg)])
        urls[config] = f"http://127.0.0.1:{gw_port}"
        await asyncio.to_thread(wait_until_up, gw, urls[config] + "/health")
    runs = []
    for round_ in range(args.rounds):
        for i, load in enumerate(args.loads):
            order = CONFIGS if (round_ + i) % 2 == 0 else tuple(reversed(CONFIGS))
            for config in order:
                shape = RequestShape(urls[config], MODEL, stream=True, ignore_eos=True, timeout_s=args.timeout)
                spec = LoadSpec(Poisson(load * capacity), duration_s=args.duration)
                t0, access_log = time.monotonic(), workdir / f"{config}.log"
                offset = access_log.stat().st_size if access_log.exists() else 0
                record = await run_load(shape, spec, tenants(args, keys), seed=args.seed + 100 * round_ + i,
                                        clock=MonotonicClock())
                a = analyse(record.results, args)
                runs.append({"round": round_, "load": load, "config": config, "rate_per_s": load * capacity,
                             "analysis": a, "wall_s": time.monotonic() - t0, "loadavg": os.getloadavg()})
                log(f"round {round_} {load:g}x {config}: goodput {a['goodput_per_s']:.2f}/s, "
                    f"slo refusals {a['slo_refusal_ms']['count']} p99 {a['slo_refusal_ms']['p99']} ms")
                await asyncio.sleep(1.0)  # the engine drains what the gateway still had in flight; logs flush
                runs[-1]["gateway_refusal_ms"] = gateway_refusal_ms(access_log, offset) if access_log.exists() \
                    else {"count": 0, "p50": None, "p99": None, "max": None}
    rows = summary(runs, args.loads)
    return {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "command": command_line(),
            "commit": git_commit(), "machine": machine(), "loadavg_end": os.getloadavg(),
            "settings": {k: v for k, v in vars(args).items() if k != "output"} | {"tiers": TIERS,
                                                                                   "tenants": TENANTS},
            "capacity_requests_per_s": capacity, "summary": rows, "table": markdown(rows), "runs": runs}


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.slo_admission", description=__doc__.split("\n")[0])
    p.add_argument("--loads", default="1,2,3", help="offered loads, in multiples of the engine's capacity")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds of every load and configuration")
    p.add_argument("--duration", type=float, default=15.0, help="seconds of arrivals per run")
    p.add_argument("--warmup", type=float, default=3.0, help="first seconds of arrivals not measured")
    p.add_argument("--capacity-s", type=float, default=8.0)
    p.add_argument("--max-num-seqs", type=int, default=16)
    p.add_argument("--speed", type=float, default=2.0)
    p.add_argument("--input-len", type=int, default=256)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--slo", default="premium=1.0,standard=1.0,batch=2.0", help="each tier's TTFT target, seconds")
    p.add_argument("--max-queue-s", type=float, default=10.0,
                   help="every tier's max_queue_s (default 10, the setting's default); 0 to keep bench/overload's "
                        "tuned ones (premium 5, standard 0.5, batch 2)")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, default=RESULTS)
    args = p.parse_args()
    args.loads = [float(x) for x in args.loads.split(",")]
    args.max_queue_s = args.max_queue_s or None
    args.targets = {k: float(v) for k, v in (kv.split("=") for kv in args.slo.split(","))}
    exit_on_signals()
    with tempfile.TemporaryDirectory(prefix="sluice-slo-") as tmp:
        procs = Processes(Path(tmp))
        try:
            result = asyncio.run(run(args, procs, Path(tmp)))
        finally:
            procs.stop_all()
    write_result(args.output, result)
    print(result["table"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
