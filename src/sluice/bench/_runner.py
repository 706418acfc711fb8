"""The load loop: open (arrivals on a schedule, optionally capped in flight) or closed (C users back to back).

    open loop    --rate R [--concurrency C]: requests arrive by the arrival process whether or not earlier ones
                 finished (a request that finds C in flight waits for a slot, as vLLM's --max-concurrency does)
    closed loop  --concurrency C alone: C users, each sending its next request when the last one ends

With ``fit_span`` and a request count, the gaps are rescaled so the last arrival is at exactly requests/rate
(``fitted_gaps``, as vLLM's benchmark always does). The run stops sending after ``requests`` requests or when
``duration_s`` has passed; the requests then in flight finish (the drain), each bounded by the request timeout and,
after a duration, all by ``drain_timeout_s``: those still in flight then are cut and recorded as such
(``drain_timeout``). With ``max_failures``, a run whose requests all fail stops early (``FailureWatch``) and cuts
what it has in flight (``stopped_early``). Its duration is from the first send to the last answer. The clock and
the seed are injected; the arrivals and the request plan use separate RNGs derived from the seed, so the schedule
and the requests are each reproducible.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp

from sluice.bench._arrivals import ArrivalProcess, fitted_gaps
from sluice.bench._client import RequestResult, RequestShape, send
from sluice.bench._failure_watch import FailureWatch
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
    drain_timeout_s: float | None = None  # after a duration: how long the requests in flight may take (None: no cap)
    max_failures: int = 0  # stop early after this many failures (FailureWatch); 0: never

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
        if self.drain_timeout_s is not None and self.drain_timeout_s < 0:
            raise ValueError("the drain timeout must be >= 0")
        if self.max_failures < 0:
            raise ValueError("max failures must be >= 0 (0: never stop early)")


@dataclass
class RunRecord:
    results: list[RequestResult]
    duration_s: float
    started_wall: float
    drain_s: float = 0.0  # from when sending stopped to the end of the run
    cut: int = 0  # requests still in flight when the drain timed out or the run stopped early
    stopped_early: str | None = None  # why, when it did


DrainNotice = Callable[[int, "float | None"], None]  # (requests in flight when sending stopped, drain timeout)


async def run_load(shape: RequestShape, load: LoadSpec, tenants: tuple[Tenant, ...], *, seed: int, clock: Clock,
                   on_result: Callable[[RequestResult], None] = lambda r: None,
                   on_drain: DrainNotice = lambda in_flight, timeout_s: None) -> RunRecord:
    requests = plan(tenants, random.Random(f"{seed}:plan"))
    arrival_rng = random.Random(f"{seed}:arrivals")
    timeout = aiohttp.ClientTimeout(total=shape.timeout_s)
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        run = _Run(session, shape, clock, FailureWatch(load.max_failures), on_result)
        if load.arrivals is None:
            await _closed_loop(run, load, requests)
        else:
            await _open_loop(run, load, load.arrivals, arrival_rng, requests)
        sending_ended = clock.now()
        await _drain(run, load, on_drain)
        ended = clock.now()
    run.results.sort(key=lambda r: r.index)
    return RunRecord(run.results, ended - run.t0, run.started_wall, drain_s=ended - sending_ended, cut=run.cut,
                     stopped_early=run.watch.reason)


class _Run:
    """One run's requests: sent, recorded (a cut one too), and the stop its failures may call."""

    def __init__(self, session: aiohttp.ClientSession, shape: RequestShape, clock: Clock, watch: FailureWatch,
                 on_result: Callable[[RequestResult], None]) -> None:
        self.session, self.shape, self.clock, self.watch = session, shape, clock, watch
        self.on_result = on_result
        self.results: list[RequestResult] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopped = asyncio.Event()
        self.cut = 0
        self.started_wall, self.t0 = clock.wall(), clock.now()

    def more(self, load: LoadSpec, sent: int, elapsed_s: float) -> bool:
        if self.stopped.is_set() or (load.requests is not None and sent >= load.requests):
            return False
        return load.duration_s is None or elapsed_s < load.duration_s

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def send(self, req: PlannedRequest) -> None:
        start_s = self.clock.now() - self.t0
        try:
            result = await send(self.session, self.shape, req, clock=self.clock, t0=self.t0)
        except asyncio.CancelledError:
            self.cut += 1
            why = ("stopped_early", "cut when the run stopped early") if self.stopped.is_set() else (
                "drain_timeout", "still in flight when the drain timed out (--drain-timeout)")
            self._record(RequestResult(req.index, req.tenant.name, start_s, req.input_len, req.output_len,
                                       reason=why[0], error=why[1], e2e_s=self.clock.now() - self.t0 - start_s))
            raise
        self._record(result)

    def _record(self, result: RequestResult) -> None:
        self.results.append(result)
        self.on_result(result)
        if self.watch.observe(result) is not None:
            self.stopped.set()


