"""Overload configuration (e) in engine time only: the simulator's EngineModel driven directly, no HTTP, no gateway
process, no event loops. It separates what the engine's step structure costs premium's TTFT from what the software
around it (gateway, simulator server, load generator, on two shared vCPUs) adds.

    python -m bench.engine_time_model            # --load 3 --capacity 30.5 --duration 60 --seeds 0,1 --pace-ms 0,4,8,12

The same callers as bench/overload.py (its TIERS and TENANTS: shares, priorities, max_queue_s) arrive as a Poisson
process; a gateway model dispatches at step boundaries: premium while fewer than --window requests are in the
engine, lower tiers while fewer than --stop are, in priority then arrival order, at most one lower-tier dispatch
per --pace-ms (0: no pacing), dropping a request that waited longer than its tier's max_queue_s. The engine: the
sglang dialect with priority scheduling, preemption for a seat (--threshold) and mixed steps, 16 seats, speed 2,
256-token prompts, 64-token answers. TTFT = arrival to the first token, in engine time; the first 10 s are not
measured. Throughput is compared with the same engine fed FCFS up to its 16 seats.
"""

from __future__ import annotations

import argparse
import collections
import random
from collections.abc import Iterator

from bench.overload.settings import TENANTS, TIERS
from sluice.config import SimSettings
from sluice.sim import EngineModel, Sequence

PROMPT, ANSWER, SETTLE_S = 256, 64, 10.0


def callers(premium_only: bool) -> list[tuple[str, float, int, float]]:
    """(tier, share of arrivals, priority in the engine's convention (lower first), max_queue_s)."""
    shares: dict[str, float] = collections.defaultdict(float)
    for tier, share in TENANTS.values():
        shares[tier] += share
    if premium_only:
        shares = {"premium": 1.0}
    return [(tier, share, -int(TIERS[tier]["priority"]), TIERS[tier]["max_queue_s"]) for tier, share in shares.items()]


def run(rate: float, *, pace_s: float, stop: int, window: int, threshold: int, duration_s: float, seed: int,
        premium_only: bool = False) -> tuple[dict[str, list[float]], float]:
    engine = EngineModel(SimSettings(dialect="sglang", scheduling_policy="priority", max_num_seqs=16, speed=2.0,
                                     priority_preemption=True, priority_preemption_threshold=threshold,
                                     mixed_batches=True))
    rng, ids = random.Random(seed), iter(range(1, 1 << 62))
    kinds = callers(premium_only)
    t, next_arrival = 0.0, rng.expovariate(rate)
    waiting: list[tuple[float, str, int, float]] = []
    arrived: dict[Sequence, tuple[float, str]] = {}
    ttft: dict[str, list[float]] = collections.defaultdict(list)
    last_lower, tokens = -1e9, 0
    while t < duration_s:
        while next_arrival <= t:
            waiting.append((next_arrival, *pick(rng, kinds)))
            next_arrival += rng.expovariate(rate)
        waiting, last_lower = dispatch(engine, waiting, arrived, ids, t, last_lower, pace_s, stop, window)
        step = engine.schedule()
        t += step.duration_s or 0.001  # an idle engine: look again a millisecond later
        for seq in engine.commit(step):
            tokens += t > SETTLE_S
            if seq.generated == 1 and t > SETTLE_S:
                ttft[arrived[seq][1]].append(t - arrived[seq][0])
            if seq.done:
                arrived.pop(seq)
    return ttft, tokens / (duration_s - SETTLE_S)


def pick(rng: random.Random, kinds: list[tuple[str, float, int, float]]) -> tuple[str, int, float]:
    r, acc = rng.random(), 0.0
    for tier, share, priority, max_queue_s in kinds:
        acc += share
        if r <= acc:
            break
    return tier, priority, max_queue_s


def dispatch(engine: EngineModel, waiting: list[tuple[float, str, int, float]], arrived: dict[Sequence, tuple[float, str]],
             ids: Iterator[int], t: float, last_lower: float, pace_s: float, stop: int, window: int
             ) -> tuple[list[tuple[float, str, int, float]], float]:
    kept = []
    for item in sorted(waiting, key=lambda w: (w[2], w[0])):
        arrival, tier, priority, max_queue_s = item
        if t - arrival > max_queue_s:
            continue  # queue timeout
        top = tier == "premium"
        if len(arrived) < (window if top else stop) and (top or t - last_lower >= pace_s):
            seq = Sequence(seq_id=next(ids), prompt_tokens=PROMPT, output_len=ANSWER, priority=priority)
            engine.submit([seq])
            arrived[seq] = (arrival, tier)
            last_lower = last_lower if top else t
        else:
            kept.append(item)
    return kept, last_lower


def p(values: list[float], q: float) -> float:
    return sorted(values)[int(q * (len(values) - 1))] * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load", type=float, default=3.0)
    parser.add_argument("--capacity", type=float, default=30.5, help="requests/s at the engine's maximum")
    parser.add_argument("--duration", type=float, default=60.0, help="simulated seconds (> 10: the first 10 settle)")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--pace-ms", default="0,4,8,12")
    parser.add_argument("--stop", type=int, default=15)
    parser.add_argument("--window", type=int, default=24)
    parser.add_argument("--threshold", type=int, default=5)
    args = parser.parse_args()
    if args.duration <= SETTLE_S:
        parser.error(f"--duration must exceed the {SETTLE_S:.0f} s the model settles for before it measures")
    common = {"stop": args.stop, "window": args.window, "threshold": args.threshold, "duration_s": args.duration}
    unloaded, _ = run(0.1 * args.capacity, pace_s=0.0, seed=0, premium_only=True, **common)
    base = p(unloaded["premium"], 0.99)
    _, fcfs = run(args.load * args.capacity, pace_s=0.0, seed=0, **{**common, "stop": 16, "window": 16})
    print(f"premium unloaded: p50 {p(unloaded['premium'], 0.5):.1f} ms, p99 {base:.1f} ms (engine time)")
    for pace_ms in (float(x) for x in args.pace_ms.split(",")):
        for seed in (int(x) for x in args.seeds.split(",")):
            ttft, tokens = run(args.load * args.capacity, pace_s=pace_ms / 1e3, seed=seed, **common)
            prem = ttft["premium"]
            print(f"pace {pace_ms:4.0f} ms, seed {seed}: premium p50 {p(prem, 0.5):.1f} ms, p99 {p(prem, 0.99):.1f} ms "
                  f"= {p(prem, 0.99) / base:.2f}x unloaded; {tokens:.0f} tokens/s = {100 * tokens / fcfs:.1f}% of FCFS")


if __name__ == "__main__":
    main()
