"""The replay: a trace's requests, at their recorded times, through the gateway's policy and simulated engines.

Each request goes the gateway's way (gateway/service.py): its principal (the config's key of that id, else the
trace's tenant and tier), the quota limiter (the real ``QuotaLimiter`` on a ``MemoryStore``: rates, token budgets,
concurrency, ``max_wait_s``, tightened while protection mode is engaged), the model pool's gate (window, priority
bands, fair share, queue deadlines, protection, preemption), then a replica; it settles as the gateway settles
(the gate learns its latency, the reservation is reconciled with what it generated). A stream the gate preempts
is resumed as the gateway resumes it: its place given back, the rest queued at the head of its band with what it
generated as more prompt. Time is virtual (``_virtual_time``): the same trace and config give the same outcomes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from sluice.admission import Outcome, Permit, ticket_for
from sluice.clock import Clock
from sluice.config import ModelSettings, Settings, SimSettings, TierSettings
from sluice.errors import EngineUnavailableError, OverloadedError, RateLimitError
from sluice.identity import Principal
from sluice.plan._pool import SimulatedPool
from sluice.plan._replica import EngineRun, SimReplica
from sluice.plan._trace import Trace, TraceRequest
from sluice.plan._virtual_time import VirtualClock, run_virtual
from sluice.quota import MemoryStore, Price, QuotaLimiter, QuotaPolicy, Reservation

NO_TIER = TierSettings(max_queue_s=0.0)  # a tier the config lacks: the gateway's answer (service._queueing)


@dataclass(frozen=True, slots=True)
class RequestOutcome:
    """What became of one replayed request. Times are seconds; TTFT as ``sluice bench`` measures it (a whole,
    non-streamed answer's is its end-to-end latency), TPOT only for streams of two tokens or more."""

    at_s: float
    principal: Principal
    model: str | None
    status: int
    reason: str | None = None
    queue_wait_s: float | None = None
    ttft_s: float | None = None
    tpot_s: float | None = None
    e2e_s: float | None = None
    output_tokens: int = 0
    preempted: int = 0


@dataclass(frozen=True, slots=True)
class ReplayResult:
    outcomes: tuple[RequestOutcome, ...]
    replicas: int
    simulated_s: float  # from the first arrival to the last answer


def replay(settings: Settings, trace: Trace, *, replicas: int, engine: SimSettings | None = None,
           model: str | None = None) -> ReplayResult:
    """Replay ``trace`` against ``replicas`` simulated replicas per model, on virtual time. ``engine``: the
    calibrated engine (default: each model's ``sim`` settings, else the simulator's defaults); ``model``: replay
    every request against this model whatever the trace says."""
    if replicas < 1:
        raise ValueError("at least one replica")
    return run_virtual(_Replay(settings, engine, model).run(trace, replicas))


class _Replay:
    def __init__(self, settings: Settings, engine: SimSettings | None, model: str | None) -> None:
        self._settings = settings
        self._engine = engine
        self._model = model
        self._keys = {k.id: k for k in settings.keys}

    async def run(self, trace: Trace, replicas: int) -> ReplayResult:
        clock = VirtualClock(asyncio.get_running_loop())
        self._clock: Clock = clock
        self._limiter = QuotaLimiter(QuotaPolicy(self._settings.tiers, self._settings.quota), MemoryStore(clock),
                                     clock)
        self._pools = {m.name: SimulatedPool(m, self._settings, self._engine_for(m), replicas, clock)
                       for m in self._settings.models}
        for pool in self._pools.values():
            pool.start()
        tasks: list[asyncio.Task[RequestOutcome]] = []
        try:
            for req in trace.requests:
                await clock.sleep(req.at_s - clock.now())
                tasks.append(asyncio.get_running_loop().create_task(self._one(req)))
            outcomes = tuple(await asyncio.gather(*tasks))
            return ReplayResult(outcomes, replicas, clock.now())
        finally:
            for pool in self._pools.values():
                await pool.close()
            await self._limiter.close()

    def _engine_for(self, model: ModelSettings) -> SimSettings:
        return self._engine or model.sim or SimSettings()

    def _principal(self, req: TraceRequest) -> Principal:
        key = self._keys.get(req.key_id)
        if key is not None:
            tenant, tier, user = key.tenant, key.tier, key.user or key.id
        else:
            tenant, tier, user = req.tenant or "default", req.tier or "default", req.key_id
        return Principal(req.key_id, user, tenant, tier, self._tier(tier).priority)

    def _tier(self, name: str) -> TierSettings:
        return self._settings.tiers.get(name, NO_TIER)

    def _pool(self, req: TraceRequest) -> SimulatedPool | None:
        name = self._model or req.model
        if name is None and len(self._pools) == 1:
            return next(iter(self._pools.values()))
        return self._pools.get(name or "")

    async def _one(self, req: TraceRequest) -> RequestOutcome:
        principal, arrived = self._principal(req), self._clock.now()
        pool = self._pool(req)
        if pool is None:
            return RequestOutcome(req.at_s, principal, req.model, 404, "not_found")
        engine = pool.replicas[0].engine.settings
        if req.prompt_tokens + req.output_tokens > min(engine.max_model_len, engine.num_kv_blocks * engine.block_size):
            return RequestOutcome(req.at_s, principal, pool.name, 400, "context_length_exceeded")
        price = Price(req.prompt_tokens, req.max_tokens)
        try:
            reservation = await self._limiter.reserve(principal, pool.name, price, pool.tighten_for(principal.priority))
        except RateLimitError as exc:
            return RequestOutcome(req.at_s, principal, pool.name, 429, exc.reason)
        return await _Flight(self, req, principal, pool, reservation, arrived).run()


class _Flight:
    """One request from its reservation to its end (the gateway's ``Flight``, without HTTP)."""

    def __init__(self, replay: _Replay, req: TraceRequest, principal: Principal, pool: SimulatedPool,
                 reservation: Reservation, arrived_s: float) -> None:
        self._replay, self._req, self._principal, self._pool = replay, req, principal, pool
        self._reservation, self._arrived_s = reservation, arrived_s
        self._clock = replay._clock
        self._limiter = replay._limiter
        self._max_queue_s = replay._tier(principal.tier).max_queue_s

    async def run(self) -> RequestOutcome:
        req, pool, gate = self._req, self._pool, self._pool.gate
        charged = self._reservation.price  # what the quota charged: less than asked when a tier's over_budget clamps
        permit: Permit | None = None
        if gate is not None:
            tier = self._replay._tier(self._principal.tier)
            ticket = ticket_for(self._principal.priority, self._principal.tenant, tier.weight, charged.prompt_tokens,
                                charged.max_output_tokens, self._clock.now() + self._max_queue_s, tier.ttft_slo_s)
            asked_s = self._clock.now()
            try:
                permit = await gate.admit(ticket)
            except OverloadedError as exc:  # queue full or timed out, shed, SLO unattainable: 503
                return await self._refused(503, exc.reason, self._clock.now() - asked_s)
        queue_wait_s = permit.waited_s if permit is not None else 0.0
        first_token_s: float | None = None
        prompt, generated, preempted = req.prompt_tokens, 0, 0
        remaining = min(req.output_tokens, charged.max_output_tokens)
        while True:
            replica = pool.pick()
            try:
                run = replica.submit(prompt, remaining, pool.engine_priority(self._principal.priority))
            except EngineUnavailableError as exc:
                if gate is not None and permit is not None:
                    gate.release(permit, Outcome.DROPPED, None, 0)
                return await self._refused(503, exc.reason, queue_wait_s)
            if gate is not None and permit is not None and pool.preempts and req.stream:
                gate.arm(permit, _stopper(replica, run))
            await run.done
            if first_token_s is None:
                first_token_s = run.first_token_s
            generated += run.tokens
            if not run.aborted:
                break
            preempted += 1  # the gate stopped it for a more important request: the rest waits for a place
            prompt, remaining = prompt + run.tokens, remaining - run.tokens
            assert gate is not None and permit is not None
            try:
                permit = await gate.resume(permit, extra_prompt_tokens=run.tokens,
                                           deadline_s=self._clock.now() + self._max_queue_s)
            except OverloadedError as exc:
                await self._limiter.settle(self._reservation, req.prompt_tokens, generated)
                return self._outcome(503, exc.reason, queue_wait_s, first_token_s, None, generated, preempted)
        end_s = run.last_token_s if run.last_token_s is not None else self._clock.now()
        if gate is not None and permit is not None:
            latency_s = None if first_token_s is None else max(0.0, first_token_s - self._arrived_s - queue_wait_s)
            gate.release(permit, Outcome.SUCCESS, latency_s, generated)
        await self._limiter.settle(self._reservation, req.prompt_tokens, generated)
        return self._outcome(200, None, queue_wait_s, first_token_s, end_s, generated, preempted)

    async def _refused(self, status: int, reason: str, queue_wait_s: float | None = None) -> RequestOutcome:
        await self._limiter.settle(self._reservation, 0, 0)  # nothing ran: the reservation is given back
        return self._outcome(status, reason, queue_wait_s, None, None, 0, 0)

    def _outcome(self, status: int, reason: str | None, queue_wait_s: float | None, first_token_s: float | None,
                 end_s: float | None, generated: int, preempted: int) -> RequestOutcome:
        req, start = self._req, self._arrived_s
        e2e = None if end_s is None else end_s - start
        ttft = (None if first_token_s is None else first_token_s - start) if req.stream else e2e
        tpot = None
        if req.stream and end_s is not None and first_token_s is not None and generated > 1:
            tpot = (end_s - first_token_s) / (generated - 1)
        return RequestOutcome(req.at_s, self._principal, self._pool.name, status, reason, queue_wait_s, ttft, tpot,
                              e2e, generated, preempted)


def _stopper(replica: SimReplica, run: EngineRun) -> Callable[[], None]:
    def stop() -> None:
        replica.abort(run)

    return stop
