"""Assembles the running gateway from settings: in-process simulators, engine pools, pricing, quotas, the service."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from sluice.clock import Clock
from sluice.config import ModelSettings, Settings
from sluice.engines import EnginePool, Replica
from sluice.engines.dialects import dialect_for
from sluice.gateway._gates import open_gate
from sluice.gateway._live import LiveConfig
from sluice.gateway._scale_out import ScaleOutHook
from sluice.gateway.service import GatewayService, ModelRoute
from sluice.identity import Directory
from sluice.quota import EstimateCounter, ExactCounter, Pricer, PromptCounter, QuotaLimiter, QuotaPolicy, open_store
from sluice.sim import SimServer
from sluice.telemetry import GatewayMetrics, UsageLedger

log = logging.getLogger("sluice")


@dataclass(frozen=True, slots=True)
class Runtime:
    service: GatewayService
    live: LiveConfig


@asynccontextmanager
async def open_service(settings: Settings, clock: Clock, metrics: GatewayMetrics) -> AsyncIterator[Runtime]:
    async with AsyncExitStack() as stack:
        routes: dict[str, ModelRoute] = {}
        for model in settings.models:
            routes[model.name] = await _open_route(model, settings, clock, metrics, stack)
        store = open_store(settings.state, settings.quota, clock, observer=metrics)
        stack.push_async_callback(store.close)
        limiter = QuotaLimiter(QuotaPolicy(settings.tiers, settings.quota), store, clock, observer=metrics)
        stack.push_async_callback(limiter.close)
        _warn_if_limits_are_per_process(settings)
        usage = UsageLedger.for_state(settings.state, clock)
        usage.start()
        stack.push_async_callback(usage.close)
        live = LiveConfig(settings, Directory.for_state(settings.state, clock, on_tiers=lambda _: live.apply()), clock)
        await live.directory.start()
        stack.push_async_callback(live.directory.close)
        service = GatewayService(routes, live.authenticator(), pricer_for(settings), limiter, clock, usage,
                                 live.directory)
        live.attach(service)
        live.apply()
        stack.push_async_callback(service.drain)
        if settings.scale_out is not None:
            hook = ScaleOutHook(settings.scale_out, clock,
                                lambda: {n: r.gate.last_saturation for n, r in routes.items() if r.gate},
                                lambda: (metrics.answered, metrics.refused_for_capacity))
            hook.start()
            stack.push_async_callback(hook.close)
        yield Runtime(service, live)


def pricer_for(settings: Settings) -> Pricer:
    counters: dict[str, PromptCounter] = {
        m.name: ExactCounter.from_file(m.tokenizer) if m.tokenizer else EstimateCounter() for m in settings.models
    }
    return Pricer(counters, settings.quota.default_max_tokens, {m.name: m.context_length for m in settings.models})


def _warn_if_limits_are_per_process(settings: Settings) -> None:
    has_limits = settings.quota.limits or any(t.rules() for t in settings.tiers.values())
    if has_limits and settings.state.startswith("memory://"):
        log.warning("Quota state is in memory: limits hold for this process only. Gateways that share traffic "
                    "must share state (state: redis://...), or every limit multiplies by their number.")


async def _open_route(model: ModelSettings, settings: Settings, clock: Clock, metrics: GatewayMetrics,
                      stack: AsyncExitStack) -> ModelRoute:
    if model.sim is not None:
        sim = await SimServer.start(model.sim, model_name=model.name, clock=clock)
        stack.push_async_callback(sim.stop)
        log.info("model %s: built-in engine simulator (%s dialect) at %s", model.name, model.sim.dialect, sim.url)
        replicas = [Replica(sim.url, model.sim.dialect)]
        served_name = model.name
    else:
        assert model.engine is not None
        replicas = [Replica(url, model.engine.dialect) for url in model.engine.urls]
        served_name = model.engine.served_model or model.name
    pool = EnginePool(
        replicas,
        connect_timeout_s=settings.server.connect_timeout_s,
        read_timeout_s=settings.server.upstream_timeout_s,
    )
    stack.push_async_callback(pool.close)
    gate = await open_gate(model, replicas, settings, clock, metrics, stack)
    dialect = dialect_for(model.sim.dialect if model.sim else model.engine.dialect)  # type: ignore[union-attr]
    return ModelRoute(model.name, served_name, pool, model.context_length, gate=gate,
                      tighten_factor=model.admission.protection.tighten_factor,
                      priority=dialect.priority if model.admission.priority_to_engine else None)
