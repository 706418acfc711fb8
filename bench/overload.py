"""Overload: the engine alone, Sluice with a fixed window, Sluice with an adaptive window, and Sluice with engine-side
priority scheduling (vLLM's, then SGLang's with preemption), from 0.5x to 3x the engine's capacity, with three tiers
of callers.

    python bench/overload.py            # defaults: --speed 2 --max-num-seqs 16 --input-len 256 --output-len 64
                                        #           --loads 0.5,1,2,3 --duration 25 --warmup 5 --adaptive gradient

One command starts, on 127.0.0.1 and free ports, and stops by PID at the end (also on error or SIGTERM):
  CPU 0: the engine simulator (``sluice sim --max-num-seqs 16 --speed 2``: continuous batching, decode step
         a + b x batch, prefill per token; every answer exactly --output-len tokens via ``ignore_eos``); FCFS
         scheduling for (a)-(c); for (d) it is stopped and a fresh one started with ``--scheduling-policy priority``,
         for (e) one in the sglang dialect with ``--scheduling-policy priority --priority-preemption``;
         and this process, the load generator (``sluice.bench.run_load``: open loop, Poisson arrivals, streamed
         chat), as in bench/overhead.py;
  CPU 1: the gateway under test alone (``sluice serve``, one per configuration, started and stopped in turn).
All three run under SCHED_FIFO (``--sched fifo``; ``nice`` or ``none`` otherwise) so that other load on the host
does not stretch the simulated engine's steps: the simulator at priority 2, so that it preempts the load generator
on their CPU at once, the others at 1. Diagnostics: ``--endpoint completions`` (no role-only first
chunk), ``--output-len 32-96`` (answers of varied length), ``--dump-requests DIR``, ``--render-only``.

1. Capacity: a closed loop of 2 x max_num_seqs users straight at the simulator; the engine's maximum is the
   generated tokens/s it reports (``vllm:generation_tokens_total``) over the timed part, and its capacity in
   requests/s that divided by --output-len. Checked against the figure the simulator's parameters give.
2. For each configuration, (a) ``direct`` (the load straight at the simulator: no tiers, one FIFO queue),
   (b) ``fixed`` (Sluice, ``window: {kind: fixed, initial: max_num_seqs}``) and (c) ``adaptive`` (Sluice,
   ``window: {kind: gradient|aimd, initial: max_num_seqs, min, max}``) and (d) ``engine-priority`` (the simulator
   with ``--scheduling-policy priority``, Sluice with ``admission: {priority_to_engine: true, protection:
   {reserve_when: always, reserve_top_share: --priority-reserve}, window: {kind: fixed, initial: ceil(max_num_seqs
   x (1 + --priority-headroom))}}``, 20 for 16 with a reserve of 0.2: lower tiers stop at floor(20 x 0.8) = 16, the
   engine's seats, and slots 17-20 are kept for premium at all times, so a premium request reaches the engine even
   when lower tiers hold every seat, and the engine, given each request's priority in its convention (vLLM: lower
   first), runs it first when a seat frees: vLLM never preempts for a seat) and (e) ``engine-preempt`` (the same
   gateway, but with its own --preempt-headroom 0.5 and --preempt-reserve 0.375, window 24 and lower tiers stopping
   at 15, and ``engine: {dialect: sglang}``, so priorities go out higher first, in front of the simulator in the
   sglang dialect with SGLang's priority preemption and, by default, prefill and decode mixed in one step (SGLang's
   ``--enable-mixed-chunk``; --no-preempt-mixed for its default, prefill-only steps): a waiting request more
   important than a running one by more
   than --preempt-threshold takes its seat at once, the preempted one resuming later from its cached prompt; 5 by
   default, so premium (10) preempts standard (0) and batch (-1), and standard does not preempt batch; SGLang's own
   default, 10, would let premium preempt batch only) and (f) ``fixed-preempt`` and (g) ``adaptive-preempt`` ((b)
   and (c) with ``admission: {preemption: {enabled: true, priority_gap: --preempt-threshold}}``, (g)'s window at
   most max_num_seqs (past the engine's seats, premium would wait in the engine's queue), in front of the
   vLLM-dialect simulator, FCFS, prefix caching on as in vLLM V1: when premium waits and the window is full, the
   gateway stops the newest running standard or batch stream, gives premium its place, and resumes the stopped
   stream later from its token ids, its prefill mostly read back from the prefix cache): for each, an unloaded
   run (premium only, 0.1x capacity, --unloaded-duration s) for the top tier's unloaded TTFT, then Poisson arrivals
   at each load x capacity for --duration s,
   of which the first --warmup s are not measured. Tenants, by share of the arrivals: premium 15% (tier
   premium, priority 10), std-a 30% and std-b 30% (tier standard, priority 0: the two equal tenants of Jain's
   index), batch 25% (tier batch, priority -1, sheddable). Quota: none (no limit can interfere).

Per (configuration, load), over requests sent in the measured window: per tier p50/p99 TTFT (of the requests the
system took: answered, or still without a first token when they gave up, counted at the time they waited), goodput
(answered requests with TTFT <= --slo-ttft-s and TPOT <= the TPOT SLO, per second and as a share of those sent),
rejection rate (429/503, by reason), engine throughput (simulator tokens/s over the window) as a share of its
maximum, and Jain's index between std-a and std-b on their goodput (and, beside it, on their output tokens/s).
The gateway's /metrics (window, in flight, queued, saturation, protection mode) are sampled every 0.5 s; the
simulator's preemptions (``vllm:num_preemptions_total``; in the sglang dialect
``sglang:num_retracted_requests_total``, where the simulator counts its priority preemptions too) are counted over
the window. The simulator's metrics are read under vLLM's names whatever its dialect (``sim_metric_aliases``).

Output: markdown tables on stdout, everything in bench/results/overload.json, plots in bench/results/overload/
(overload_ttft.png, overload_goodput.png, overload_window.png, and the library's per-run latency CDF and timeline
for each 3x run); with --docs, the key plots are copied to docs/img/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import Processes, free_port, wait_until_up  # noqa: E402 - the sibling benchmark's process helpers

from sluice.bench import (  # noqa: E402
    Fixed,
    LoadSpec,
    Poisson,
    RequestResult,
    Uniform,
    parse_dist,
    RequestShape,
    Tenant,
    jain_index,
    meets_slo,
    percentile,
    run_load,
    summarize,
)
from sluice.clock import MonotonicClock  # noqa: E402
from sluice.identity import generate_key, hash_key  # noqa: E402
from sluice.sim._metrics import METRIC_NAMES  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "overload.json"
PLOTS = HERE / "results" / "overload"
DOC_IMG = ROOT / "docs" / "img"
MODEL = "sluice-sim"
SIM_CPU, GATEWAY_CPU, LOAD_CPU = "0", "1", "0"
SIM_FIFO_PRIORITY, FIFO_PRIORITY = 2, 1  # the simulator preempts the load generator on their CPU
CONFIGS = ("direct", "fixed", "adaptive", "engine-priority", "engine-preempt", "fixed-preempt", "adaptive-preempt")
# configurations where the gateway preempts (admission.preemption) in front of the vLLM-dialect simulator
GATEWAY_PREEMPT = {"fixed-preempt": "fixed", "adaptive-preempt": "adaptive"}
# the simulator's scheduling policy per configuration (the others: fcfs)
SIM_POLICY = {"engine-priority": "priority", "engine-preempt": "priority"}
# the simulator's dialect per configuration, also the gateway's engine dialect (the others: vllm)
SIM_DIALECT = {"engine-preempt": "sglang"}
# what this script reads of the simulator, named as in its vLLM dialect (counters with their "_total")
SIM_READ_GAUGES, SIM_READ_COUNTERS = ("running", "waiting", "kv_usage"), ("generation_tokens", "preemptions")


def sim_metric_aliases(dialect: str) -> dict[str, str]:
    """The simulator's metric names in ``dialect`` -> its names in the vLLM dialect, which this script reads."""
    theirs, ours = METRIC_NAMES[dialect], METRIC_NAMES["vllm"]
    pairs = [(getattr(theirs, f), getattr(ours, f)) for f in SIM_READ_GAUGES]
    pairs += [(f"{getattr(theirs, f)}_total", f"{getattr(ours, f)}_total") for f in SIM_READ_COUNTERS
              if getattr(theirs, f) is not None]
    return {a: b for a, b in pairs if a != b}

