"""The Redis store: every operation is the Lua script lua/quota.lua, run with EVALSHA (reloaded on NOSCRIPT).

The operations issued while one script call is on the wire are sent together in the next call: under load one
round trip carries many decisions (each still atomic and all-or-nothing), which is what keeps a shared store
cheap per request; at low load a decision costs one round trip, as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis.asyncio as aioredis

from sluice.quota._model import Bucket, BucketState, Decision, Lease

_US = 1_000_000


def load_script() -> str:
    return resources.files("sluice.quota").joinpath("lua/quota.lua").read_text()


class RedisStore:
    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._script = client.register_script(load_script())
        self._queue: list[tuple[list[str], list[Any], asyncio.Future[Any]]] = []
        self._in_flight = False

    @classmethod
    def from_url(cls, url: str) -> RedisStore:
        return cls(aioredis.from_url(url, decode_responses=False, health_check_interval=0))

    async def acquire(self, buckets: Sequence[Bucket], leases: Sequence[Lease], lease_id: str) -> Decision:
        keys = [b.key for b in buckets] + [lease.key for lease in leases]
        args: list[Any] = ["A", len(buckets), len(leases), lease_id]
        for b in buckets:
            args += [repr(b.interval_s * _US), b.capacity, b.cost]
        for lease in leases:
            args += [lease.limit, repr(lease.ttl_s * _US)]
        allowed, refused_bucket, refused_lease, retry_us, states = await self._call(keys, args)
        return Decision(
            allowed=bool(allowed),
            states=[BucketState(int(r), float(reset) / _US, float(retry) / _US) for r, reset, retry in states],
            refused_bucket=None if refused_bucket < 0 else int(refused_bucket),
            refused_lease=None if refused_lease < 0 else int(refused_lease),
            retry_after_s=float(retry_us) / _US,
        )

    async def adjust(self, buckets: Sequence[Bucket], deltas: Sequence[int], lease_id: str) -> None:
        args: list[Any] = ["J", len(buckets)]
        for b, delta in zip(buckets, deltas, strict=True):
            args += [repr(b.interval_s * _US), delta]
        await self._call([b.key for b in buckets], args)

    async def release(self, leases: Sequence[Lease], lease_id: str) -> None:
        await self._call([lease.key for lease in leases], ["R", len(leases), lease_id])

    async def renew(self, leases: Sequence[Lease], lease_id: str) -> None:
        args: list[Any] = ["N", len(leases), lease_id] + [repr(lease.ttl_s * _US) for lease in leases]
        await self._call([lease.key for lease in leases], args)

    async def ping(self) -> None:
        await self._client.ping()

    async def close(self) -> None:
        await self._client.aclose()

    async def _call(self, keys: list[str], args: list[Any]) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((keys, args, future))
        if not self._in_flight:
            self._in_flight = True
            asyncio.get_running_loop().create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                keys = [k for item in batch for k in item[0]]
                args = [a for item in batch for a in item[1]]
                try:
                    replies = await self._script(keys=keys, args=args)
                except BaseException as exc:  # noqa: BLE001 - every waiter learns of the failure
                    for _, _, future in batch:
                        if not future.done():
                            future.set_exception(exc if isinstance(exc, Exception) else ConnectionError(str(exc)))
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for (_, _, future), reply in zip(batch, replies, strict=True):
                    if not future.done():
                        future.set_result(reply)
        finally:
            self._in_flight = False
