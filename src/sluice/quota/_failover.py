"""A shared store that may fail: on failure each limit goes its configured way.

``open`` limits fall back to a local store at the limit divided by the number of gateway replicas (so the
replicas together stay near the limit); ``closed`` limits refuse with 503. Degraded mode is logged and reported,
and ends by itself: the shared store is tried again every ``retry_s``, and used as soon as it answers.
Settlements that could not reach the shared store wait (bounded) and are replayed when it is back, so the
accounting of requests admitted before an outage is not lost.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections import deque
from collections.abc import Sequence
from typing import Protocol

from sluice.clock import Clock
from sluice.errors import EngineUnavailableError
from sluice.quota._memory import MemoryStore
from sluice.quota._model import Bucket, Decision, Lease
from sluice.quota._store import QuotaStore

log = logging.getLogger("sluice.quota")

STORE_ERRORS: tuple[type[BaseException], ...] = (OSError, ConnectionError, asyncio.TimeoutError, TimeoutError)
BACKLOG_LIMIT = 10_000

_Settlement = tuple[Sequence[Bucket], Sequence[int], Sequence[Lease], str]


class DegradedObserver(Protocol):
    def quota_store_degraded(self, degraded: bool) -> None: ...


class FailoverStore:
    def __init__(self, shared: QuotaStore, clock: Clock, *, replicas: int, retry_s: float,
                 observer: DegradedObserver | None = None, errors: tuple[type[BaseException], ...] = ()) -> None:
        self.shared = shared
        self.local = MemoryStore(clock)
        self._clock = clock
        self._replicas = replicas
        self._retry_s = retry_s
        self._observer = observer
        self._errors = STORE_ERRORS + errors
        self._down_until: float | None = None  # degraded while set; the shared store is retried after it
        self._granted_locally: set[str] = set()
        self._backlog: deque[_Settlement] = deque(maxlen=BACKLOG_LIMIT)

    @property
    def degraded(self) -> bool:
        return self._down_until is not None

    async def acquire(self, buckets: Sequence[Bucket], leases: Sequence[Lease], lease_id: str) -> Decision:
        if self._shared_usable():
            try:
                decision = await self.shared.acquire(buckets, leases, lease_id)
            except self._errors as exc:
                self._mark_down(exc)
            else:
                self._mark_up()
                return decision
        if any(b.info.on_store_error == "closed" for b in buckets) or any(
                lease.on_store_error == "closed" for lease in leases):
            raise EngineUnavailableError(
                "The shared quota store is unavailable and this limit fails closed; please retry shortly.",
                code="quota_store_unavailable", reason="quota_store_unavailable", headers={"retry-after": "1"})
        decision = self.local.acquire_now([self._share(b) for b in buckets],
                                          [self._share_lease(lease) for lease in leases], lease_id)
        if decision.allowed:
            self._granted_locally.add(lease_id)
        return decision

    async def settle(self, buckets: Sequence[Bucket], deltas: Sequence[int], leases: Sequence[Lease],
                     lease_id: str) -> None:
        if lease_id in self._granted_locally:
            self._granted_locally.discard(lease_id)
            self.local.settle_now([self._share(b) for b in buckets], deltas,
                                  [self._share_lease(lease) for lease in leases], lease_id)
            return
        try:
            await self.shared.settle(buckets, deltas, leases, lease_id)
        except self._errors as exc:
            self._mark_down(exc)
            self._backlog.append((buckets, deltas, leases, lease_id))

    async def renew(self, leases: Sequence[Lease], lease_id: str) -> None:
        if lease_id in self._granted_locally:
            await self.local.renew([self._share_lease(lease) for lease in leases], lease_id)
            return
        try:
            await self.shared.renew(leases, lease_id)
        except self._errors as exc:
            self._mark_down(exc)

    async def close(self) -> None:
        await self.shared.close()

    def _shared_usable(self) -> bool:
        return self._down_until is None or self._clock.now() >= self._down_until

    def _mark_down(self, exc: BaseException) -> None:
        if self._down_until is None:
            log.warning("quota store unavailable (%s: %s): degraded mode, limits fail open at 1/%d or closed",
                        type(exc).__name__, exc, self._replicas)
            if self._observer:
                self._observer.quota_store_degraded(True)
        self._down_until = self._clock.now() + self._retry_s

    def _mark_up(self) -> None:
        if self._down_until is None:
            return
        self._down_until = None
        log.warning("quota store answers again: degraded mode over; replaying %d settlement(s)", len(self._backlog))
        if self._observer:
            self._observer.quota_store_degraded(False)
        if self._backlog:
            backlog, self._backlog = list(self._backlog), deque(maxlen=BACKLOG_LIMIT)
            asyncio.get_running_loop().create_task(self._replay(backlog))

    async def _replay(self, backlog: list[_Settlement]) -> None:
        for buckets, deltas, leases, lease_id in backlog:
            try:
                await self.shared.settle(buckets, deltas, leases, lease_id)
            except self._errors as exc:
                self._mark_down(exc)
                self._backlog.append((buckets, deltas, leases, lease_id))

    def _share(self, bucket: Bucket) -> Bucket:
        if self._replicas == 1:
            return bucket
        return dataclasses.replace(bucket, interval_s=bucket.interval_s * self._replicas,
                                   capacity=max(1, math.ceil(bucket.capacity / self._replicas)))

    def _share_lease(self, lease: Lease) -> Lease:
        if self._replicas == 1:
            return lease
        return dataclasses.replace(lease, limit=max(1, math.ceil(lease.limit / self._replicas)))
