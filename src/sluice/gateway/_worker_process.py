"""One worker process of several (``sluice.gateway._workers``): the gateway app on its own SO_REUSEPORT socket, its
own metrics on its unix socket, started by spawning (a fresh interpreter) with a ``WorkerSpec``."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import uvicorn

from sluice.clock import Clock, MonotonicClock
from sluice.config import Settings
from sluice.gateway._asgi import GatewayApp
from sluice.gateway._worker_metrics import WorkerMetrics
from sluice.gateway.app import create_app
from sluice.gateway.server import LISTEN_BACKLOG, STARTUP_FAILURE, gateway_server, reuseport_socket
from sluice.telemetry import limit_repeats

log = logging.getLogger("sluice")

STARTUP_POLL_S = 0.05
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What a worker process is started with (pickled to it)."""

    settings: Settings
    config_path: str | None
    metrics_dir: str
    index: int
    supervisor_pid: int
    prepare: Callable[[], None] | None = None  # run in the worker once its app is built (e.g. the GC tuning)
    # what builds the worker's app from (settings, config_path=...): ``create_app``, or the console's
    # ``create_console_app`` (``sluice serve``); a module-level function, pickled by name
    app_factory: Callable[..., GatewayApp] | None = None


def worker_main(spec: WorkerSpec, ready: Connection) -> None:
    """A worker process: the gateway app on its own SO_REUSEPORT socket, its exposition on its unix socket."""
    _die_with(spec.supervisor_pid)
    logging.basicConfig(level=logging.INFO, format=f"[worker {spec.index}] %(message)s", stream=sys.stderr)
    limiters = limit_repeats(logging.getLogger().handlers, MonotonicClock())  # as one process: twice a minute per kind
    factory: Callable[..., GatewayApp] = spec.app_factory or create_app
    app: Any = factory(spec.settings, config_path=spec.config_path)  # its supervisor announces, once
    app.state.worker_index = spec.index  # said by the console's snapshot: which worker answered
    exposition = WorkerMetrics(Path(spec.metrics_dir), spec.index, app.state.metrics.render)
    app.state.worker_metrics = exposition
    host, port = spec.settings.server.host, spec.settings.server.port
    try:
        sock = reuseport_socket(host, port)
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", host, port, exc.strerror or exc)
        sys.exit(STARTUP_FAILURE)
    server = gateway_server(app, spec.settings.server, app.state.metrics)
    if spec.prepare is not None:
        spec.prepare()
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=server.config.get_loop_factory()) as run:
        try:
            run.run(_serve(server, sock, exposition, ready, MonotonicClock()))
        finally:  # a SIGTERM ends the serving: the pending "repeated N times" lines are written, not lost
            for limiter in limiters:
                limiter.flush()
    sys.exit(0 if server.started else STARTUP_FAILURE)


async def _serve(server: uvicorn.Server, sock: socket.socket, exposition: WorkerMetrics, ready: Connection,
                 clock: Clock) -> None:
    serving = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not server.started and not serving.done():
        await clock.sleep(STARTUP_POLL_S)
    if server.started:
        await exposition.start()
        ready.send(os.getpid())
    try:
        await serving
    finally:
        await exposition.close()


def _die_with(supervisor_pid: int) -> None:
    """Have the kernel SIGTERM this worker when its supervisor dies, even by SIGKILL (Linux): no orphan keeps
    serving the port."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
    if os.getppid() != supervisor_pid:  # the supervisor died before the request above took effect
        sys.exit(0)
