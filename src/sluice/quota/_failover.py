"""A shared store that may fail: while the state layer says Redis is unavailable, each limit goes its configured way.

``open`` limits fall back to a local store at the limit divided by the number of gateway replicas (so the
replicas together stay near the limit); ``closed`` limits refuse with 503. Whether Redis is up is the state
layer's call (``sluice.state``: a failed or timed-out call marks it down, a probe notices it is back, with no
traffic needed); this store only watches it, reports degraded mode, and never waits on a Redis it knows is down.

Concurrency permits stay counted across the switch, both ways:

- from the moment decisions may go local (an outage, or a hand-over after a lost connection), the local store also
  holds the permits this process took in Redis and has not given back yet (copied in at the switch, not kept there
  per request), so in degraded mode a gateway admits at most its share *including* what it already runs (exact
  with one gateway);
- when Redis is back, before it decides again, every permit this process holds is taken again in Redis (a renew,
  which also restores permits a restarted Redis lost), the ones granted locally under their own id (``/local``):
  a request admitted during the outage still counts once Redis decides again.

Settlements that cannot reach Redis are kept by the Redis store and applied once when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from typing import Literal, Protocol

from sluice.clock import Clock
from sluice.errors import EngineUnavailableError, StateUnavailableError
from sluice.quota._memory import MemoryStore
from sluice.quota._model import Bucket, Decision, Lease, Stretch
from sluice.quota._redis import RedisStore
from sluice.quota._store import until_landed

log = logging.getLogger("sluice.quota")

LOCAL = "/local"  # the id under which a permit granted locally is held in Redis once it is back
Origin = Literal["shared", "local", "handed"]  # granted by Redis; locally; locally, and held in Redis since


class DegradedObserver(Protocol):
    def quota_store_degraded(self, degraded: bool) -> None: ...


class FailoverStore:
    def __init__(self, shared: RedisStore, clock: Clock, *, replicas: int,
                 observer: DegradedObserver | None = None) -> None:
        self.shared = shared
        self.local = MemoryStore(clock, marker_ttl_s=shared.marker_ttl_s)
        self._state = shared.state
        self._replicas = replicas
        self._observer = observer
        self._held: dict[str, tuple[Sequence[Lease], Origin]] = {}  # lease id -> its permits, where granted
        self._handover: asyncio.Task[None] | None = None
        self._reported = False  # degraded, as last reported
        self._state.watch(self._state_changed)

    @property
    def degraded(self) -> bool:
        return not self._state.available or self._handover is not None

    async def acquire(self, buckets: Sequence[Bucket], leases: Sequence[Lease], lease_id: str,
                      stretch: Stretch | None = None) -> Decision:
        if not self.degraded:
            try:
                decision = await self.shared.acquire(buckets, leases, lease_id, stretch)
            except StateUnavailableError:
                pass
            else:
                if decision.allowed and leases:
                    self._held[lease_id] = (leases, "shared")
                    # Degraded while it was on its way (the switch copied what was held then): count it here too.
                    if not self._state.available or self._handover is not None:
                        self.local.hold([self._share_lease(lease) for lease in leases], lease_id)
                return decision
        if any(b.info.on_store_error == "closed" for b in buckets) or any(
                lease.on_store_error == "closed" for lease in leases):
            raise EngineUnavailableError(
                "The shared quota store is unavailable and this limit fails closed; please retry shortly.",
                code="quota_store_unavailable", reason="quota_store_unavailable", headers={"retry-after": "1"})
        decision = self.local.acquire_now([self._share(b) for b in buckets],
                                          [self._share_lease(lease) for lease in leases], lease_id, stretch)
        if decision.allowed and leases:
            self._held[lease_id] = (leases, "local")
        return decision

    def settle_soon(self, buckets: Sequence[Bucket], deltas: Sequence[int], leases: Sequence[Lease],
                    lease_id: str, landed: Callable[[], None]) -> None:
        origin = self._origin(lease_id)
        if origin == "shared":
            self.local.release(leases, lease_id)
            self.shared.settle_soon(buckets, deltas, leases, lease_id, landed)
            return
        self.local.settle_now([self._share(b) for b in buckets], deltas,
                              [self._share_lease(lease) for lease in leases], lease_id)
        if origin == "handed":
            self.shared.settle_soon([], [], leases, lease_id + LOCAL, landed)
        else:
            landed()

    async def settle(self, buckets: Sequence[Bucket], deltas: Sequence[int], leases: Sequence[Lease],
                     lease_id: str) -> None:
        await until_landed(lambda landed: self.settle_soon(buckets, deltas, leases, lease_id, landed))

    async def void(self, buckets: Sequence[Bucket], leases: Sequence[Lease], lease_id: str) -> None:
        origin = self._origin(lease_id)
        if origin == "shared":
            self.local.release(leases, lease_id)
            await self.shared.void(buckets, leases, lease_id)
            return
        await self.local.void([self._share(b) for b in buckets], [self._share_lease(lease) for lease in leases],
                              lease_id)
        if origin == "handed":
            await self.shared.void([], leases, lease_id + LOCAL)

    async def renew(self, leases: Sequence[Lease], lease_id: str) -> None:
        held = self._held.get(lease_id)
        if held is None:
            return  # settled meanwhile (or never granted here): nothing to keep
        if held[1] != "shared" or self.degraded:  # a shared one is in the local store while degraded only
            await self.local.renew([self._share_lease(lease) for lease in leases], lease_id)
        if held[1] == "local" or self.degraded:
            return  # held in Redis by the hand-over, once Redis is back
        # If Redis is down, the lease may expire there; the hand-over takes it again once Redis is back.
        with contextlib.suppress(StateUnavailableError):
            await self.shared.renew(leases, lease_id + LOCAL if held[1] == "handed" else lease_id)

    async def close(self) -> None:
        if self._handover is not None:
            self._handover.cancel()
        await self.shared.close()

    def _origin(self, lease_id: str) -> Origin:
        """Where the decision was granted (and forget it). One without permits is not in ``_held`` (nothing
        might settle it): granted locally if the local store's marker says so."""
        held = self._held.pop(lease_id, None)
        if held is not None:
            return held[1]
        return "local" if self.local.granted(lease_id) else "shared"

    def _state_changed(self, available: bool) -> None:
        """Down: degraded. Back (after an outage, or a lost connection: Redis may have restarted empty): hand over
        the permits in flight, unless a hand-over is on its way already (its renewals are sent after this news)."""
        if available and self._handover is not None:
            return
        self._mirror_shared()
        if self._handover is not None:
            self._handover.cancel()
            self._handover = None
        if available:
            self._handover = asyncio.get_running_loop().create_task(self._hand_over())
        else:
            self._report(True)

    def _mirror_shared(self) -> None:
        """Decisions may go local from now on: the local store counts the permits held in Redis too."""
        for lease_id, (leases, origin) in self._held.items():
            if origin == "shared":
                self.local.hold([self._share_lease(lease) for lease in leases], lease_id)

    async def _hand_over(self) -> None:
        """Take again in Redis every permit this process holds, then decide in Redis again. Decisions stay local
        meanwhile: the permits they grant are handed over too, until a check finds none left (with no await
        between that check and the switch, nothing granted locally can be missed)."""
        handed: set[str] = set()
        while batch := [(lease_id, leases, origin) for lease_id, (leases, origin) in self._held.items()
                        if lease_id not in handed]:
            for lease_id, leases, origin in batch:
                handed.add(lease_id)
                if origin == "local":  # from now on its settlement frees it in Redis too
                    self._held[lease_id] = (leases, "handed")
            results = await asyncio.gather(
                *(self.shared.renew(leases, lease_id if origin == "shared" else lease_id + LOCAL)
                  for lease_id, leases, origin in batch), return_exceptions=True)
            failed = sum(isinstance(r, BaseException) for r in results)
            if failed:
                log.warning("quota: %d of %d permit(s) could not be taken again in the state store",
                            failed, len(batch))
            if not self._state.available:
                return  # down again: the next recovery hands over again
        self._handover = None
        self._report(False, len(handed))

    def _report(self, degraded: bool, handed: int = 0) -> None:
        if degraded == self._reported:
            return
        self._reported = degraded
        if degraded:
            log.warning("quota: degraded mode, limits fail open at 1/%d of their rate or closed", self._replicas)
        else:
            log.warning("quota: degraded mode over (%d permit(s) in flight taken again in the state store)", handed)
        if self._observer:
            self._observer.quota_store_degraded(degraded)

    def _share(self, bucket: Bucket) -> Bucket:
        if self._replicas == 1:
            return bucket
        return dataclasses.replace(bucket, interval_s=bucket.interval_s * self._replicas,
                                   capacity=max(1, math.ceil(bucket.capacity / self._replicas)))

    def _share_lease(self, lease: Lease) -> Lease:
        if self._replicas == 1:
            return lease
        return dataclasses.replace(lease, limit=max(1, math.ceil(lease.limit / self._replicas)))
