"""Overload's load: tenants, one run of arrivals against a target, the engine's capacity."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import time
from collections.abc import Iterator, Sequence
from typing import Any

from bench.overload.metrics import Sampler, wait_drained
from bench.overload.settings import MODEL, TENANTS
from sluice.bench import (
    Fixed,
    LoadSpec,
    Poisson,
    RequestResult,
    RequestShape,
    Tenant,
    percentile,
    run_load,
)
from sluice.clock import MonotonicClock

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
    return float(1 / per_request_s)
