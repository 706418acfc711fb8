"""How fast the planner replays: a synthetic day of traffic (or --hours of it) through ``replay``, wall time measured.

    python -m bench.plan_speed               # --hours 24 --start-hour 0 --mean-rate 2 --replicas 2 --seed 0

The trace: Poisson arrivals whose rate follows the day (``mean * (1 + 0.8 sin)``, peaking mid-afternoon), three
keys in two tiers (``free``: 60 requests a minute per key, priority 0; ``pro``: priority 10, a 1 s TTFT target),
prompts of 64-1024 tokens and answers of 16-256, streamed. The config: one simulated model (16 seats, the
simulator's default step times), admission and protection at their defaults. Output: requests, simulated seconds,
wall seconds and their ratio (and per CPU second of this process: the fairer figure on a shared machine), the
report's totals; everything in bench/results/plan_speed.json (or --out).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import time
from pathlib import Path

import orjson

from sluice.config import Settings, parse_settings
from sluice.plan import SloPolicy, Trace, TraceRequest, replay, report

RESULTS = Path(__file__).parent / "results" / "plan_speed.json"
KEYS = {"k1": ("acme", "free"), "k2": ("globex", "free"), "k3": ("initech", "pro")}


def settings() -> Settings:
    return parse_settings({
        "models": [{"name": "m", "sim": {"max_num_seqs": 16, "num_kv_blocks": 4096}}],
        "tiers": {"free": {"priority": 0, "requests": "60/minute", "max_queue_s": 5},
                  "pro": {"priority": 10, "ttft_slo_s": 1.0, "max_queue_s": 10}},
        "keys": [{"id": k, "hash": "sha256:" + str(i) * 64, "tenant": tenant, "tier": tier}
                 for i, (k, (tenant, tier)) in enumerate(KEYS.items())],
    })


def day_trace(hours: float, mean_rate: float, seed: int, *, start_hour: float = 0.0) -> Trace:
    """Arrivals by thinning a Poisson process at the peak rate to the hour's rate, from ``start_hour`` of the day
    for ``hours``; times from the start."""
    rng = random.Random(seed)
    peak, begin_s = mean_rate * 1.8, start_hour * 3600
    t, requests = 0.0, []
    while True:
        t += rng.expovariate(peak)
        if t >= hours * 3600:
            break
        day_s = begin_s + t
        if rng.random() * peak > mean_rate * (1 + 0.8 * math.sin(2 * math.pi * (day_s / 86400 - 0.375))):
            continue
        output = rng.randint(16, 256)
        requests.append(TraceRequest(t, rng.choice(list(KEYS)), None, None, "m", rng.randint(64, 1024), output,
                                     output, True))
    return Trace(tuple(requests), 0, "synthetic")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--start-hour", type=float, default=0.0, help="where in the day the trace begins")
    parser.add_argument("--mean-rate", type=float, default=2.0, help="requests per second, averaged over the day")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    config, trace = settings(), day_trace(args.hours, args.mean_rate, args.seed, start_hour=args.start_hour)
    started, cpu_started = time.perf_counter(), time.process_time()
    result = replay(config, trace, replicas=args.replicas)
    wall_s, cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
    doc = report(result, span_s=trace.span_s, slo=SloPolicy(config, default_ttft_s=None))
    out = {"hours": args.hours, "start_hour": args.start_hour, "mean_rate": args.mean_rate, "replicas": args.replicas,
           "seed": args.seed,
           "requests": len(trace.requests), "simulated_s": result.simulated_s, "wall_s": wall_s,
           "simulated_s_per_wall_s": result.simulated_s / wall_s, "requests_per_wall_s": len(trace.requests) / wall_s,
           "cpu_s": cpu_s, "simulated_s_per_cpu_s": result.simulated_s / cpu_s,
           "load_average": os.getloadavg(), "total": doc["total"]}
    print(f"{out['requests']} requests, {result.simulated_s:.0f} simulated s in {wall_s:.1f} wall s ({cpu_s:.1f} CPU "
          f"s): {out['simulated_s_per_wall_s']:.0f} simulated s per wall s, {out['simulated_s_per_cpu_s']:.0f} per CPU "
          f"s ({out['requests_per_wall_s']:.0f} requests/s); "
          f"ok {doc['total']['ok']}, 429 {doc['total']['429']}, 503 {doc['total']['503']}; "
          f"load average {out['load_average'][0]:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
