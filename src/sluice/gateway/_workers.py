"""Several gateway processes on one port: a supervisor and its workers (``server.workers``, ``--workers``).

The supervisor binds the port first (SO_REUSEPORT, not listening: the port is checked and, if 0, chosen once),
starts the engines ``--model`` asked for (once, before the workers), then spawns N workers (fresh interpreters, no
event loop forked). Each worker binds its own SO_REUSEPORT socket on that port and serves the app built from the same
settings, so the kernel spreads connections over them; limits hold across them through the shared Redis state.
"Listening" is announced once, when every worker has bound the port and started.

SIGTERM or SIGINT to the supervisor: SIGTERM to every worker (each drains as one process does), then the engines are
stopped, and the supervisor exits when all have. A worker that dies on its own is restarted, after 0.5 s, doubling
up to 30 s while it keeps dying young. A worker whose supervisor dies (even by SIGKILL) gets SIGTERM from the kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import tempfile
from collections.abc import Awaitable, Callable, Coroutine
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext, SpawnProcess
from typing import Any, TypeVar

from sluice.clock import Clock, MonotonicClock
from sluice.config import Settings
from sluice.engines import EngineLauncher
from sluice.gateway._asgi import GatewayApp
from sluice.gateway._banner import announce
from sluice.gateway._startup import bind_port
from sluice.gateway._worker_process import WorkerSpec, worker_main
from sluice.gateway.server import STARTUP_FAILURE, reuseport_socket

log = logging.getLogger("sluice")

RESTART_DELAY_S = 0.5
RESTART_DELAY_MAX_S = 30.0
STABLE_AFTER_S = 10.0  # a worker that lived this long restarts after the shortest delay again
STOP_GRACE_S = 30.0  # workers drain (uvicorn's 5 s, then the service's drain); past this they are killed

T = TypeVar("T")


def run_workers(settings: Settings, *, config_path: str | None, launcher: EngineLauncher | None = None,
                prepare: Callable[[], None] | None = None, clock: Clock | None = None,
                app_factory: Callable[..., GatewayApp] | None = None) -> int:
    """Serve ``settings`` with ``settings.server.workers`` processes until SIGTERM/SIGINT; the exit status.
    ``app_factory``: what each worker builds its app with (default ``create_app``; ``sluice serve``: the console's)."""
    server = settings.server
    try:
        if server.port:  # a plain bind first: SO_REUSEPORT alone would share the port with another Sluice's workers
            bind_port(server.host, server.port).close()
        reservation = reuseport_socket(server.host, server.port)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", server.host, server.port, exc.strerror or exc)
        return STARTUP_FAILURE
    with reservation, tempfile.TemporaryDirectory(prefix=f"sluice-workers-{os.getpid()}-") as directory:
        port = int(reservation.getsockname()[1])
        settings = settings.model_copy(update={"server": server.model_copy(update={"port": port})})
        supervisor = Supervisor(settings, config_path=config_path, metrics_dir=directory, launcher=launcher,
                                prepare=prepare, clock=clock or MonotonicClock(), app_factory=app_factory)
        return asyncio.run(supervisor.run())


class Supervisor:
    def __init__(self, settings: Settings, *, config_path: str | None, metrics_dir: str,
                 launcher: EngineLauncher | None, prepare: Callable[[], None] | None, clock: Clock,
                 app_factory: Callable[..., GatewayApp] | None = None) -> None:
        self._settings = settings
        self._config_path = config_path
        self._launcher = launcher
        self._clock = clock
        self._stop = asyncio.Event()
        self._metrics_dir = metrics_dir
        context = multiprocessing.get_context("spawn")
        self._workers = [
            _Worker(WorkerSpec(settings, config_path, metrics_dir, i, os.getpid(), prepare, app_factory), context,
                    clock)
            for i in range(settings.server.workers)
        ]

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        if self._launcher is not None:
            try:
                if await self._unless_stopped(self._launcher.start()) is None:
                    return 0
            except (RuntimeError, TimeoutError, OSError) as exc:
                log.error("engines did not start: %s", exc)
                return STARTUP_FAILURE
        try:
            starting = await self._unless_stopped(self._start_all())
            if starting is None:
                return 0
            if not starting.result():
                return STARTUP_FAILURE
            self._announce()
            keepers = [asyncio.create_task(self._keep_alive(worker)) for worker in self._workers]
            await self._stop.wait()
            for keeper in keepers:
                keeper.cancel()
            await asyncio.gather(*keepers, return_exceptions=True)
            return 0
        finally:
            await self._stop_all()
            if self._launcher is not None:
                await self._launcher.stop()

    async def _unless_stopped(self, work: Coroutine[Any, Any, T]) -> asyncio.Future[T] | None:
        """``work`` run to its end (its result or exception in the future returned), or cancelled and ``None`` if a
        stop signal comes first."""
        task = asyncio.ensure_future(work)
        stopped = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if task.done():
            task.result()  # its exception, if it failed, raised here
            return task
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None

    async def _start_all(self) -> bool:
        for worker in self._workers:
            worker.spawn()
        ready = await asyncio.gather(*(worker.ready() for worker in self._workers))
        for worker, ok in zip(self._workers, ready, strict=True):
            if not ok:
                log.error("worker %d (pid %d) exited with %s while starting", worker.index, worker.pid,
                          worker.exitcode)
        return all(ready)

    def _announce(self) -> None:
        announce(self._settings, self._config_path)
        log.info("Workers: %d processes (pids %s) on one port (SO_REUSEPORT); /metrics merges them all, "
                 "/metrics?worker=self is the one answering; their sockets: %s", len(self._workers),
                 ", ".join(str(w.pid) for w in self._workers), self._metrics_dir)

    async def _keep_alive(self, worker: _Worker) -> None:
        delay_s = RESTART_DELAY_S
        while True:
            code = await worker.exited()
            if self._stop.is_set():
                return
            delay_s = RESTART_DELAY_S if worker.lived_s() >= STABLE_AFTER_S else delay_s
            log.error("worker %d (pid %d) exited with %s; restarting it in %.1f s", worker.index, worker.pid, code,
                      delay_s)
            await self._clock.sleep(delay_s)
            delay_s = min(RESTART_DELAY_MAX_S, delay_s * 2)
            worker.spawn()
            if await worker.ready():
                log.info("worker %d restarted (pid %d)", worker.index, worker.pid)

    async def _stop_all(self) -> None:
        alive = [worker for worker in self._workers if worker.alive]
        if alive:
            log.info("stopping %d worker(s): each finishes the requests it has (SIGTERM)", len(alive))
        for worker in alive:
            worker.send(signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_GRACE_S):
                await asyncio.gather(*(worker.exited() for worker in alive))
        except TimeoutError:
            for worker in alive:
                if worker.alive:
                    log.error("worker %d (pid %d) still running %.0f s after SIGTERM: killed", worker.index,
                              worker.pid, STOP_GRACE_S)
                    worker.send(signal.SIGKILL)
            await asyncio.gather(*(worker.exited() for worker in alive))
        if alive:
            log.info("workers stopped")


class _Worker:
    """One worker index and its current process."""

    def __init__(self, spec: WorkerSpec, context: SpawnContext, clock: Clock) -> None:
        self.spec = spec
        self._context = context
        self._clock = clock
        self._process: SpawnProcess | None = None
        self._ready: Connection | None = None
        self._started_at = 0.0

    @property
    def index(self) -> int:
        return self.spec.index

    @property
    def pid(self) -> int:
        return -1 if self._process is None or self._process.pid is None else self._process.pid

    @property
    def exitcode(self) -> int | None:
        return None if self._process is None else self._process.exitcode

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    def lived_s(self) -> float:
        return self._clock.now() - self._started_at

    def spawn(self) -> None:
        if self._process is not None:  # the previous process, exited and reaped: release its sentinel
            self._process.close()
        reader, writer = self._context.Pipe(duplex=False)
        self._process = self._context.Process(target=worker_main, args=(self.spec, writer),
                                              name=f"sluice-worker-{self.index}")
        self._process.start()
        writer.close()
        self._ready = reader
        self._started_at = self._clock.now()

    async def ready(self) -> bool:
        """True once the process listens on the port and serves; False if it exited first."""
        assert self._ready is not None
        try:
            await _readable(self._ready.fileno())
            self._ready.recv()
            return True
        except EOFError:  # the process closed its end: it exited before it was ready
            await self.exited()
            return False
        finally:
            self._ready.close()

    async def exited(self) -> int | None:
        assert self._process is not None
        await _readable(self._process.sentinel)
        self._process.join()
        return self._process.exitcode

    def send(self, sig: int) -> None:
        if self._process is not None and self._process.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._process.pid, sig)


def _readable(fd: int) -> Awaitable[None]:
    loop = asyncio.get_running_loop()
    readable: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(fd, wake)
    readable.add_done_callback(lambda _: loop.remove_reader(fd))
    return readable
