"""Part 1: quota decisions per second (reserve then settle) on each store, and what they cost the client."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import time
from typing import Any

import redis
import uvloop

from bench.harness import (
    MODEL,
)
from bench.limiter.settings import CONCURRENCIES, GATEWAY_CPU, STORES, log
from sluice.clock import MonotonicClock
from sluice.config import QuotaSettings, TierSettings
from sluice.errors import RateLimitError
from sluice.identity import Principal
from sluice.quota import (
    FailoverStore,
    MemoryStore,
    Price,
    QuotaLimiter,
    QuotaPolicy,
    QuotaStore,
    RedisStore,
    open_store,
)

# ---------------------------------------------------------------------------------------------- part 1: decisions


class DegradedCounter:
    """Counts FailoverStore's switches to degraded mode (a Redis call slower than store_timeout_s, or failed)."""

    def __init__(self) -> None:
        self.went_down = 0

    def quota_store_degraded(self, degraded: bool) -> None:
        self.went_down += int(degraded)


def bench_policy(key_prefix: str) -> QuotaPolicy:
    """3 buckets + 1 lease per decision; limits far above what the run can spend (nothing is ever refused)."""
    tier = TierSettings.model_validate({
        "requests": "100000000/minute",
        "tokens": "100000000000/minute",
        "concurrent": 100000,
        "limits": [{"per": "tenant", "tokens": "100000000000/minute"}],
    })
    return QuotaPolicy({"pro": tier}, QuotaSettings(), key_prefix=key_prefix)


PRINCIPALS = [Principal(key_id=f"k{i}", user=f"u{i}", tenant=f"t{i % 4}", tier="pro") for i in range(16)]
PRICE = Price(prompt_tokens=20, max_output_tokens=256)
USED_PROMPT, USED_COMPLETION = 20, 100  # settle refunds 156 tokens on both token buckets, then releases the lease


def open_bench_store(kind: str, redis_url: str, observer: DegradedCounter) -> QuotaStore:
    if kind == "memory":
        return MemoryStore(MonotonicClock())
    if kind == "redis_direct":
        return RedisStore.from_url(redis_url, timeout_s=5.0)  # the bare store, measured without failover
    return open_store(redis_url, QuotaSettings(), MonotonicClock(), observer=observer)


async def decisions_run(kind: str, redis_url: str, concurrency: int, duration_s: float, warmup_s: float,
                        key_prefix: str = "{sluice-bench}") -> dict[str, Any]:
    observer = DegradedCounter()
    store = open_bench_store(kind, redis_url, observer)
    limiter = QuotaLimiter(bench_policy(key_prefix), store, MonotonicClock())
    plan = limiter.policy.plan(PRINCIPALS[0], MODEL, PRICE)
    assert len(plan.buckets) == 3 and len(plan.leases) == 1, plan
    reserve_ns: list[int] = []
    cycle_ns: list[int] = []
    refused = 0
    cycles_all = 0  # warm-up included, to divide Redis' EVALSHA count by
    # Deadlines, not flags: on MemoryStore nothing awaits, so a task never yields to a timer.
    record_from = time.perf_counter_ns() + int(warmup_s * 1e9)
    record_until = record_from + int(duration_s * 1e9)
    cpu_marks: list[float] = []

    async def worker(i: int) -> None:
        nonlocal refused, cycles_all
        principal = PRINCIPALS[i % len(PRINCIPALS)]
        while True:
            t0 = time.perf_counter_ns()
            if t0 >= record_until:
                if len(cpu_marks) == 1:
                    cpu_marks.append(time.process_time())
                return
            if t0 >= record_from and not cpu_marks:
                cpu_marks.append(time.process_time())
            try:
                reservation = await limiter.reserve(principal, MODEL, PRICE)
            except RateLimitError:
                refused += 1
                continue
            t1 = time.perf_counter_ns()
            await limiter.settle(reservation, USED_PROMPT, USED_COMPLETION)
            t2 = time.perf_counter_ns()
            cycles_all += 1
            if t0 >= record_from and t2 <= record_until:
                reserve_ns.append(t1 - t0)
                cycle_ns.append(t2 - t0)

    tasks = [asyncio.create_task(worker(i)) for i in range(concurrency)]
    try:
        await asyncio.gather(*tasks)
        cpu = cpu_marks[1] - cpu_marks[0]  # CPU of this whole process over the timed window
        elapsed = duration_s
    finally:
        for t in tasks:
            t.cancel()
        await limiter.close()
        await store.close()
    degraded = isinstance(store, FailoverStore) and (observer.went_down > 0 or store.degraded)
    return {
        "store": kind,
        "concurrency": concurrency,
        "decisions": len(cycle_ns),
        "decisions_with_warmup": cycles_all,
        "decisions_per_s": len(cycle_ns) / elapsed,
        "reserve_p50_us": pct(reserve_ns, 50) / 1e3,
        "reserve_p99_us": pct(reserve_ns, 99) / 1e3,
        "cycle_p50_us": pct(cycle_ns, 50) / 1e3,
        "cycle_p99_us": pct(cycle_ns, 99) / 1e3,
        "client_cpu_us_per_decision": 1e6 * cpu / max(1, len(cycle_ns)),
        "client_cpu_pct": 100 * cpu / elapsed,
        "refused": refused,
        "degraded_switches": observer.went_down,
        "degraded": degraded,
    }