async def _open_loop(run: _Run, load: LoadSpec, arrivals: ArrivalProcess, rng: random.Random,
                     requests: Iterator[PlannedRequest]) -> None:
    slots = asyncio.Semaphore(load.concurrency) if load.concurrency else None

    async def one(req: PlannedRequest) -> None:
        if slots is None:
            await run.send(req)
            return
        async with slots:
            if run.more(load, 0, run.clock.now() - run.t0):  # no request starts after the duration or a stop
                await run.send(req)

    if load.fit_span and load.requests is not None:
        gaps: Iterator[float] = iter(fitted_gaps(arrivals, rng, load.requests))
    else:
        gaps = arrivals.gaps(rng)
    sent = 0
    at = next(gaps, math.inf)
    while run.more(load, sent, at):
        delay = at - (run.clock.now() - run.t0)
        if delay > 0:
            await _until(run, delay)
            if run.stopped.is_set():
                break
        run.spawn(one(next(requests)))
        sent += 1
        at += next(gaps, math.inf)  # a fitted schedule ends with its last request


async def _closed_loop(run: _Run, load: LoadSpec, requests: Iterator[PlannedRequest]) -> None:
    sent = 0

    async def user() -> None:
        nonlocal sent
        while run.more(load, sent, run.clock.now() - run.t0):
            sent += 1
            await run.send(next(requests))

    for _ in range(load.concurrency or 1):
        run.spawn(user())
    left_s = None if load.duration_s is None else load.duration_s - (run.clock.now() - run.t0)
    await _settle(run, set(run.tasks), left_s)  # the users send until the duration (or the count) is reached


async def _drain(run: _Run, load: LoadSpec, on_drain: DrainNotice) -> None:
    """Let the requests in flight finish (after a duration: within the drain timeout); cut those left."""
    in_flight = {task for task in run.tasks if not task.done()}
    if in_flight and not run.stopped.is_set():
        timeout_s = load.drain_timeout_s if load.duration_s is not None else None
        on_drain(len(in_flight), timeout_s)
        await _settle(run, in_flight, timeout_s)
    for task in list(run.tasks):
        task.cancel()
    await asyncio.gather(*run.tasks, return_exceptions=True)


async def _settle(run: _Run, tasks: set[asyncio.Task[None]], timeout_s: float | None) -> None:
    """Until every task is done, ``timeout_s`` has passed on the run's clock (``None``: no bound), or it stops."""
    waiters: set[asyncio.Future[Any]] = {asyncio.ensure_future(run.stopped.wait())}
    if timeout_s is not None:
        waiters.add(asyncio.ensure_future(run.clock.sleep(max(0.0, timeout_s))))
    pending: set[asyncio.Future[Any]] = {task for task in tasks if not task.done()}
    try:
        while pending and not any(w.done() for w in waiters):
            _, still = await asyncio.wait(pending | waiters, return_when=asyncio.FIRST_COMPLETED)
            pending = still - waiters
    finally:
        for waiter in waiters:
            waiter.cancel()


async def _until(run: _Run, delay_s: float) -> None:
    """Sleep ``delay_s`` on the run's clock, or less if it stops meanwhile."""
    sleep = asyncio.ensure_future(run.clock.sleep(delay_s))
    try:
        await _settle(run, {sleep}, None)
    finally:
        sleep.cancel()
