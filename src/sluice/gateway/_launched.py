"""The replicas Sluice launched, as a source of their pool's live replica set and as the fleet an autoscaler
resizes: a replica added joins the set once it is healthy; one removed first leaves the set (it drains: no new
request, its streams finish, for at most ``drain_timeout_s``), then its process is stopped."""

from __future__ import annotations

import logging

from sluice.clock import Clock
from sluice.engines import EngineLauncher, ReplicaSet

log = logging.getLogger("sluice")

LAUNCHER = "launcher"
DRAIN_POLL_S = 0.1


class LaunchedFleet:
    def __init__(self, launcher: EngineLauncher, replicas: ReplicaSet, clock: Clock, *,
                 drain_timeout_s: float = 600.0) -> None:
        self._launcher = launcher
        self._replicas = replicas
        self._clock = clock
        self._drain_timeout_s = drain_timeout_s
        self._leaving: set[str] = set()
        replicas.describe(LAUNCHER, launcher.snapshot)
        self.publish()

    def publish(self) -> None:
        """Tell the set which launched replicas take requests: all but those leaving."""
        self._replicas.sync(LAUNCHER, [u for u in self._launcher.urls if u not in self._leaving])

    def replicas(self) -> int:
        return len([u for u in self._launcher.urls if u not in self._leaving])

    async def add(self) -> str:
        url = await self._launcher.add()
        self.publish()
        return url

    async def remove(self) -> None:
        """Drain the launched replica with the fewest requests in flight, then stop it."""
        candidates = [u for u in self._launcher.urls if u not in self._leaving]
        if not candidates:
            raise RuntimeError("no launched replica left to remove")
        url = min(candidates, key=self._outstanding)
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

    def _outstanding(self, url: str) -> int:
        replica = self._replicas.get(url)
        return 0 if replica is None else replica.outstanding