# tier -> settings (no quota limits at all); tenants -> (tier, share of the arrivals)
TIERS: dict[str, dict[str, float]] = {
    "premium": {"priority": 10, "max_queue_s": 5.0},
    "standard": {"priority": 0, "max_queue_s": 0.5},
    "batch": {"priority": -1, "max_queue_s": 2.0},
}
TENANTS: dict[str, tuple[str, float]] = {
    "premium": ("premium", 0.15),
    "std-a": ("standard", 0.30),
    "std-b": ("standard", 0.30),
    "batch": ("batch", 0.25),
}
EQUAL_TENANTS = ("std-a", "std-b")
UNLOADED_LOAD = 0.1
SAMPLE_EVERY_S = 0.5

# ---------------------------------------------------------------------------------------------- metrics


def parse_prometheus(text: str) -> dict[str, float]:
    """name -> value summed over its label sets (enough for the gauges and counters read here)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{.*\})?\s+(\S+)", line)
        if m is None:
            continue
        with_labels = m.group(1) + (m.group(2) or "")
        value = float(m.group(3))
        out[m.group(1)] = out.get(m.group(1), 0.0) + value
        out[with_labels] = value
    return out


async def scrape(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with session.get(url + "/metrics", timeout=aiohttp.ClientTimeout(total=5)) as resp:
        return parse_prometheus(await resp.text())


async def scrape_sim(session: aiohttp.ClientSession, url: str, dialect: str) -> dict[str, float]:
    """The simulator's /metrics, its dialect's names also under vLLM's."""
    metrics = await scrape(session, url)
    for theirs, ours in sim_metric_aliases(dialect).items():
        if theirs in metrics:
            metrics[ours] = metrics[theirs]
    return metrics


def sim_kind(config: str) -> tuple[str, str]:
    """The simulator a configuration runs on: (scheduling policy, dialect)."""
    return SIM_POLICY.get(config, "fcfs"), SIM_DIALECT.get(config, "vllm")


GATEWAY_GAUGES = ("sluice_admission_limit", "sluice_admission_in_flight", "sluice_admission_queued",
                  "sluice_engine_saturation", "sluice_protection_engaged")
SIM_GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")


class Sampler:
    """Reads the simulator's token counter at the window's edges, and both /metrics every SAMPLE_EVERY_S."""

    def __init__(self, sim_url: str, gateway_url: str | None, warmup_s: float, duration_s: float,
                 sim_dialect: str = "vllm") -> None:
        self.sim_url, self.gateway_url, self.sim_dialect = sim_url, gateway_url, sim_dialect
        self.warmup_s, self.duration_s = warmup_s, duration_s
        self.edges: dict[str, tuple[float, float]] = {}  # "begin"/"end" -> (t_s, generation tokens)
        self.edge_preemptions: dict[str, float] = {}  # "begin"/"end" -> the simulator's preemptions so far
        self.series: list[dict[str, float]] = []
        self.end_gateway: dict[str, float] = {}

    async def run(self, t0: float, *, until_cancelled: bool) -> None:
        async with aiohttp.ClientSession() as session:
            next_edge = [("begin", self.warmup_s), ("end", self.duration_s)]
            while next_edge or until_cancelled:
                now = time.monotonic() - t0
                if next_edge and now >= next_edge[0][1]:
                    try:
                        sim = await scrape_sim(session, self.sim_url, self.sim_dialect)
                    except (aiohttp.ClientError, asyncio.TimeoutError):
                        continue  # try again at once
                    name, _ = next_edge.pop(0)
                    self.edges[name] = (time.monotonic() - t0, sim["vllm:generation_tokens_total"])
                    self.edge_preemptions[name] = sim.get("vllm:num_preemptions_total", math.nan)
                    continue
                row = {"t_s": round(now, 2)}
                try:
                    sim = await scrape_sim(session, self.sim_url, self.sim_dialect)
                    row.update({k: sim.get(k, math.nan) for k in SIM_GAUGES})
                    if self.gateway_url:
                        gw = await scrape(session, self.gateway_url)
                        row.update({k: gw.get(k, math.nan) for k in GATEWAY_GAUGES})
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    row["error"] = f"{type(exc).__name__}"
                self.series.append(row)
                now = time.monotonic() - t0
                wait = SAMPLE_EVERY_S if not next_edge else min(SAMPLE_EVERY_S, next_edge[0][1] - now)
                await asyncio.sleep(max(0.0, wait))

    async def final_gateway(self) -> None:
        if self.gateway_url:
            async with aiohttp.ClientSession() as session:
                self.end_gateway = await scrape(session, self.gateway_url)

    def engine_tokens_per_s(self) -> float:
        (t_begin, g_begin), (t_end, g_end) = self.edges["begin"], self.edges["end"]
        return (g_end - g_begin) / (t_end - t_begin)


