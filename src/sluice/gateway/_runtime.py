"""Assembles the running gateway from settings: in-process simulators, engine pools, the service."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from sluice.clock import Clock
from sluice.config import ModelSettings, Settings
from sluice.engines import EnginePool, Replica
from sluice.gateway.service import GatewayService, ModelRoute
from sluice.identity import KeyRing
from sluice.sim import SimServer

log = logging.getLogger("sluice")


@asynccontextmanager
async def open_service(settings: Settings, clock: Clock) -> AsyncIterator[GatewayService]:
    async with AsyncExitStack() as stack:
        routes: dict[str, ModelRoute] = {}
        for model in settings.models:
            routes[model.name] = await _open_route(model, settings, clock, stack)
        keyring = KeyRing(settings.keys, settings.tiers, open_access=settings.auth.mode == "open")
        yield GatewayService(routes, keyring, clock)


async def _open_route(model: ModelSettings, settings: Settings, clock: Clock, stack: AsyncExitStack) -> ModelRoute:
    if model.sim is not None:
        sim = await SimServer.start(model.sim, model_name=model.name, clock=clock)
        stack.push_async_callback(sim.stop)
        log.info("model %s: built-in engine simulator (%s dialect) at %s", model.name, model.sim.dialect, sim.url)
        replicas = [Replica(sim.url, model.sim.dialect)]
        served_name, max_model_len = model.name, model.sim.max_model_len
    else:
        assert model.engine is not None
        replicas = [Replica(url, model.engine.dialect) for url in model.engine.urls]
        served_name, max_model_len = model.engine.served_model or model.name, None
    pool = EnginePool(
        replicas,
        connect_timeout_s=settings.server.connect_timeout_s,
        read_timeout_s=settings.server.upstream_timeout_s,
    )
    stack.push_async_callback(pool.close)
    return ModelRoute(model.name, served_name, pool, max_model_len)
