"""Models started while the gateway runs (``POST /admin/engines/models``): Sluice launches their engines, then
builds their pool as it builds the configuration's at start (``open_route``: replica set, scraper, gate, metrics)
and publishes it: the service's routes are replaced whole (copy-on-write), so a request sees the old table or the
new one, never half of one. Stopping one is the reverse: its route leaves the table (new requests: 404), the
requests in flight finish (for at most ``drain_timeout_s``), its engines are stopped, then its pool is closed.

Only this gateway process serves such a model: other gateways need it in their configuration or their own admin
call. It is not written to the configuration file, so it is gone after a restart. Starting needs the launcher in
the process that serves: with ``server.workers`` > 1 it is refused (``routes/engines.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sluice.clock import Clock
from sluice.config import ConsoleSettings, Dialect, EngineSettings, ModelSettings
from sluice.engines import (
    EngineLauncher,
    GpuPool,
    ReplicaPlanner,
    choose_backend,
    context_length,
    launch_gpus,
)
from sluice.engines.dialects import LaunchSpec
from sluice.errors import ConfigError, InvalidRequestError, NotFoundError
from sluice.gateway._launched import LAUNCHER, LaunchedFleet
from sluice.gateway._route import ModelRoute
from sluice.gateway.service import GatewayService
from sluice.quota import EstimateCounter, ExactCounter, PromptCounter

log = logging.getLogger("sluice")

MAX_REPLICAS = 64
DRAIN_POLL_S = 0.1
RouteOpener = Callable[[ModelSettings, AsyncExitStack], Awaitable[ModelRoute]]


class ModelLaunch(BaseModel):
    """What ``POST /admin/engines/models`` takes: a name for clients, the model, the backend and a few engine args
    (no free-form flags: the admin API does not run arbitrary command lines)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
    model: str = Field(min_length=1, max_length=1024)  # a model directory (or a hub id); the sim's served name
    backend: Literal["auto", "vllm", "sglang", "lmdeploy", "sim"] = "auto"
    replicas: int = Field(1, ge=1, le=MAX_REPLICAS)
    max_model_len: int | None = Field(None, ge=16, le=10_000_000)
    tensor_parallel: int = Field(1, ge=1, le=64)
    pipeline_parallel: int = Field(1, ge=1, le=64)
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    gpus: str | None = Field(None, max_length=256, pattern=r"^[0-9a-zA-Z,-]*$")  # the GPUs it may take, e.g. "2,3"


State = Literal["starting", "serving", "stopping", "failed"]


@dataclass(eq=False)
class _Started:
    launch: ModelLaunch
    backend: str
    why: str
    launcher: EngineLauncher
    state: State = "starting"
    error: str | None = None
    route: ModelRoute | None = None
    fleet: LaunchedFleet | None = None
    stack: AsyncExitStack = field(default_factory=AsyncExitStack)
    task: asyncio.Task[None] | None = None

    def describe(self) -> dict[str, Any]:
        return {"state": self.state, "backend": self.backend, "backend_reason": self.why, "error": self.error,
                "model_path": self.launch.model, "requested_replicas": self.launch.replicas}