async def wait_drained(sim_url: str, sim_dialect: str, timeout_s: float = 90.0) -> float:
    """Wait until the simulator has nothing running or waiting; return how long that took."""
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        while time.monotonic() - started < timeout_s:
            m = await scrape_sim(session, sim_url, sim_dialect)
            if m.get("vllm:num_requests_running", 0) == 0 and m.get("vllm:num_requests_waiting", 0) == 0:
                return time.monotonic() - started
            await asyncio.sleep(0.2)
    raise RuntimeError(f"the simulator did not drain within {timeout_s} s")


# ---------------------------------------------------------------------------------------------- load


def make_tenants(keys: dict[str, str] | None, args: argparse.Namespace, only: Sequence[str] | None = None
                 ) -> tuple[Tenant, ...]:
    names = only or tuple(TENANTS)
    return tuple(Tenant(name, Fixed(args.input_len), args.output_dist,
                        api_key=keys[name] if keys else None, weight=TENANTS[name][1]) for name in names)


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No garbage collection in the load generator during a run (bounded: one run's results, a few MB).

    A collection here (3-5 ms young, 50-100 ms full once the results pile up) delays the arrivals it sends and the
    first bytes it stamps. (When the load generator shared the gateway's CPU under SCHED_FIFO at one priority,
    it stalled the gateway too.)
    """
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


async def run_one(base_url: str, sim_url: str, gateway_url: str | None, tenants: tuple[Tenant, ...], rate: float,
                  duration_s: float, warmup_s: float, seed: int, timeout_s: float, endpoint: str,
                  sim_dialect: str) -> tuple[list[RequestResult], Sampler, float]:
    shape = RequestShape(base_url, MODEL, endpoint=endpoint, stream=True, ignore_eos=True, timeout_s=timeout_s)
    sampler = Sampler(sim_url, gateway_url, warmup_s, duration_s, sim_dialect)
    t0 = time.monotonic()
    sampling = asyncio.create_task(sampler.run(t0, until_cancelled=True))
    with collector_paused():
        record = await run_load(shape, LoadSpec(Poisson(rate), duration_s=duration_s), tenants, seed=seed,
                                clock=MonotonicClock())
    while "end" not in sampler.edges and not sampling.done():  # the last answer may come before the window ends
        await asyncio.sleep(0.05)
    if sampling.done() and sampling.exception() is not None:
        raise RuntimeError("the metrics sampler failed") from sampling.exception()
    sampling.cancel()
    await asyncio.gather(sampling, return_exceptions=True)
    if "end" not in sampler.edges:
        raise RuntimeError("the sampler missed the end of the window")
    await sampler.final_gateway()
    drained_s = await wait_drained(sim_url, sim_dialect)
    return record.results, sampler, drained_s


async def measure_capacity(sim_url: str, sim_dialect: str, args: argparse.Namespace) -> dict[str, Any]:
    tenants = make_tenants(None, args, only=("premium",))
    shape = RequestShape(sim_url, MODEL, endpoint=args.endpoint, stream=True, ignore_eos=True, timeout_s=60)
    sampler = Sampler(sim_url, None, args.capacity_warmup, args.capacity_warmup + args.capacity_duration,
                      sim_dialect)
    t0 = time.monotonic()
    sampling = asyncio.create_task(sampler.run(t0, until_cancelled=False))
    users = 2 * args.max_num_seqs
    record = await run_load(shape, LoadSpec(concurrency=users, duration_s=args.capacity_warmup + args.capacity_duration),
                            tenants, seed=args.seed, clock=MonotonicClock())
    await sampling
    await wait_drained(sim_url, sim_dialect)
    tokens_per_s = sampler.engine_tokens_per_s()
    ok = [r for r in record.results if r.ok and r.start_s >= args.capacity_warmup]
    tpot = sorted(r.tpot_s for r in ok if r.tpot_s is not None)
    return {
        "closed_loop_users": users,
        "tokens_per_s": tokens_per_s,
        "requests_per_s": tokens_per_s / args.output_mean,
        "model_requests_per_s": model_capacity(args),
        "tpot_p50_ms": 1e3 * percentile(tpot, 50),
        "ttft_p50_ms": 1e3 * percentile([r.ttft_s for r in ok if r.ttft_s is not None], 50),
        "requests_measured": len(ok),
        "failed": sum(not r.ok for r in record.results),
    }


def model_capacity(args: argparse.Namespace) -> float:
    """Requests/s the simulator's parameters allow with every seat busy (an upper bound: the simulator's own CPU
    time per step comes on top): each request is one prefill (its first token) and output_len - 1 decode steps
    shared with max_num_seqs - 1 others."""
    step_s = (args.decode_base_s + args.decode_per_seq_s * args.max_num_seqs) / args.speed
    prefill_s = args.prefill_s_per_token * args.input_len / args.speed
    per_request_s = (args.output_mean - 1) * step_s / args.max_num_seqs + prefill_s
    return 1 / per_request_s


# ---------------------------------------------------------------------------------------------- analysis


def ttft_sample(r: RequestResult) -> tuple[float, bool] | None:
    """A request the system took (not refused): its TTFT, or, if it gave up before its first token, the time it
    waited, flagged as censored (the real TTFT is longer). Refusals (429/503) have none."""
    if r.rejected:
        return None
    if r.ttft_s is not None:
        return r.ttft_s, False
    if r.e2e_s is not None and r.reason in ("timeout", "connection_error", "incomplete_stream"):
        return r.e2e_s, True
    return None


def figures(results: Sequence[RequestResult], window_s: float, slo_ttft_s: float, slo_tpot_s: float
            ) -> dict[str, Any]:
    sent = len(results)
    samples = [s for r in results if (s := ttft_sample(r)) is not None]
    ttfts = [v for v, _ in samples]
    censored = sum(c for _, c in samples)
    ok = [r for r in results if r.ok]
    good = [r for r in ok if meets_slo(r.ttft_s, r.tpot_s, slo_ttft_s=slo_ttft_s, slo_tpot_s=slo_tpot_s)]
    rejected = [r for r in results if r.rejected]
    failed = [r for r in results if not r.ok and not r.rejected]
    tpots = [r.tpot_s for r in ok if r.tpot_s is not None]

    def pct(values: list[float], p: float) -> float | None:
        return 1e3 * percentile(values, p) if values else None

    return {
        "sent": sent,
        "answered": len(ok),
        "ttft_p50_ms": pct(ttfts, 50),
        "ttft_p99_ms": pct(ttfts, 99),
        "ttft_samples": len(ttfts),
        "ttft_censored": censored,  # gave up before a first token: counted at the time they waited
        "tpot_p50_ms": pct(tpots, 50),
        "tpot_p99_ms": pct(tpots, 99),
        "goodput": len(good),
        "goodput_per_s": len(good) / window_s,
        "goodput_share": len(good) / sent if sent else 0.0,
        "rejected": len(rejected),
        "rejection_rate": len(rejected) / sent if sent else 0.0,
        "rejections_by_reason": dict(sorted(Counter(r.reason or "?" for r in rejected).items())),
        "failed": len(failed),
        "failures_by_reason": dict(sorted(Counter(r.reason or "?" for r in failed).items())),
        "output_tokens_per_s": sum(r.output_tokens for r in ok) / window_s,
    }


def measured(results: Sequence[RequestResult], warmup_s: float, duration_s: float) -> list[RequestResult]:
    """The requests sent in the measured window, their times counted from its start (as a run of its own)."""
    return [dataclasses.replace(r, start_s=r.start_s - warmup_s) for r in results
            if warmup_s <= r.start_s < duration_s]


def analyse(results: list[RequestResult], sampler: Sampler, tenants: tuple[Tenant, ...], *, warmup_s: float,
            duration_s: float, slo_ttft_s: float, slo_tpot_s: float, max_tokens_per_s: float) -> dict[str, Any]:
    window = measured(results, warmup_s, duration_s)
    window_s = duration_s - warmup_s
    tiers = {tier: figures([r for r in window if TENANTS[r.tenant][0] == tier], window_s, slo_ttft_s, slo_tpot_s)
             for tier in TIERS if any(TENANTS[t.name][0] == tier for t in tenants)}
    per_tenant = {t.name: figures([r for r in window if r.tenant == t.name], window_s, slo_ttft_s, slo_tpot_s)
                  for t in tenants}
    engine_tps = sampler.engine_tokens_per_s()
    out: dict[str, Any] = {
        "window_s": window_s,
        "all": figures(window, window_s, slo_ttft_s, slo_tpot_s),
        "tiers": tiers,
        "tenants": per_tenant,
        "engine_tokens_per_s": engine_tps,
        "engine_share_of_max": engine_tps / max_tokens_per_s,
        "engine_preemptions": sampler.edge_preemptions["end"] - sampler.edge_preemptions["begin"],
        # the library's own summary of the same window (per tenant, its fairness over all four tenants by weight)
        "sluice_bench_summary": _compact(summarize(window, duration_s=window_s, tenants=tenants,
                                                   slo_ttft_s=slo_ttft_s, slo_tpot_s=slo_tpot_s)),
    }
    if all(n in per_tenant for n in EQUAL_TENANTS):
        out["jain_goodput"] = jain_index(per_tenant[n]["goodput_per_s"] for n in EQUAL_TENANTS)
        out["jain_output_tokens"] = jain_index(per_tenant[n]["output_tokens_per_s"] for n in EQUAL_TENANTS)
    return out


def _compact(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k != "timeline"}


def gateway_split(access_log: Path, offset: int, results: Sequence[RequestResult], warmup_s: float,
                  duration_s: float) -> dict[str, Any]:
    """Per tier, from the gateway's access log (the lines this run wrote): how long the requests of the window
    waited in the admission queue, and how long the engine then took to the first token (gateway TTFT - wait)."""
    by_index = {r.index: r for r in results if warmup_s <= r.start_s < duration_s}
    waits: dict[str, list[float]] = {t: [] for t in TIERS}
    engine: dict[str, list[float]] = {t: [] for t in TIERS}
    with open(access_log, "rb") as f:
        f.seek(offset)
        for line in f:
            if not line.startswith(b'{"request_id":"bench-'):
                continue
            doc = json.loads(line)
            r = by_index.get(int(doc["request_id"].removeprefix("bench-")))
            if r is None or doc.get("status") != 200 or doc.get("queue_wait_s") is None:
                continue
            tier = TENANTS[r.tenant][0]
            waits[tier].append(doc["queue_wait_s"])
            if doc.get("ttft_s") is not None:
                engine[tier].append(doc["ttft_s"] - doc["queue_wait_s"])

    def pcts(xs: list[float]) -> dict[str, float | None]:
        return {f"p{q}_ms": (1e3 * percentile(xs, q) if xs else None) for q in (50, 99)}

    return {t: {"admitted": len(waits[t]), "queue_wait": pcts(waits[t]), "engine_ttft": pcts(engine[t])}
            for t in TIERS}


def series_summary(series: list[dict[str, float]], warmup_s: float, duration_s: float) -> dict[str, Any]:
    """Means over the measured window of the sampled gauges; the share of samples with protection engaged and
    with the engine's metrics stale (saturation inf)."""
    rows = [r for r in series if warmup_s <= r["t_s"] < duration_s and "error" not in r]

    def mean(key: str) -> float | None:
        xs = [r[key] for r in rows if key in r and not math.isnan(r[key]) and not math.isinf(r[key])]
        return sum(xs) / len(xs) if xs else None

    out: dict[str, Any] = {"samples": len(rows)}
    for key, name in (("sluice_admission_limit", "window"), ("sluice_admission_in_flight", "in_flight"),
                      ("sluice_admission_queued", "queued"), ("vllm:num_requests_running", "engine_running"),
                      ("vllm:num_requests_waiting", "engine_waiting")):
        out[f"mean_{name}"] = mean(key)
    if rows and "sluice_admission_limit" in rows[0]:
        out["max_window"] = max(r.get("sluice_admission_limit", 0) for r in rows)
        out["protection_share"] = sum(r.get("sluice_protection_engaged", 0) == 1 for r in rows) / len(rows)
        out["stale_share"] = sum(math.isinf(r.get("sluice_engine_saturation", 0)) for r in rows) / len(rows)
    return out


