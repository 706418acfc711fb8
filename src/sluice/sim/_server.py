"""``SimServer``: the simulator assembled and listening, inside whatever event loop runs it (no signal handlers)."""

from __future__ import annotations

import asyncio
from types import TracebackType

from aiohttp import web

from sluice.clock import Clock, MonotonicClock
from sluice.config import SimSettings
from sluice.sim._app import SimRoutes
from sluice.sim._engine import EngineModel
from sluice.sim._gpu import GpuActivity
from sluice.sim._metrics import SimMetrics
from sluice.sim._runner import EngineRunner
from sluice.sim._sampler import Sampler
from sluice.sim._serving import Serving

SHUTDOWN_TIMEOUT_S = 2.0
MIN_SLEEP_S = 0.0005  # steps shorter than this (a very high speed) are run in bursts: see EngineRunner


class SimServer:
    """A running simulated engine. Build it with ``await SimServer.start(...)``; end it with ``await stop()``."""

    def __init__(
        self, *, engine: EngineModel, runner: EngineRunner, metrics: SimMetrics, app_runner: web.AppRunner,
        host: str, port: int,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.host = host
        self.port = port
        self._runner = runner
        self._app_runner = app_runner

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @classmethod
    async def start(
        cls,
        settings: SimSettings,
        *,
        model_name: str,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Clock | None = None,
    ) -> SimServer:
        clock = clock or MonotonicClock()
        engine = EngineModel(settings)
        gpu = GpuActivity(clock)
        metrics = SimMetrics(settings.dialect, model_name, engine, gpu)
        runner = EngineRunner(engine, clock, metrics, min_sleep_s=MIN_SLEEP_S, gpu=gpu)
        serving = Serving(settings, model_name=model_name, runner=runner, sampler=Sampler(settings), clock=clock)
        app = SimRoutes(settings, model_name=model_name, serving=serving, metrics=metrics, clock=clock).app()
        app_runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S
        )
        await app_runner.setup()
        try:
            await web.TCPSite(app_runner, host, port).start()
        except BaseException:
            await app_runner.cleanup()
            raise
        runner.start()
        bound_port = app_runner.addresses[0][1]
        return cls(engine=engine, runner=runner, metrics=metrics, app_runner=app_runner, host=host, port=bound_port)

    async def stop(self) -> None:
        """Abort whatever is in flight (streams end), stop the engine loop, close the listener."""
        await self._runner.stop()
        await self._app_runner.cleanup()

    async def __aenter__(self) -> SimServer:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


async def serve_sim(
    settings: SimSettings, *, model_name: str, host: str = "127.0.0.1", port: int = 8000, clock: Clock | None = None
) -> None:
    """Serve the simulator until cancelled (``sluice sim``), saying once where it listens."""
    server = await SimServer.start(settings, model_name=model_name, host=host, port=port, clock=clock)
    try:
        print(
            f"sluice sim: {settings.dialect} engine simulator serving model {model_name!r} at {server.url}",
            flush=True,
        )
        await asyncio.Event().wait()
    finally:
        await server.stop()