class StartedModels:
    """The models started at run time in this process; ``counters`` and ``context_lengths`` are the pricer's own
    tables (a new model is priced like the configured ones)."""

    def __init__(self, service: GatewayService, open_route: RouteOpener, clock: Clock, settings: ConsoleSettings,
                 counters: MutableMapping[str, PromptCounter],
                 context_lengths: MutableMapping[str, int | None]) -> None:
        self._service = service
        self._open_route = open_route
        self._clock = clock
        self._settings = settings
        self._counters = counters
        self._context_lengths = context_lengths
        self._models: dict[str, _Started] = {}
        self._stopping: set[asyncio.Task[None]] = set()

    def names(self) -> list[str]:
        return list(self._models)

    def describe(self, name: str) -> dict[str, Any] | None:
        started = self._models.get(name)
        return None if started is None else started.describe()

    def fleet(self, name: str) -> LaunchedFleet | None:
        started = self._models.get(name)
        return None if started is None else started.fleet

    def start(self, launch: ModelLaunch) -> dict[str, Any]:
        """Plan the engines now (a bad backend or too few GPUs is refused here), launch them in a task."""
        previous = self._models.get(launch.name)
        if launch.name in self._service.routes or (previous is not None and previous.state != "failed"):
            raise InvalidRequestError(f"A model named {launch.name!r} exists already.", param="name", status=409,
                                      code="model_exists", reason="model_exists")
        choice = choose_backend(launch.model, launch.backend)
        spec = LaunchSpec(model=launch.model, port=0, tp=launch.tensor_parallel, pp=launch.pipeline_parallel,
                          gpu_memory_utilization=launch.gpu_memory_utilization, max_model_len=launch.max_model_len,
                          served_model_name=launch.name, python=self._settings.engine_python or sys.executable)
        gpus = GpuPool(launch_gpus(choice.backend, launch.gpus, os.environ))
        try:
            planner = ReplicaPlanner(choice.backend, spec, gpus)  # type: ignore[arg-type]
            commands = planner.plan(launch.replicas)
        except ConfigError as exc:  # NotEnoughGpus
            raise InvalidRequestError(str(exc), param="gpus", status=409, code="not_enough_gpus",
                                      reason="not_enough_gpus") from exc
        log_dir = Path(self._settings.engine_log_dir) / launch.name.replace("/", "_")  # one directory, never above
        launcher = EngineLauncher(commands, self._clock, log_dir=log_dir,
                                  health_timeout_s=self._settings.engine_timeout_s, warmup_model=launch.name,
                                  planner=planner)
        started = self._models[launch.name] = _Started(launch, choice.backend, choice.why, launcher)
        started.task = asyncio.get_running_loop().create_task(self._bring_up(started, planner.dialect))
        log.info("model %s: starting %d %s replica(s) of %s (%s)", launch.name, launch.replicas, choice.backend,
                 launch.model, choice.why)
        return {"model": launch.name, **started.describe()}

    def stop(self, name: str, drain_timeout_s: float) -> dict[str, Any]:
        """Take the model out of service in a task: no new request, the ones in flight finish, engines stopped."""
        started = self._models.get(name)
        if started is None:
            if name in self._service.routes:
                raise InvalidRequestError(f"Model {name!r} comes from the configuration (or --model), not from "
                                          "the admin API: remove it there.", param="model", status=409,
                                          code="model_in_config", reason="model_in_config")
            raise NotFoundError(f"No model {name!r}.", param="model", code="model_not_found")
        if started.state == "stopping":
            return {"model": name, **started.describe()}
        started.state = "stopping"  # at once: a second stop while this one waits to run is a no-op
        task = asyncio.get_running_loop().create_task(self._take_down(started, drain_timeout_s))
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)
        return {"model": name, **started.describe()}

    async def close(self) -> None:
        """At shutdown: every started model stopped, without waiting for its requests (the server drained them)."""
        for task in list(self._stopping):
            task.cancel()
        for started in list(self._models.values()):
            await self._take_down(started, 0.0)

    async def _bring_up(self, started: _Started, dialect: Dialect) -> None:
        launch = started.launch
        try:
            await started.launcher.start()
            settings = ModelSettings(name=launch.name, max_model_len=launch.max_model_len or (
                context_length(launch.model) if started.backend != "sim" else None),
                engine=EngineSettings(dialect=dialect, urls=[]))
            route = await self._open_route(settings, started.stack)
            started.fleet = LaunchedFleet(started.launcher, route.pool.replicas, self._clock)
            started.stack.push_async_callback(started.fleet.close)
        except asyncio.CancelledError:
            await started.stack.aclose()
            raise
        except Exception as exc:  # noqa: BLE001 - said in GET /admin/engines; the name is free to try again
            started.state, started.error = "failed", f"{type(exc).__name__}: {exc}"
            log.error("model %s: starting its engines failed: %s", launch.name, started.error)
            await started.stack.aclose()
            await started.launcher.stop()
            return
        self._counters[launch.name] = _prompt_counter(launch.model)
        self._context_lengths[launch.name] = settings.context_length
        started.route = route
        self._service.routes = {**self._service.routes, launch.name: route}
        started.state = "serving"
        log.info("model %s: serving (%d replica(s) of %s)", launch.name, len(started.launcher.urls), started.backend)

    async def _take_down(self, started: _Started, drain_timeout_s: float) -> None:
        name = started.launch.name
        started.state = "stopping"
        if started.task is not None and not started.task.done():
            started.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await started.task
        route = started.route
        if route is not None:
            self._service.routes = {n: r for n, r in self._service.routes.items() if n != name}
            deadline = self._clock.now() + drain_timeout_s
            while _in_flight(route) and self._clock.now() < deadline:
                await self._clock.sleep(DRAIN_POLL_S)
            if _in_flight(route):
                log.warning("model %s: %d request(s) still in flight after %.0f s of draining: stopping its "
                            "engines", name, _in_flight(route), drain_timeout_s)
        if started.fleet is not None:
            await started.fleet.close()
        await started.launcher.stop()
        if route is not None:
            route.pool.replicas.sync(LAUNCHER, [])  # its replica rows leave the metrics and snapshots
        await started.stack.aclose()
        self._counters.pop(name, None)
        self._context_lengths.pop(name, None)
        if self._models.get(name) is started:
            del self._models[name]
        log.info("model %s: stopped and removed", name)


def _in_flight(route: ModelRoute) -> int:
    return sum(replica.outstanding for replica in route.pool.replicas.all())


def _prompt_counter(model_path: str) -> PromptCounter:
    """Exact counts where the model's directory has a tokenizer.json, a calibrated estimate otherwise."""
    tokenizer = Path(model_path) / "tokenizer.json"
    if tokenizer.is_file():
        try:
            return ExactCounter.from_file(str(tokenizer))
        except (ConfigError, OSError, ValueError) as exc:
            log.warning("%s could not be read (%s): prompts are estimated", tokenizer, exc)
    return EstimateCounter()