def gateway_totals(metrics: dict[str, float]) -> dict[str, Any]:
    """Counters worth keeping from the gateway's /metrics at the end of a run."""
    keep = ("sluice_rejections_total", "sluice_protection_transitions_total", "sluice_admission_wait_seconds_count",
            "sluice_admission_wait_seconds_sum")
    return {k: v for k, v in metrics.items() if k.split("{")[0] in keep}


# ---------------------------------------------------------------------------------------------- gateway


def priority_window(args: argparse.Namespace, kind: str = "engine-priority") -> int:
    """(d)'s fixed window: the engine's seats and --priority-headroom more (20 for 16 at 0.25); (e)'s the same
    with --preempt-headroom."""
    headroom = args.preempt_headroom if kind == "engine-preempt" else args.priority_headroom
    return math.ceil(args.max_num_seqs * (1 + headroom) - 1e-9)


def priority_reserve(args: argparse.Namespace, kind: str) -> dict[str, Any]:
    """(d) and (e)'s reserve for the top band: lower bands stop at floor(window x (1 - share))."""
    share = args.preempt_reserve if kind == "engine-preempt" else args.priority_reserve
    window = priority_window(args, kind)
    return {"window": window, "reserve_when": "always", "reserve_top_share": share,
            "lower_tiers_stop_at": math.floor(window * (1 - share))}


