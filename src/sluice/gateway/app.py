"""``create_app``: the ASGI application, from settings."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from sluice.clock import Clock, MonotonicClock
from sluice.config import Settings
from sluice.engines import EngineLauncher
from sluice.gateway._asgi import GatewayApp, RouteSpec
from sluice.gateway._reload import ConfigReloader
from sluice.gateway._runtime import open_service
from sluice.gateway.routes import ROUTES
from sluice.telemetry import AccessLog, GatewayMetrics


def create_app(settings: Settings, *, config_path: str | Path | None = None, clock: Clock | None = None,
               launcher: EngineLauncher | None = None, extra_routes: Sequence[RouteSpec] = ()) -> GatewayApp:
    """The gateway for ``settings``. With ``config_path``, edits to that file (tiers, limits, keys) apply live.
    With ``launcher``, the engines it starts are up before the gateway serves, and stopped after it. The banner
    is not the app's: whoever binds the port announces once it serves (``sluice serve``, the workers' supervisor).
    ``extra_routes`` are served beside the gateway's own (the console's: ``sluice.console.create_console_app``)."""
    clock = clock or MonotonicClock()
    metrics = GatewayMetrics()

    @asynccontextmanager
    async def lifespan(app: GatewayApp) -> AsyncIterator[None]:
        if launcher is not None:
            await launcher.start()
        try:
            async with _serving(app):
                yield
        finally:
            if launcher is not None:
                await launcher.stop()

    @asynccontextmanager
    async def _serving(app: GatewayApp) -> AsyncIterator[None]:
        access_log.start(clock)  # lines in batches, off the request path; the rest written by close()
        async with open_service(settings, clock, metrics, launcher) as runtime:
            app.state.service = runtime.service
            app.state.live = runtime.live
            app.state.fleets = runtime.fleets
            app.state.started_models = runtime.started
            app.state.state_store = runtime.state
            app.state.max_body_bytes = settings.server.max_body_bytes
            app.state.body_timeout_s = settings.server.body_timeout_s
            app.state.admin_key_hash = settings.auth.admin_key_hash
            reloader = None
            if config_path is not None:
                app.state.reloader = ConfigReloader(Path(config_path), runtime.live)
                reloader = asyncio.get_running_loop().create_task(app.state.reloader.run())
            try:
                yield
            finally:
                if reloader is not None:
                    reloader.cancel()
        access_log.close()

    access_log = AccessLog.to(settings.server.access_log_path, enabled=settings.server.access_log,
                              flush_s=settings.server.access_log_flush_s)
    return GatewayApp((*ROUTES, *extra_routes), lifespan=lifespan, metrics=metrics, access_log=access_log,
                      clock=clock, ops_port=settings.server.ops_port)
