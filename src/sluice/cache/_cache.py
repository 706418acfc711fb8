"""The response cache: repeated deterministic requests answered without reaching an engine.

Only non-streamed requests whose answer is determined by their body are cached: ``temperature`` 0, or a ``seed``
(engines that honour seeds answer the same). Entries are per tenant (a tenant never learns what another asked),
keyed by a hash of the model and the canonical request body, and expire after the model's ``ttl_s``. The store is
the state store: memory (a bounded LRU) or Redis (shared by every replica).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any, Protocol

import orjson

from sluice.clock import Clock


class CacheStore(Protocol):
    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl_s: float) -> None: ...

    async def close(self) -> None: ...


class MemoryCache:
    def __init__(self, clock: Clock, max_entries: int = 10_000) -> None:
        self._clock = clock
        self._max = max_entries
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock.now():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[1]

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        self._entries[key] = (self._clock.now() + ttl_s, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    async def close(self) -> None:
        self._entries.clear()


class RedisCache:
    def __init__(self, url: str) -> None:
        import redis.asyncio as aioredis

        self._client = aioredis.from_url(url, decode_responses=False)

    async def get(self, key: str) -> bytes | None:
        return await self._client.get(key)

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        await self._client.set(key, value, px=max(1, int(ttl_s * 1000)))

    async def close(self) -> None:
        await self._client.aclose()


def open_cache(state_url: str, clock: Clock) -> CacheStore:
    return MemoryCache(clock) if state_url.startswith("memory://") else RedisCache(state_url)


def cache_key(model: str, tenant: str, request: Any, prefix: str = "{sluice}") -> str | None:
    """The key of a cacheable request, or None when its answer is not determined by its body."""
    if getattr(request, "stream", False) or getattr(request, "n", 1) != 1:
        return None
    if getattr(request, "temperature", 0) != 0 and getattr(request, "seed", None) is None:
        return None  # sampled: a new answer every time (embeddings have no temperature: deterministic)
    canonical = orjson.dumps(request.model_dump(exclude={"stream", "stream_options", "user"}, exclude_none=True),
                             option=orjson.OPT_SORT_KEYS)
    digest = hashlib.sha256(model.encode() + b"\0" + canonical).hexdigest()
    return f"{prefix}:cache:{tenant}:{digest}"