def gateway_config(kind: str, args: argparse.Namespace, port: int, sim_url: str, keys: dict[str, str],
                   access_log: Path) -> str:
    n = args.max_num_seqs
    extra = ""
    window_max = args.window_max
    if kind in GATEWAY_PREEMPT:
        extra = f"preemption: {{enabled: true, priority_gap: {args.preempt_threshold}}}, "
        kind = GATEWAY_PREEMPT[kind]
        window_max = n  # a window past the engine's seats would send premium to wait in the engine's queue
    if kind == "fixed":
        window = f"{{kind: fixed, initial: {n}}}"
    elif kind in ("engine-priority", "engine-preempt"):
        window = f"{{kind: fixed, initial: {priority_window(args, kind)}}}"
        # the top band's share of the window kept at all times: lower bands stop at floor(window x (1 - share))
        extra = (f"priority_to_engine: true, protection: {{reserve_when: always, "
                 f"reserve_top_share: {priority_reserve(args, kind)['reserve_top_share']}}}, ")
    elif args.adaptive == "aimd":
        window = (f"{{kind: aimd, initial: {n}, min: {args.window_min}, max: {window_max}, "
                  f"latency_threshold_s: {args.aimd_threshold_s}}}")
    else:
        window = f"{{kind: gradient, initial: {n}, min: {args.window_min}, max: {window_max}}}"
    tiers = "\n".join(f"  {name}: {{priority: {int(t['priority'])}, max_queue_s: {t['max_queue_s']}}}"
                      for name, t in TIERS.items())
    key_lines = "\n".join(
        f"  - {{id: {name}, hash: '{hash_key(keys[name])}', tenant: {name}, tier: {TENANTS[name][0]}}}"
        for name in TENANTS)
    return (
        f"server: {{host: 127.0.0.1, port: {port}, access_log_path: '{access_log}'}}\n"
        f"auth: {{mode: api_key}}\n"
        f"models:\n"
        f"  - name: {MODEL}\n"
        f"    engine: {{dialect: {sim_kind(kind)[1]}, urls: ['{sim_url}']}}\n"
        f"    admission: {{{extra}window: {window}}}\n"
        f"tiers:\n{tiers}\n"
        f"keys:\n{key_lines}\n"
    )


# ---------------------------------------------------------------------------------------------- report


