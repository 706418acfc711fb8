"""Assembles the running gateway from settings: in-process simulators, engine pools, pricing, quotas, the service."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from sluice.cache import open_cache
from sluice.clock import Clock
from sluice.config import EngineSettings, GpuSettings, ModelSettings, Settings
from sluice.dialects import DIALECTS
from sluice.engines import (
    CircuitBreaker,
    DnsDiscovery,
    EngineLauncher,
    EnginePool,
    GpuSignal,
    LoadScraper,
    ReplicaSet,
    Router,
)
from sluice.engines.dialects import dialect_for
from sluice.errors import ConfigError
from sluice.gateway._fleet import apply_admin_fleet
from sluice.gateway._gates import open_gate
from sluice.gateway._launched import LaunchedFleet
from sluice.gateway._live import LiveConfig
from sluice.gateway._route import ModelRoute
from sluice.gateway._started_models import StartedModels
from sluice.gateway.autoscale import build_autoscalers, signals_for
from sluice.gateway.service import GatewayService
from sluice.identity import Directory
from sluice.quota import EstimateCounter, ExactCounter, Pricer, PromptCounter, QuotaLimiter, QuotaPolicy, open_store
from sluice.sim import SimServer
from sluice.state import State, open_state
from sluice.telemetry import GatewayMetrics, UsageLedger

log = logging.getLogger("sluice")


@dataclass(frozen=True, slots=True)
class Runtime:
    service: GatewayService
    live: LiveConfig
    fleets: Mapping[str, LaunchedFleet]  # per model, the replicas Sluice launched (admin API: /admin/engines)
    started: StartedModels  # the models started at run time through the admin API (their own launchers)
    state: State  # the process's state store (memory or Redis): the console keeps its sessions there


@asynccontextmanager
async def open_service(settings: Settings, clock: Clock, metrics: GatewayMetrics,
                       launcher: EngineLauncher | None = None) -> AsyncIterator[Runtime]:
    """The running service; ``launcher``: the engines Sluice launched for one model (already started)."""
    async with AsyncExitStack() as stack:
        routes: dict[str, ModelRoute] = {}
        fleets: dict[str, LaunchedFleet] = {}
        for model in settings.models:
            routes[model.name] = await _open_route(model, settings, clock, metrics, stack)
            if launcher is not None and launcher.model == model.name:  # its replicas come and go with the launcher
                replicas = routes[model.name].pool.replicas
                fleets[model.name] = LaunchedFleet(launcher, replicas, clock)
                stack.push_async_callback(fleets[model.name].close)
                replicas.sync("static", [u for u in replicas_of(model) if u not in launcher.urls])
            if not routes[model.name].pool.replicas.all():
                log.warning("model %s has no engine replica yet: it answers 503 until one is added (POST "
                            "/admin/replicas) or found (engine.discovery)", model.name)
        state = open_state(settings.state, settings.quota, clock)  # one Redis client for quota, cache, usage, keys
        stack.push_async_callback(state.close)
        store = open_store(state, settings.quota, clock, observer=metrics)
        stack.push_async_callback(store.close)
        limiter = QuotaLimiter(QuotaPolicy(settings.tiers, settings.quota), store, clock, observer=metrics,
                               shadow_observer=metrics)
        stack.push_async_callback(limiter.close)
        _warn_if_limits_are_per_process(settings)
        usage = UsageLedger.for_state(state, clock)
        usage.start()
        stack.push_async_callback(usage.close)
        live: LiveConfig  # the directory's tier callback applies the live config it is part of
        directory = Directory.for_state(state, clock, on_tiers=lambda _: live.apply(),
                                        on_fleet=lambda fleet: apply_admin_fleet(routes, fleet))
        live = LiveConfig(settings, directory, clock)
        await live.directory.start()
        stack.push_async_callback(live.directory.close)
        cache = open_cache(state, clock)
        stack.push_async_callback(cache.close)
        counters, lengths = prompt_counters(settings), {m.name: m.context_length for m in settings.models}
        pricer = Pricer(counters, settings.quota.default_max_tokens, lengths)  # tables a model started later joins
        service = GatewayService(routes, live.authenticator(), pricer, limiter, clock, usage, live.directory, cache)
        live.attach(service)
        live.apply()
        stack.push_async_callback(service.drain)
        started = StartedModels(service, lambda model, own: _open_route(model, settings, clock, metrics, own),
                                clock, settings.console, counters, lengths)
        stack.push_async_callback(started.close)
        for autoscaler in build_autoscalers(settings, signals_for(routes, metrics.engine_capacity_counts), clock,
                                            state, metrics, fleets):
            routes[autoscaler.model].pool.replicas.describe("autoscaler", autoscaler.snapshot)
            autoscaler.start()
            stack.push_async_callback(autoscaler.close)
        yield Runtime(service, live, fleets, started, state)


def replicas_of(model: ModelSettings) -> list[str]:
    return model.engine.urls if model.engine is not None else []


def prompt_counters(settings: Settings) -> dict[str, PromptCounter]:
    return {m.name: ExactCounter.from_file(m.tokenizer) if m.tokenizer else EstimateCounter() for m in settings.models}


def _warn_if_limits_are_per_process(settings: Settings) -> None:
    has_limits = settings.quota.limits or any(t.rules() for t in settings.tiers.values())
    if has_limits and settings.state.startswith("memory://"):
        log.warning("Quota state is in memory: limits hold for this process only. Gateways that share traffic "
                    "must share state (state: redis://...), or every limit multiplies by their number.")


async def _open_route(model: ModelSettings, settings: Settings, clock: Clock, metrics: GatewayMetrics,
                      stack: AsyncExitStack) -> ModelRoute:
    engine = model.engine
    if model.sim is not None:
        sim = await SimServer.start(model.sim, model_name=model.name, clock=clock)
        stack.push_async_callback(sim.stop)
        log.info("model %s: built-in engine simulator (%s dialect) at %s", model.name, model.sim.dialect, sim.url)
        engine = EngineSettings(dialect=model.sim.dialect, urls=[sim.url], served_model=model.name,
                                gpu=GpuSettings())  # the simulator exports dcgm-exporter's GPU gauges
    assert engine is not None
    replicas = ReplicaSet(engine.dialect, clock=clock, name=model.name, breaker=lambda: CircuitBreaker(
        clock, failures=engine.breaker_failures, open_s=engine.breaker_open_s))
    replicas.sync("static", engine.urls, engine.weights)
    if engine.discovery is not None:
        dns = DnsDiscovery(engine.discovery, clock, lambda urls: replicas.sync("dns", urls))
        replicas.describe("dns", dns.snapshot)
        await dns.resolve_once()  # before serving: a failure keeps the pool as it is, and retries in the loop
        dns.start()
        stack.push_async_callback(dns.close)
    metrics.watch_replica_set(model.name, replicas)
    scraper = None
    if (model.admission.enabled and model.admission.watch_load) or engine.routing == "least_kv":
        sat = model.admission.saturation
        gpu = GpuSignal.open(engine.gpu, engine.urls) if engine.gpu is not None else None
        if gpu is not None:
            stack.callback(gpu.close)
        scraper = LoadScraper(replicas, clock, interval_s=sat.scrape_interval_s, max_age_s=sat.stale_after_s,
                              gpu=gpu)
        scraper.start()
        stack.push_async_callback(scraper.stop)
        replicas.describe("load", scraper.readings)  # the engines' own readings, in the console's snapshot
        metrics.watch_replicas(lambda: [(model.name, r.url, scraper.latest(r.url) is not None
                                         and scraper.last_error(r.url) is None, r.breaker.state.value)
                                        for r in replicas.all()])
    router = Router(replicas, engine.routing, kv_usage=_kv_usage(scraper))
    pool = EnginePool(replicas, router=router, connect_timeout_s=settings.server.connect_timeout_s,
                      read_timeout_s=settings.server.upstream_timeout_s, max_connections=engine.max_connections,
                      connection_wait_s=engine.connection_wait_s, clock=clock)
    pool.start_health_checks(clock, engine.health_interval_s)
    slots = pool.connections
    metrics.watch_upstream(model.name, slots.capacity, lambda: slots.in_use, lambda: slots.waiting)
    stack.push_async_callback(pool.close)
    gate = await open_gate(model, replicas, scraper, settings, clock, metrics, stack, pool.max_connections)
    dialect = dialect_for(engine.dialect)
    if model.admission.preemption.enabled and not dialect.resumes_from_token_ids:
        resuming = ", ".join(name for name, facts in DIALECTS.items() if facts.resumes_from_token_ids)
        raise ConfigError(f"model {model.name}: admission.preemption needs an engine that resumes streams from token "
                          f"ids ({resuming}); {engine.dialect} does not")
    return ModelRoute(model.name, engine.served_model or model.name, pool, model.context_length, gate=gate,
                      tighten_factor=model.admission.protection.tighten_factor,
                      priority=dialect.priority if model.admission.priority_to_engine else None,
                      resumes_preempted=model.admission.enabled and model.admission.preemption.enabled,
                      affinity=engine.routing == "prefix_affinity",
                      cache_ttl_s=model.cache.ttl_s if model.cache.enabled else None)


def _kv_usage(scraper: LoadScraper | None) -> Callable[[str], float | None]:
    def usage(url: str) -> float | None:
        sample = scraper.fresh(url) if scraper is not None else None
        return None if sample is None else sample.kv_usage

    return usage
