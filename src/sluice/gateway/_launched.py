"""The replicas Sluice launched, as a source of their pool's live replica set and as the fleet an autoscaler
resizes: a replica added joins the set once it is healthy; one removed first leaves the set (it drains: no new
request, its streams finish, for at most ``drain_timeout_s``), then its process is stopped.

An operator (``/admin/engines``) resizes it too: ``scale_to(n)`` and ``restart(url)`` start the work in a task and
return at once; ``snapshot()`` shows the target, the replicas restarting and the last error. ``log_tail(url)`` reads
the end of a replica's log, found by its URL among the launcher's own replicas (never a path given from outside)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

from sluice.clock import Clock
from sluice.engines import EngineLauncher, ReplicaSet

log = logging.getLogger("sluice")

LAUNCHER = "launcher"
DRAIN_POLL_S = 0.1
LOG_TAIL_MAX_BYTES = 64 * 1024


class LaunchedFleet:
    def __init__(self, launcher: EngineLauncher, replicas: ReplicaSet, clock: Clock, *,
                 drain_timeout_s: float = 600.0) -> None:
        self._launcher = launcher
        self._replicas = replicas
        self._clock = clock
        self._drain_timeout_s = drain_timeout_s
        self._leaving: set[str] = set()
        self._target: int | None = None
        self._scaling: asyncio.Task[None] | None = None
        self._restarting: dict[str, asyncio.Task[None]] = {}
        self._last_error: str | None = None
        replicas.describe(LAUNCHER, launcher.snapshot)
        self.publish()

    def publish(self) -> None:
        """Tell the set which launched replicas take requests: all but those leaving."""
        self._replicas.sync(LAUNCHER, [u for u in self._launcher.urls if u not in self._leaving])

    def replicas(self) -> int:
        return len([u for u in self._launcher.urls if u not in self._leaving])

    def urls(self) -> list[str]:
        return list(self._launcher.urls)

    async def add(self) -> str:
        url = await self._launcher.add()
        self.publish()
        return url

    async def remove(self) -> None:
        """Drain the launched replica with the fewest requests in flight, then stop it."""
        candidates = [u for u in self._launcher.urls if u not in self._leaving and u not in self._restarting]
        if not candidates:
            raise RuntimeError("no launched replica left to remove")
        await self._drain_and_stop(min(candidates, key=self._outstanding))

    @property
    def busy(self) -> bool:
        """A scale or a restart is in progress."""
        return bool(self._restarting) or (self._scaling is not None and not self._scaling.done())

    def scale_to(self, target: int) -> None:
        """Add or remove replicas, one at a time in a task, until ``target`` run; a new target replaces the last."""
        self._target = target
        if self._scaling is None or self._scaling.done():
            self._scaling = self._spawn(self._scale())

    def restart(self, url: str) -> None:
        """Drain the replica at ``url``, stop its process and start a replacement, in a task. ``KeyError`` if no
        launched replica serves ``url``; ``RuntimeError`` if it is leaving or restarting already."""
        url = url.rstrip("/")
        if url not in self._launcher.urls:
            raise KeyError(url)
        if url in self._leaving or url in self._restarting:
            raise RuntimeError(f"{url} is leaving or restarting already")
        self._restarting[url] = self._spawn(self._restart(url))

    def log_tail(self, url: str, lines: int) -> list[str]:
        """The last ``lines`` lines of the log of the launched replica at ``url`` (at most 64 KiB read).
        ``KeyError`` if no launched replica serves ``url``."""
        path = next((str(row["log_path"]) for row in self._launcher.snapshot() if row["url"] == url.rstrip("/")),
                    None)
        if path is None:
            raise KeyError(url)
        try:
            with open(path, "rb") as f:
                f.seek(0, 2)
                size = f.tell()
                f.seek(max(0, size - LOG_TAIL_MAX_BYTES))
                data = f.read(LOG_TAIL_MAX_BYTES)
        except FileNotFoundError:
            return []
        text = data.decode("utf-8", errors="replace").splitlines()
        if size > LOG_TAIL_MAX_BYTES and text:
            text = text[1:]  # the first line read is cut
        return text[-lines:] if lines > 0 else []

    def snapshot(self) -> dict[str, Any]:
        return {"replicas": self.replicas(), "target": self._target,
                "scaling": self._scaling is not None and not self._scaling.done(),
                "restarting": sorted(self._restarting), "leaving": sorted(self._leaving),
                "last_error": self._last_error}

    async def close(self) -> None:
        """Cancel the operator's work in progress (the launcher stops every replica after)."""
        tasks = [t for t in (self._scaling, *self._restarting.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _scale(self) -> None:
        while self._target is not None and self.replicas() != self._target:
            try:
                if self.replicas() < self._target:
                    await self.add()
                else:
                    await self.remove()
            except Exception as exc:  # noqa: BLE001 - shown in the snapshot; the operator decides what next
                self._fail(f"scaling to {self._target} replicas failed: {exc}")
                return
        self._last_error = None

    async def _restart(self, url: str) -> None:
        try:
            await self._drain_and_stop(url)
            await self.add()
        except Exception as exc:  # noqa: BLE001 - shown in the snapshot
            self._fail(f"restarting {url} failed: {exc}")
        finally:
            self._restarting.pop(url, None)

    async def _drain_and_stop(self, url: str) -> None:
        self._leaving.add(url)
        try:
            self.publish()
            deadline = self._clock.now() + self._drain_timeout_s
            while self._replicas.get(url) is not None and self._clock.now() < deadline:
                await self._clock.sleep(DRAIN_POLL_S)
            if self._replicas.get(url) is not None:
                log.warning("launched replica %s still had %d request(s) after %.0f s of draining: stopping it",
                            url, self._outstanding(url), self._drain_timeout_s)
            await self._launcher.remove(url)
        finally:
            self._leaving.discard(url)
            self.publish()

    def _fail(self, message: str) -> None:
        self._last_error = message
        log.error("model %s: %s", self._launcher.model, message)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(work)

    def _outstanding(self, url: str) -> int:
        replica = self._replicas.get(url)
        return 0 if replica is None else replica.outstanding