def fmt(v: float | None, digits: int = 0) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def markdown(result: dict[str, Any]) -> str:
    runs, cap = result["runs"], result["capacity"]
    lines = [
        f"Engine maximum {cap['max_tokens_per_s']:.0f} tokens/s = {cap['max_requests_per_s']:.2f} requests/s (closed "
        f"loop of {cap['closed_loop_users']} users: {cap['before']['tokens_per_s']:.0f} tokens/s before the runs, "
        f"{cap['after']['tokens_per_s']:.0f} after; the simulator's parameters predict "
        f"{cap['model_requests_per_s']:.2f} requests/s). Offered loads are multiples of "
        f"{cap['before']['requests_per_s']:.2f} requests/s. Goodput SLOs: TTFT ≤ {1e3 * result['slo']['ttft_s']:.0f} ms, "
        f"TPOT ≤ {1e3 * result['slo']['tpot_s']:.1f} ms.",
        "",
        "| config | load | offered req/s | engine tokens/s (% of max) | goodput req/s (% of sent) | rejected | "
        "premium p99 TTFT ms | Jain std-a/std-b (goodput; tokens) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for config in result["configs"]:
        for run in runs[config]:
            a = run["analysis"]
            prem = a["tiers"]["premium"]
            lines.append(
                f"| {config} | {run['load']:g}x | {run['rate_per_s']:.1f} | "
                f"{a['engine_tokens_per_s']:.0f} ({100 * a['engine_share_of_max']:.1f}%) | "
                f"{a['all']['goodput_per_s']:.1f} ({100 * a['all']['goodput_share']:.0f}%) | "
                f"{100 * a['all']['rejection_rate']:.0f}% | {fmt(prem['ttft_p99_ms'])} | "
                f"{jain_cell(a)} |")
    lines += [
        "",
        "| config | load | tier | sent | TTFT p50 ms | TTFT p99 ms | goodput req/s | goodput % of sent | rejected % "
        "(reasons) | failed (reasons) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for config in result["configs"]:
        for run in runs[config]:
            for tier, f in run["analysis"]["tiers"].items():
                reasons = ", ".join(f"{k} {v}" for k, v in f["rejections_by_reason"].items())
                failures = ", ".join(f"{k} {v}" for k, v in f["failures_by_reason"].items())
                p99 = fmt(f["ttft_p99_ms"])
                if f["ttft_censored"]:
                    p99 = f"≥ {p99}" if f["ttft_censored"] / max(1, f["ttft_samples"]) > 0.01 else p99
                lines.append(
                    f"| {config} | {run['load']:g}x | {tier} | {f['sent']} | {fmt(f['ttft_p50_ms'])} | {p99} | "
                    f"{f['goodput_per_s']:.2f} | {100 * f['goodput_share']:.0f}% | "
                    f"{100 * f['rejection_rate']:.0f}%{f' ({reasons})' if reasons else ''} | "
                    f"{f['failed']}{f' ({failures})' if failures else ''} |")
    lines += ["", "| config | load | mean window (max) | mean in flight | mean queued at gateway | engine running "
              "(mean) | engine waiting (mean) | protection engaged | engine metrics stale | sim CPU % | gateway CPU % |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for config in result["configs"]:
        for run in runs[config]:
            g = run["analysis"]["gauges"]
            prot = "–" if "protection_share" not in g else f"{100 * g['protection_share']:.0f}% of samples"
            stale = "–" if "stale_share" not in g else f"{100 * g['stale_share']:.0f}%"
            window = "–" if g.get("mean_window") is None else f"{g['mean_window']:.1f} ({g['max_window']:.0f})"
            cpu = run.get("cpu_pct", {})
            lines.append(
                f"| {config} | {run['load']:g}x | {window} | {fmt(g.get('mean_in_flight'), 1)} | "
                f"{fmt(g.get('mean_queued'), 1)} | {fmt(g.get('mean_engine_running'), 1)} | "
                f"{fmt(g.get('mean_engine_waiting'), 1)} | {prot} | {stale} | {fmt(cpu.get('sim'))} | "
                f"{fmt(cpu.get('gateway-' + config))} |")
    lines += ["", "| config | load | tier | admitted | gateway queue wait p50 / p99 ms | engine TTFT (after dispatch) "
              "p50 / p99 ms |", "|---|---:|---|---:|---:|---:|"]
    for config in result["configs"]:
        for run in runs[config]:
            for tier, d in run["analysis"].get("gateway_split", {}).items():
                lines.append(
                    f"| {config} | {run['load']:g}x | {tier} | {d['admitted']} | {fmt(d['queue_wait']['p50_ms'])} / "
                    f"{fmt(d['queue_wait']['p99_ms'])} | {fmt(d['engine_ttft']['p50_ms'])} / "
                    f"{fmt(d['engine_ttft']['p99_ms'])} |")
    lines += ["", "| config | premium unloaded p99 TTFT ms | premium p99 TTFT at top load, ms | ratio (target ≤ 2) | "
              "engine % of max at top load (target ≥ 95%) | Jain at top load (target ≥ 0.95) |",
              "|---|---:|---:|---:|---:|---:|"]
    for config, v in result["verdict"].items():
        lines.append(
            f"| {config} | {v['premium_unloaded_p99_ms']:.0f} | {v['premium_p99_ms']:.0f} | "
            f"{v['premium_ratio']:.2f} ({'met' if v['premium_met'] else 'missed'}) | "
            f"{100 * v['engine_share']:.1f}% ({'met' if v['engine_met'] else 'missed'}) | "
            f"{v['jain']:.3f}{' (both 0)' if v['jain_both_zero'] else ''} ({'met' if v['jain_met'] else 'missed'}) |")
    return "\n".join(lines)


def jain_cell(a: dict[str, Any]) -> str:
    zero = all(a["tenants"][n]["goodput_per_s"] == 0 for n in EQUAL_TENANTS)
    return f"{a['jain_goodput']:.3f}{' (both 0)' if zero else ''}; {a['jain_output_tokens']:.3f}"


def verdicts(result: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for config in result["configs"]:
        top = max(result["runs"][config], key=lambda r: r["load"])
        a = top["analysis"]
        unloaded = result["unloaded"][config]["analysis"]["tiers"]["premium"]["ttft_p99_ms"]
        p99 = a["tiers"]["premium"]["ttft_p99_ms"]
        ratio = p99 / unloaded if p99 is not None and unloaded else math.inf
        out[config] = {
            "load": top["load"],
            "premium_unloaded_p99_ms": unloaded, "premium_p99_ms": p99, "premium_ratio": ratio,
            "premium_met": ratio <= 2.0,
            "engine_share": a["engine_share_of_max"], "engine_met": a["engine_share_of_max"] >= 0.95,
            "jain": a["jain_goodput"],
            "jain_both_zero": all(a["tenants"][n]["goodput_per_s"] == 0 for n in EQUAL_TENANTS),
            "jain_met": a["jain_goodput"] >= 0.95 and not all(a["tenants"][n]["goodput_per_s"] == 0
                                                              for n in EQUAL_TENANTS),
        }
    return out


def plot(result: dict[str, Any], out_dir: Path) -> list[Path]:
    """TTFT p99 per tier vs load; goodput, engine share and rejections vs load; the adaptive window over time."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    configs, runs = result["configs"], result["runs"]
    styles = {"direct": ("tab:red", "o"), "fixed": ("tab:blue", "s"), "adaptive": ("tab:green", "^"),
              "engine-priority": ("tab:purple", "D"), "engine-preempt": ("tab:orange", "P"),
              "fixed-preempt": ("tab:cyan", "X"), "adaptive-preempt": ("tab:olive", "v")}
    paths = []

    fig, axes = plt.subplots(1, len(TIERS), figsize=(14, 4.5), sharey=True)
    for ax, tier in zip(axes, TIERS, strict=True):
        for config in configs:
            xs = [r["load"] for r in runs[config]]
            ys = [r["analysis"]["tiers"][tier]["ttft_p99_ms"] or math.nan for r in runs[config]]
            color, marker = styles[config]
            ax.plot(xs, ys, marker=marker, color=color, label=config)
            if tier == "premium":
                base = result["unloaded"][config]["analysis"]["tiers"]["premium"]["ttft_p99_ms"]
                ax.axhline(2 * base, color=color, ls=":", lw=1, label=f"2x unloaded ({config})")
        ax.axhline(1e3 * result["slo"]["ttft_s"], color="grey", ls="--", lw=1, label="TTFT SLO")
        ax.set_yscale("log")
        ax.set_title(f"{tier}: p99 TTFT")
        ax.set_xlabel("offered load (x engine capacity)")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("ms (log)")
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    paths.append(out_dir / "overload_ttft.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for config in configs:
        xs = [r["load"] for r in runs[config]]
        color, marker = styles[config]
        axes[0].plot(xs, [r["analysis"]["all"]["goodput_per_s"] for r in runs[config]], marker=marker, color=color,
                     label=config)
        axes[1].plot(xs, [100 * r["analysis"]["engine_share_of_max"] for r in runs[config]], marker=marker,
                     color=color, label=config)
        axes[2].plot(xs, [100 * r["analysis"]["all"]["rejection_rate"] for r in runs[config]], marker=marker,
                     color=color, label=config)
    axes[0].axhline(result["capacity"]["max_requests_per_s"], color="grey", ls="--", lw=1, label="engine maximum")
    axes[1].axhline(95, color="grey", ls="--", lw=1, label="target 95%")
    for ax, title, ylabel in zip(axes, ("goodput (all tiers)", "engine throughput", "rejected (429/503)"),
                                 ("requests/s meeting TTFT and TPOT SLOs", "% of the engine's maximum tokens/s",
                                  "% of requests sent"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("offered load (x engine capacity)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    paths.append(out_dir / "overload_goodput.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    gw_configs = [c for c in configs if c != "direct"]
    if gw_configs:
        fig, axes = plt.subplots(len(gw_configs), 1, figsize=(12, 3.5 * len(gw_configs)), squeeze=False)
        for ax, config in zip(axes[:, 0], gw_configs, strict=True):
            top = max(runs[config], key=lambda r: r["load"])
            s = top["series"]
            t = [row["t_s"] for row in s]
            for key, label in (("sluice_admission_limit", "window"), ("sluice_admission_in_flight", "in flight"),
                               ("sluice_admission_queued", "queued at gateway"),
                               ("vllm:num_requests_running", "engine running"),
                               ("vllm:num_requests_waiting", "engine waiting")):
                ax.plot(t, [row.get(key, math.nan) for row in s], label=label, drawstyle="steps-post")
            prot = [row.get("sluice_protection_engaged", 0) for row in s]
            ax.fill_between(t, 0, [p * max(1.0, max((row.get("sluice_admission_limit", 0) for row in s),
                                                    default=1)) for p in prot],
                            step="post", color="tab:red", alpha=0.12, label="protection engaged")
            ax.set_title(f"{config} at {top['load']:g}x: gateway window and engine queue over time")
            ax.set_xlabel("seconds from the start of the run")
            ax.set_ylabel("requests")
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        paths.append(out_dir / "overload_window.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths


# ---------------------------------------------------------------------------------------------- main


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "platform": platform.platform()}


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
        dirty = subprocess.run(["git", "status", "--porcelain", "src"], capture_output=True, text=True,
                               cwd=ROOT).stdout
        return sha.strip() + (" (src/ has uncommitted changes)" if dirty.strip() else "")
    except OSError:
        return "?"


def main() -> int:
    p = argparse.ArgumentParser(description="Sluice under overload: direct vs fixed window vs adaptive window vs engine "
                                            "priority (vLLM's, SGLang's with preemption).")
    p.add_argument("--loads", default="0.5,1,2,3", help="offered loads, in multiples of the engine's capacity")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"which of {', '.join(CONFIGS)}")
    p.add_argument("--duration", type=float, default=25.0, help="seconds of arrivals per run (default 25)")
    p.add_argument("--warmup", type=float, default=5.0, help="first seconds of each run not measured (default 5)")
    p.add_argument("--unloaded-duration", type=float, default=120.0,
                   help="seconds of the unloaded run (default 120: ~360 premium requests; with 180 its p99 still "
                        "moved 20-26 ms run to run)")
    p.add_argument("--capacity-duration", type=float, default=12.0)
    p.add_argument("--capacity-warmup", type=float, default=3.0)
    p.add_argument("--timeout", type=float, default=30.0, help="client timeout per request, seconds (default 30)")
    p.add_argument("--speed", type=float, default=2.0)
    p.add_argument("--max-num-seqs", type=int, default=16)
    p.add_argument("--input-len", type=int, default=256)
    p.add_argument("--output-len", default="64",
                   help="answer length in tokens: a number, or LOW-HIGH for uniform (sluice bench's length spec)")
    p.add_argument("--endpoint", choices=("chat", "completions"), default="chat")
    p.add_argument("--adaptive", choices=("gradient", "aimd"), default="gradient")
    p.add_argument("--priority-headroom", type=float, default=0.25,
                   help="engine-priority: the fixed window is max_num_seqs x (1 + this), rounded up (default 0.25)")
    p.add_argument("--preempt-mixed", action=argparse.BooleanOptionalAction, default=True,
                   help="engine-preempt: the simulator mixes prefill and decode in one step, as SGLang does with "
                        "--enable-mixed-chunk (default); --no-preempt-mixed: SGLang's default, prefill-only steps")
    p.add_argument("--preempt-threshold", type=int, default=5,
                   help="engine-preempt: the simulator's --priority-preemption-threshold (SGLang's "
                        "--priority-scheduling-preemption-threshold; default 5: premium preempts standard and batch, "
                        "standard does not preempt batch; SGLang's default 10: premium preempts batch only); "
                        "fixed-preempt, adaptive-preempt: the gateway's admission.preemption.priority_gap, the same")
    p.add_argument("--priority-reserve", type=float, default=0.2,
                   help="engine-priority: protection.reserve_top_share with reserve_when: always, the window's share "
                        "kept for premium at all times (default 0.2: lower tiers stop at 16 of 20)")
    p.add_argument("--preempt-headroom", type=float, default=0.5,
                   help="engine-preempt: as --priority-headroom, for (e) (default 0.5: window 24 for 16 seats)")
    p.add_argument("--preempt-reserve", type=float, default=0.375,
                   help="engine-preempt: as --priority-reserve, for (e) (default 0.375: lower tiers stop at 15 of 24; "
                        "premium's 9 places reach the engine, which preempts lower tiers for them)")
    p.add_argument("--window-min", type=int, default=4)
    p.add_argument("--window-max", type=int, default=64)
    p.add_argument("--aimd-threshold-s", type=float, default=0.25, help="aimd only: a slower first token is a drop")
    p.add_argument("--slo-ttft-s", type=float, default=1.0, help="goodput's TTFT target (default 1 s)")
    p.add_argument("--slo-tpot-ms", type=float, default=None,
                   help="goodput's TPOT target (default: 2x the engine's TPOT p50 at capacity, measured first)")
    p.add_argument("--sched", choices=("fifo", "nice", "none"), default="fifo",
                   help="scheduling of the simulator, the gateway and the load generator: fifo (SCHED_FIFO, "
                        "default: the simulator at priority 2, the others at 1), nice (-10) or none; so that the "
                        "host's other load does not stretch the simulated engine's step times or delay the gateway")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, default=RESULTS)
    p.add_argument("--plots-dir", type=Path, default=PLOTS)
    p.add_argument("--docs", action="store_true", help="copy the key plots into docs/img/")
    p.add_argument("--keep-logs", type=Path, help="copy the processes' stderr logs and access logs here")
    p.add_argument("--dump-requests", type=Path, help="write every request's result here, one JSONL file per run")
    p.add_argument("--render-only", action="store_true",
                   help="run nothing: rebuild the tables and plots of --output from the results it holds")
    args = p.parse_args()
    # the simulator's step-time defaults (SimSettings), for the capacity the parameters predict
    args.prefill_s_per_token, args.decode_base_s, args.decode_per_seq_s = 0.00005, 0.008, 0.0002
    args.output_dist = parse_dist(args.output_len, "output")
    if not isinstance(args.output_dist, (Fixed, Uniform)):
        p.error("--output-len: a number or LOW-HIGH")
    args.output_range = ((args.output_dist.tokens,) * 2 if isinstance(args.output_dist, Fixed)
                         else (args.output_dist.low, args.output_dist.high))
    args.output_mean = sum(args.output_range) / 2  # Fixed or Uniform
    if args.render_only:
        result = json.loads(args.output.read_text())
        result["verdict"] = verdicts(result)
        result["table"] = markdown(result)
        finish(result, args)
        return 0
    loads = [float(x) for x in args.loads.split(",")]
    configs = [c for c in args.configs.split(",") if c]
    if unknown := [c for c in configs if c not in CONFIGS]:
        p.error(f"unknown configs: {unknown}")
    if shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        print("needs taskset (util-linux) and at least 2 CPUs", file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
    os.sched_setaffinity(0, {int(LOAD_CPU)})
    try:
        if args.sched == "fifo":
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(FIFO_PRIORITY))
        elif args.sched == "nice":
            os.setpriority(os.PRIO_PROCESS, 0, -10)
    except PermissionError:
        print(f"cannot set --sched {args.sched} (needs CAP_SYS_NICE): running with --sched none", file=sys.stderr)
        args.sched = "none"

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sluice-overload-") as tmp:
        workdir = Path(tmp)
        procs = Processes(workdir)
        try:
            result = asyncio.run(run(args, loads, configs, workdir, procs))
        finally:
            procs.stop_all()
            if args.keep_logs:
                args.keep_logs.mkdir(parents=True, exist_ok=True)
                for f in workdir.glob("*.log"):
                    shutil.copy(f, args.keep_logs / f.name)
    result["wall_s"] = round(time.monotonic() - started, 1)
    finish(result, args)
    return 0


def finish(result: dict[str, Any], args: argparse.Namespace) -> None:
    """Plots (and their copies in docs/img with --docs), the results file, the tables and verdicts on stdout."""
    args.plots_dir.mkdir(parents=True, exist_ok=True)
    try:
        result["plots"] = [str(p_) for p_ in plot(result, args.plots_dir)]
        if args.docs:
            DOC_IMG.mkdir(parents=True, exist_ok=True)
            for name in ("overload_ttft.png", "overload_goodput.png", "overload_window.png"):
                if (args.plots_dir / name).exists():
                    shutil.copy(args.plots_dir / name, DOC_IMG / name)
    except ImportError:
        print("matplotlib is not installed: no plots (pip install 'sluice[bench]')", file=sys.stderr)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    print(result["table"])
    for config, v in result["verdict"].items():
        print(f"{config}: premium p99 TTFT {v['premium_p99_ms']:.0f} ms = {v['premium_ratio']:.2f}x unloaded "
              f"({'MET' if v['premium_met'] else 'MISSED'}); engine {100 * v['engine_share']:.1f}% of max "
              f"({'MET' if v['engine_met'] else 'MISSED'}); Jain {v['jain']:.3f}"
              f"{' (both 0)' if v['jain_both_zero'] else ''} "
              f"({'MET' if v['jain_met'] else 'MISSED'})")
    print(f"wrote {args.output} ({result['wall_s']} s wall)")


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
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + " ".join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]),
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
                    from sluice.bench._plots import write_plots

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


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