def pct(values: list[int], p: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))])


def live_leases(port: int, prefix: str) -> int:
    """Concurrency permits still held in Redis under ``prefix`` (after every request has been settled: leaked)."""
    client = redis.Redis(port=port)
    now_us = int(time.time() * 1e6)
    return sum(int(client.zcount(k, now_us, "+inf")) for k in client.scan_iter(match=f"{prefix}*:concurrent"))


def access_log_outcomes(proc: Any) -> dict[str, int]:
    """Counts of ``status reason`` over the gateway's access-log lines (warm-ups and preflights included)."""
    counts: dict[str, int] = {}
    for line in proc.log_path.read_text(errors="replace").splitlines():
        if line.startswith('{"request_id"'):
            doc = json.loads(line)
            outcome = f"{doc.get('status')} {doc.get('reason') or ''}".strip()
            counts[outcome] = counts.get(outcome, 0) + 1
    return counts


def redis_evalsha_stats(port: int) -> dict[str, Any]:
    info = redis.Redis(port=port).info("commandstats")
    stats = info.get("cmdstat_evalsha", {})
    return {"calls": int(stats.get("calls", 0)), "usec_per_call": float(stats.get("usec_per_call", 0.0))}


def part_decisions(args: argparse.Namespace, redis_url: str, redis_port: int) -> dict[str, Any]:
    """Runs in this process, pinned to CPU 1 for the duration (redis-server is on CPU 0)."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {int(GATEWAY_CPU)})
    runs: dict[str, list[dict[str, Any]]] = {}
    try:
        for round_ in range(args.rounds):
            order = STORES[round_ % len(STORES):] + STORES[:round_ % len(STORES)]
            for c in CONCURRENCIES:
                for kind in order:
                    calls0 = redis_evalsha_stats(redis_port)["calls"]
                    prefix = f"{{sluice-bench-{kind}-c{c}-r{round_}}}"
                    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                        r = runner.run(decisions_run(kind, redis_url, c, args.decision_s, 0.5, prefix))
                    r["evalsha_calls"] = redis_evalsha_stats(redis_port)["calls"] - calls0
                    r["leaked_leases"] = 0 if kind == "memory" else live_leases(redis_port, prefix)
                    r["round"] = round_
                    runs.setdefault(f"{kind}/c{c}", []).append(r)
                    log(f"decisions {kind} c{c} round {round_}: {r['decisions_per_s']:.0f}/s, "
                        f"cycle p50 {r['cycle_p50_us']:.0f} us p99 {r['cycle_p99_us']:.0f} us, "
                        f"refused {r['refused']}, degraded switches {r['degraded_switches']}, "
                        f"leases left in Redis {r['leaked_leases']}")
    finally:
        os.sched_setaffinity(0, before)
    summary = {}
    for name, rounds in runs.items():
        summary[name] = {
            "store": rounds[0]["store"],
            "concurrency": rounds[0]["concurrency"],
            **{k: statistics.median(r[k] for r in rounds) for k in (
                "decisions_per_s", "reserve_p50_us", "reserve_p99_us", "cycle_p50_us", "cycle_p99_us",
                "client_cpu_us_per_decision", "client_cpu_pct")},
            "decisions_per_s_min": min(r["decisions_per_s"] for r in rounds),
            "decisions_per_s_max": max(r["decisions_per_s"] for r in rounds),
            "evalsha_per_decision": statistics.median(
                r["evalsha_calls"] / max(1, r["decisions_with_warmup"]) for r in rounds),
            "leaked_leases": sum(r["leaked_leases"] for r in rounds),
            "refused": sum(r["refused"] for r in rounds),
            "degraded_switches": sum(r["degraded_switches"] for r in rounds),
        }
    return {"runs": runs, "summary": summary}
