"""The load loop: open (arrivals on a schedule, optionally capped in flight) or closed (C users back to back).

    open loop    --rate R [--concurrency C]: requests arrive by the arrival process whether or not earlier ones
                 finished (a request that finds C in flight waits for a slot, as vLLM's --max-concurrency does)
    closed loop  --concurrency C alone: C users, each sending its next request when the last one ends

With ``fit_span`` and a request count, the gaps are rescaled so the last arrival is at exactly requests/rate
(``fitted_gaps``, as vLLM's benchmark always does). The run ends after ``requests`` requests were sent or when
``duration_s`` has passed (no new request starts after it; those in flight finish, each bounded by the request
timeout). Its duration is from the first send to the last answer. The clock and the seed are injected; the
arrivals and the request plan use separate RNGs derived from the seed, so the schedule and the requests are each
reproducible.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import aiohttp

from sluice.bench._arrivals import ArrivalProcess, fitted_gaps
from sluice.bench._client import RequestResult, RequestShape, send
from sluice.bench._plan import PlannedRequest, plan
from sluice.bench._tenants import Tenant
from sluice.clock import Clock


@dataclass(frozen=True)
class LoadSpec:
    arrivals: ArrivalProcess | None = None  # None: closed loop
    concurrency: int | None = None
    requests: int | None = None
    duration_s: float | None = None
    fit_span: bool = False  # with a request count: the last arrival at exactly requests/rate (fitted_gaps)

    def __post_init__(self) -> None:
        if self.requests is None and self.duration_s is None:
            raise ValueError("a run needs a request count or a duration")
        if self.arrivals is None and not self.concurrency:
            raise ValueError("give an arrival rate, a concurrency, or both")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if self.arrivals is not None and math.isinf(self.arrivals.rate_per_s) and self.requests is None:
            raise ValueError("an infinite rate needs a request count")
        if self.fit_span and (self.arrivals is None or self.requests is None):
            raise ValueError("fitting the span needs an arrival rate and a request count")


@dataclass
class RunRecord:
    results: list[RequestResult]
    duration_s: float
    started_wall: float


async def run_load(shape: RequestShape, load: LoadSpec, tenants: tuple[Tenant, ...], *, seed: int, clock: Clock,
                   on_result: Callable[[RequestResult], None] = lambda r: None) -> RunRecord:
    requests = plan(tenants, random.Random(f"{seed}:plan"))
    arrival_rng = random.Random(f"{seed}:arrivals")
    results: list[RequestResult] = []

    def done(result: RequestResult) -> None:
        results.append(result)
        on_result(result)

    timeout = aiohttp.ClientTimeout(total=shape.timeout_s)
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        started_wall, t0 = clock.wall(), clock.now()
        if load.arrivals is None:
            await _closed_loop(session, shape, load, requests, clock, t0, done)
        else:
            await _open_loop(session, shape, load, load.arrivals, arrival_rng, requests, clock, t0, done)
        duration_s = clock.now() - t0
    results.sort(key=lambda r: r.index)
    return RunRecord(results, duration_s, started_wall)


def _more(load: LoadSpec, sent: int, elapsed_s: float) -> bool:
    if load.requests is not None and sent >= load.requests:
        return False
    return load.duration_s is None or elapsed_s < load.duration_s


async def _open_loop(session: aiohttp.ClientSession, shape: RequestShape, load: LoadSpec, arrivals: ArrivalProcess,
                     rng: random.Random, requests: Iterator[PlannedRequest], clock: Clock, t0: float,
                     done: Callable[[RequestResult], None]) -> None:
    slots = asyncio.Semaphore(load.concurrency) if load.concurrency else None
    tasks: set[asyncio.Task[None]] = set()

    async def one(req: PlannedRequest) -> None:
        if slots is None:
            done(await send(session, shape, req, clock=clock, t0=t0))
            return
        async with slots:
            done(await send(session, shape, req, clock=clock, t0=t0))

    if load.fit_span and load.requests is not None:
        gaps: Iterator[float] = iter(fitted_gaps(arrivals, rng, load.requests))
    else:
        gaps = arrivals.gaps(rng)
    sent = 0
    at = next(gaps, math.inf)
    while _more(load, sent, at):
        delay = at - (clock.now() - t0)
        if delay > 0:
            await clock.sleep(delay)
        task = asyncio.create_task(one(next(requests)))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        sent += 1
        at += next(gaps, math.inf)  # a fitted schedule ends with its last request
    while tasks:
        await asyncio.gather(*list(tasks))


async def _closed_loop(session: aiohttp.ClientSession, shape: RequestShape, load: LoadSpec,
                       requests: Iterator[PlannedRequest], clock: Clock, t0: float,
                       done: Callable[[RequestResult], None]) -> None:
    sent = 0

    async def user() -> None:
        nonlocal sent
        while _more(load, sent, clock.now() - t0):
            sent += 1
            done(await send(session, shape, next(requests), clock=clock, t0=t0))

    await asyncio.gather(*(user() for _ in range(load.concurrency or 1)))
