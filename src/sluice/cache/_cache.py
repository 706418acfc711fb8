"""The response cache: repeated deterministic requests answered without reaching an engine.

Only non-streamed requests whose answer is determined by their body are cached: ``temperature`` 0, or a ``seed``
(engines that honour seeds answer the same). Entries are per tenant (a tenant never learns what another asked),
keyed by a hash of the model and the canonical request body, and expire after the model's ``ttl_s``. The store is
the state store: memory (a bounded LRU) or Redis (shared by every replica; while it is unavailable a read is a
miss and a write is skipped, so a cacheable request is served as any other).
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from typing import Any, Protocol, cast

import orjson

from sluice.clock import Clock, MonotonicClock
from sluice.errors import StateUnavailableError
from sluice.state import Client, MemoryState, RedisState, State

log = logging.getLogger("sluice.cache")

STANDALONE_TIMEOUT_S = 1.0


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
    """The cache in the process's state store (``sluice.state``). It degrades like quota does: while Redis is
    unavailable a read is a miss and a write is skipped, at once (logged once per outage, not per request)."""

    def __init__(self, state: RedisState | str) -> None:
        self._owns_state = isinstance(state, str)  # a URL: a client of its own (tools, tests)
        if isinstance(state, str):
            state = RedisState.from_url(state, MonotonicClock(), timeout_s=STANDALONE_TIMEOUT_S, retry_s=1.0)
        self._state = state
        self._logged_outage = 0

    async def get(self, key: str) -> bytes | None:
        async def read(client: Client) -> bytes | None:
            return cast("bytes | None", await client.get(key))  # the client answers bytes (decode_responses off)

        try:
            found = await self._state.run(read, "cache read")
        except StateUnavailableError as exc:
            self._log_once(exc)
            return None
        return found

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        try:
            await self._state.run(lambda client: client.set(key, value, px=max(1, int(ttl_s * 1000))), "cache write")
        except StateUnavailableError as exc:
            self._log_once(exc)

    async def close(self) -> None:
        if self._owns_state:
            await self._state.close()

    def _log_once(self, exc: StateUnavailableError) -> None:
        if self._logged_outage != self._state.outages:
            self._logged_outage = self._state.outages
            log.warning("response cache unavailable (%s): requests are answered as misses until the state store "
                        "is back", exc.message)


def open_cache(state: State, clock: Clock) -> CacheStore:
    return MemoryCache(clock) if isinstance(state, MemoryState) else RedisCache(state)


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
