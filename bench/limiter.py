"""The quota limiter: how fast it decides, how well it holds a limit, and what it costs the gateway.

One command starts everything (on 127.0.0.1, free ports), runs three parts, stops everything by PID at the end
(also on error or SIGTERM) and reports:

    python bench/limiter.py                  # --decision-s 3 --rounds 3 --duration 5 --warmup 1

1. Decisions: ``QuotaLimiter.reserve`` then ``QuotaLimiter.settle`` (one settle call, as the gateway settles a
   request), with a ``QuotaPolicy`` built from ``TierSettings``/``QuotaSettings``: per decision 3 GCRA buckets
   (requests and tokens per key, tokens per tenant) and 1 concurrency lease (per key). Stores: ``MemoryStore``,
   ``RedisStore`` used directly, and ``open_store("redis://...")`` (``FailoverStore`` around ``RedisStore``, what
   the gateway runs). Concurrency 1 (sequential awaits) and 64 (64 asyncio tasks, one process, uvloop). This
   process runs alone on CPU 1; ``redis-server --save ''`` (started here) on CPU 0.
2. Overshoot, baselines vs ours, in the same run. The baselines are MODELS reimplemented here (not the real
   libraries): (a) a per-process fixed window (slowapi's default strategy with memory storage) in N processes,
   burst at a window boundary; (b) post-hoc token charging (LiteLLM-style: check usage < budget before the call,
   add the tokens after the response) with K concurrent long answers; against (c) ours, for real: 4
   ``QuotaLimiter``s, each with its own Redis client (``open_store``), sharing one redis-server.
3. Gateway: ``sluice serve`` with quotas off (no limits, ``state: memory://``) and on (per-key requests, tokens
   and concurrent limits, ``state: redis://``), API keys on in both, against ``sluice sim --speed 1e9``; gateway
   alone on CPU 1, simulator, redis-server and wrk on CPU 0; ``wrk -t1 -c64`` non-streamed and streamed chat
   (max_tokens 16, ignore_eos), warm-up then timed run, rounds interleaved, medians. Target: on/off >= 80%.

Output: markdown tables on stdout; everything (each round) in bench/results/limiter.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import (  # noqa: E402 - the sibling benchmark's process and wrk helpers
    MODEL,
    WRK_LUA,
    Processes,
    free_port,
    machine,
    preflight,
    request_body,
    run_wrk,
    wait_port,
    wait_until_up,
)

from sluice.clock import MonotonicClock  # noqa: E402
from sluice.config import QuotaSettings, TierSettings  # noqa: E402
from sluice.errors import RateLimitError  # noqa: E402
from sluice.identity import Principal, generate_key, hash_key  # noqa: E402
from sluice.quota import FailoverStore, MemoryStore, Price, QuotaLimiter, QuotaPolicy, QuotaStore, open_store  # noqa: E402
from sluice.quota._redis import RedisStore  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "limiter.json"
GATEWAY_CPU, LOAD_CPU = "1", "0"
STORES = ("memory", "redis_direct", "redis_gateway")
STORE_LABELS = {
    "memory": "MemoryStore",
    "redis_direct": "RedisStore (direct)",
    "redis_gateway": "open_store(redis://) = FailoverStore(RedisStore), as the gateway",
}
CONCURRENCIES = (1, 64)
TARGET_PCT = 80.0


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


# ---------------------------------------------------------------------------------------------- part 2: overshoot


class FixedWindowModel:
    """MODEL of a per-process fixed-window counter (slowapi's default strategy on its default memory storage):
    one counter per process, reset when the wall clock enters a new window. Not the real library."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self.window = -1
        self.count = 0

    def hit(self, now: float) -> bool:
        window = math.floor(now / self.window_s)
        if window != self.window:
            self.window, self.count = window, 0
        if self.count >= self.limit:
            return False
        self.count += 1
        return True


def fixed_window_boundary(processes: int, limit: int, per_burst: int) -> dict[str, Any]:
    """``per_burst`` requests 0.5 s before the minute boundary, as many 0.5 s after, round-robin over processes."""
    gateways = [FixedWindowModel(limit, 60.0) for _ in range(processes)]
    admitted = 0
    for now in (59.5, 60.5):
        for i in range(per_burst):
            admitted += gateways[i % processes].hit(now)
    return {"model": "fixed window per process (slowapi-like)", "processes": processes, "limit": limit,
            "period": "minute", "sent": 2 * per_burst, "window_s": 1.0, "admitted": admitted,
            "admitted_over_limit": admitted / limit}


async def ours_boundary(redis_url: str, clients: int, limit: int, per_burst: int, tag: str) -> dict[str, Any]:
    """Ours, real: the same two bursts 1 s apart (Redis' clock), ``clients`` limiters sharing one Redis."""
    tier = TierSettings.model_validate({"requests": f"{limit}/minute"})
    limiters = [QuotaLimiter(QuotaPolicy({"t": tier}, QuotaSettings(gateway_replicas=clients)),
                             open_store(redis_url, QuotaSettings(gateway_replicas=clients), MonotonicClock()),
                             MonotonicClock()) for _ in range(clients)]
    principal = Principal(key_id=f"boundary-{tag}", user="u", tenant="t", tier="t")
    price = Price(prompt_tokens=10, max_output_tokens=10)

    async def one(i: int) -> bool:
        try:
            await limiters[i % clients].reserve(principal, MODEL, price)
            return True
        except RateLimitError:
            return False

    admitted = 0
    t0 = time.monotonic()
    try:
        for burst in range(2):
            if burst:
                await asyncio.sleep(max(0.0, t0 + 1.0 - time.monotonic()))
            admitted += sum(await asyncio.gather(*(one(i) for i in range(per_burst))))
        elapsed = time.monotonic() - t0
    finally:
        for lim in limiters:
            await lim.close()
            await lim.store.close()
    return {"model": "ours (GCRA in Redis, real)", "processes": clients, "limit": limit, "period": "minute",
            "sent": 2 * per_burst, "window_s": round(elapsed, 3), "admitted": admitted,
            "admitted_over_limit": admitted / limit}


class PostHocModel:
    """MODEL of post-hoc token charging (LiteLLM-style TPM limit): before the call, refuse only if the tokens
    already charged this minute reach the budget; after the response, add the request's tokens. The counter is
    modelled as perfectly shared and instantly consistent across processes (the baseline's best case)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.charged = 0

    def check(self) -> bool:
        return self.charged < self.budget

    def charge(self, tokens: int) -> None:
        self.charged += tokens


async def posthoc_burst(budget: int, k: int, prompt: int, answer: int, processes: int) -> dict[str, Any]:
    model = PostHocModel(budget)
    admitted = 0

    async def request() -> None:
        nonlocal admitted
        if not model.check():
            return
        admitted += 1
        await asyncio.sleep(0.05)  # the engine generates the long answer; nothing is charged meanwhile
        model.charge(prompt + answer)

    await asyncio.gather(*(request() for _ in range(k)))
    return {"model": "post-hoc charging (LiteLLM-like), shared counter", "processes": processes,
            "budget_tokens_per_minute": budget, "concurrent_requests": k, "tokens_per_request": prompt + answer,
            "admitted": admitted, "admitted_tokens": model.charged, "admitted_over_limit": model.charged / budget}


async def ours_tokens_burst(redis_url: str, budget: int, k: int, prompt: int, answer: int, clients: int,
                            tag: str) -> dict[str, Any]:
    """Ours, real: reserve prompt + max_tokens up front, all or nothing, 4 limiters sharing one Redis."""
    tier = TierSettings.model_validate({"tokens": f"{budget}/minute"})
    quota = QuotaSettings(gateway_replicas=clients)
    observer = DegradedCounter()
    limiters = [QuotaLimiter(QuotaPolicy({"t": tier}, quota), open_store(redis_url, quota, MonotonicClock(), observer),
                             MonotonicClock()) for _ in range(clients)]
    principal = Principal(key_id=f"tokens-{tag}", user="u", tenant="t", tier="t")
    price = Price(prompt_tokens=prompt, max_output_tokens=answer)
    admitted = 0
    charged = 0

    async def request(i: int) -> None:
        nonlocal admitted, charged
        limiter = limiters[i % clients]
        try:
            reservation = await limiter.reserve(principal, MODEL, price)
        except RateLimitError:
            return
        admitted += 1
        await asyncio.sleep(0.05)  # the long answer: every token of max_tokens is generated
        await limiter.settle(reservation, prompt, answer)
        charged += prompt + answer

    try:
        await asyncio.gather(*(request(i) for i in range(k)))
    finally:
        for lim in limiters:
            await lim.close()
            await lim.store.close()
    return {"model": "ours (reserve prompt+max_tokens in Redis, real)", "processes": clients,
            "budget_tokens_per_minute": budget, "concurrent_requests": k, "tokens_per_request": prompt + answer,
            "admitted": admitted, "admitted_tokens": charged, "admitted_over_limit": charged / budget,
            "degraded_switches": observer.went_down}


def part_overshoot(redis_url: str) -> dict[str, Any]:
    limit, budget, k, prompt, answer = 100, 100_000, 64, 1000, 4000
    tag = str(int(time.time() * 1000))
    fixed = [fixed_window_boundary(n, limit, 2 * 4 * limit) for n in (1, 4)]
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        ours_fixed = [runner.run(ours_boundary(redis_url, n, limit, 2 * 4 * limit, f"{tag}-{n}")) for n in (1, 4)]
        posthoc = runner.run(posthoc_burst(budget, k, prompt, answer, 4))
        ours_tokens = runner.run(ours_tokens_burst(redis_url, budget, k, prompt, answer, 4, tag))
    log(f"overshoot: fixed window {[r['admitted'] for r in fixed]}, ours {[r['admitted'] for r in ours_fixed]}, "
        f"post-hoc {posthoc['admitted_tokens']}, ours tokens {ours_tokens['admitted_tokens']}")
    return {
        "request_burst": {"limit_per_minute": limit, "sent_per_burst": 2 * 4 * limit,
                          "bursts": "0.5 s before and 0.5 s after a minute boundary (model); 1 s apart (ours)",
                          "results": fixed + ours_fixed},
        "token_burst": {"budget_tokens_per_minute": budget, "concurrent": k, "prompt_tokens": prompt,
                        "answer_tokens": answer, "results": [posthoc, ours_tokens]},
    }


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


# ---------------------------------------------------------------------------------------------- report


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def tables(result: dict[str, Any]) -> str:
    d = result["decisions"]["summary"]
    lines = [
        "| store | concurrency | decisions/s (median; min–max) | reserve p50 µs | reserve p99 µs | reserve+settle p50 µs | "
        "reserve+settle p99 µs | client CPU µs/decision | EVALSHA/decision | refused | degraded switches | "
        "leases left in Redis |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in CONCURRENCIES:
        for kind in STORES:
            s = d[f"{kind}/c{c}"]
            evalsha = "–" if kind == "memory" else f"{s['evalsha_per_decision']:.2f}"
            lines.append(
                f"| {STORE_LABELS[kind]} | {c} | {s['decisions_per_s']:.0f} ({s['decisions_per_s_min']:.0f}–"
                f"{s['decisions_per_s_max']:.0f}) | {s['reserve_p50_us']:.0f} | {s['reserve_p99_us']:.0f} | "
                f"{s['cycle_p50_us']:.0f} | {s['cycle_p99_us']:.0f} | {s['client_cpu_us_per_decision']:.0f} | "
                f"{evalsha} | {s['refused']} | {s['degraded_switches']} | "
                f"{'–' if kind == 'memory' else s['leaked_leases']} |")
    o = result["overshoot"]
    lines += [
        "",
        f"Request limit {o['request_burst']['limit_per_minute']}/minute; two bursts of "
        f"{o['request_burst']['sent_per_burst']} requests, round-robin over the processes:",
        "",
        "| limiter | processes | sent | admitted | admitted ÷ limit |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in o["request_burst"]["results"]:
        label = ("MODEL: per-process fixed window (slowapi-like), bursts 0.5 s before and after the minute boundary"
                 if r["model"].startswith("fixed") else
                 f"ours: GCRA in one Redis, real, bursts {r['window_s']:.2f} s apart")
        lines.append(f"| {label} | {r['processes']} | {r['sent']} | {r['admitted']} | {r['admitted_over_limit']:.2f} |")
    t = o["token_burst"]
    lines += [
        "",
        f"Token budget {t['budget_tokens_per_minute']}/minute; {t['concurrent']} concurrent requests of "
        f"{t['prompt_tokens']} prompt + {t['answer_tokens']} answer tokens (max_tokens = {t['answer_tokens']}):",
        "",
        "| limiter | processes | admitted requests | tokens admitted | admitted ÷ budget |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in t["results"]:
        label = ("MODEL: post-hoc charging (LiteLLM-like: check before, charge after), perfectly shared counter"
                 if r["model"].startswith("post") else "ours: reserve prompt + max_tokens up front in one Redis, real")
        lines.append(f"| {label} | {r['processes']} | {r['admitted']} | {r['admitted_tokens']} | "
                     f"{r['admitted_over_limit']:.2f} |")
    g = result["gateway"]
    lines += [
        "",
        "| quotas | mode | requests/s (median; min–max) | p50 ms | p99 ms | gateway CPU % | gateway CPU ms/request | "
        "EVALSHA/request | non-2xx | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode in ("full", "stream"):
        for name in GATEWAYS:
            s = g["summary"][f"{name}/{mode}"]
            lines.append(
                f"| {GATEWAY_LABELS[name]} | {mode} | {s['rps']:.0f} ({s['rps_min']:.0f}–{s['rps_max']:.0f}) | "
                f"{s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {s['gateway_cpu_pct']:.0f} | "
                f"{s['gateway_cpu_ms_per_request']:.3f} | {s['evalsha_per_request']:.3f} | "
                f"{s['non2xx']} of {s['requests']} | {s['errors']} |")
    lines += ["", "| mode | quotas on ÷ off (requests/s) | target | met | diagnostic: on with 1 s store timeout ÷ off |",
              "|---|---:|---:|---|---:|"]
    for mode in ("full", "stream"):
        pct_ = g["on_over_off_pct"][mode]
        lines.append(f"| {mode} | {pct_:.1f}% | ≥ {TARGET_PCT:.0f}% | {'yes' if pct_ >= TARGET_PCT else 'no'} | "
                     f"{g['on_t1s_over_off_pct'][mode]:.1f}% |")
    return "\n".join(lines)


def source_state() -> dict[str, Any]:
    """The commit measured, and whether src/sluice/quota had uncommitted changes (it is being worked on)."""
    def git(*argv: str) -> str:
        out = subprocess.run(["git", *argv], cwd=HERE.parent, capture_output=True, text=True)
        return out.stdout.strip()
    return {"commit": git("rev-parse", "HEAD"), "quota_changes": git("status", "--short", "src/sluice/quota")}


# ---------------------------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description="Sluice's quota limiter: decisions/s, overshoot, gateway cost.")
    parser.add_argument("--decision-s", type=float, default=3.0, help="seconds of each timed decisions run (default 3)")
    parser.add_argument("--duration", type=int, default=5, help="seconds of each timed wrk run (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of wrk warm-up before each run (default 1)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--max-tokens", type=int, default=16, help="tokens per answer in the gateway part (default 16)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--keep-logs", type=Path, help="copy the processes' stderr logs into this directory")
    args = parser.parse_args()

    wrk, redis_server = shutil.which("wrk"), shutil.which("redis-server")
    if wrk is None or redis_server is None:
        log("needs wrk and redis-server: apt-get update && apt-get install -y wrk redis-server")
        return 2
    if shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        log("needs taskset (util-linux) and at least 2 CPUs")
        return 2
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sluice-limiter-") as tmp:
        workdir = Path(tmp)
        procs = Processes(workdir)
        try:
            redis_port = free_port()
            redis_proc = procs.start("redis", LOAD_CPU, [
                redis_server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(workdir),
            ])
            wait_port(redis_proc, redis_port)
            redis_url = f"redis://127.0.0.1:{redis_port}/0"
            redis_version = redis.Redis(port=redis_port).info("server")["redis_version"]
            decisions = part_decisions(args, redis_url, redis_port)
            overshoot = part_overshoot(redis_url)
            gateway = part_gateway(args, wrk, workdir, procs, redis_url, redis_port)
        finally:
            procs.stop_all()
            if args.keep_logs:
                args.keep_logs.mkdir(parents=True, exist_ok=True)
                for p in procs.procs:
                    shutil.copy(p.log_path, args.keep_logs / p.log_path.name)
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + " ".join([os.path.relpath(sys.argv[0]), *sys.argv[1:]]),
        "wall_s": round(time.monotonic() - started, 1),
        "machine": {**machine(), "redis": redis_version},
        "source": source_state(),
        "settings": {
            "decision_s": args.decision_s, "duration_s": args.duration, "warmup_s": args.warmup, "rounds": args.rounds,
            "max_tokens": args.max_tokens, "gateway_and_decisions_cpu": GATEWAY_CPU,
            "sim_redis_wrk_cpu": LOAD_CPU, "event_loop": "uvloop",
            "decision_plan": "QuotaLimiter.reserve + settle; 3 buckets (key requests, key tokens, tenant tokens) + "
                             "1 lease (key concurrent); 16 keys over 4 tenants; price 20+256, used 20+100",
        },
        "decisions": decisions,
        "overshoot": overshoot,
        "gateway": gateway,
    }
    result["table"] = tables(result)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(result["table"])
    print()
    ratios = gateway["on_over_off_pct"]
    print(f"target (quotas on >= {TARGET_PCT:.0f}% of quotas off, req/s, c64): full {ratios['full']:.1f}%, "
          f"stream {ratios['stream']:.1f}% -> {'MET' if gateway['target_met'] else 'MISSED'}")
    t1s = gateway["on_t1s_over_off_pct"]
    print(f"diagnostic, quotas on with store_timeout_s 1: full {t1s['full']:.1f}%, stream {t1s['stream']:.1f}%")
    print(f"EVALSHA calls during the gateway part: {gateway['evalsha_calls_during_gateway_part']}; "
          f"'quota store' log lines (degraded/recovered): {gateway['quota_store_log_lines_count']}; "
          f"leases left in Redis after the run: {gateway['leases_left_in_redis_after_run']}")
    print(f"gateway outcomes (access log, status reason: count): {gateway['access_log_outcomes']}")
    print(f"wrote {args.output} in {result['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
