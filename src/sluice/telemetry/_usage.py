"""Usage per principal per day (requests, tokens in and out), per key, per user and per tenant, kept in the
state store so every gateway replica adds to the same numbers and the admin API can read them.

Increments are summed in memory and written every ``flush_s`` (one round trip per flush, whatever the load), and
at shutdown; a gateway that dies loses at most that last interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Literal, Protocol

from sluice.clock import Clock

log = logging.getLogger("sluice")

UsageScope = Literal["key", "user", "tenant"]
FIELDS = ("requests", "tokens_in", "tokens_out")
RETAIN_DAYS = 400


@dataclass(frozen=True, slots=True)
class Usage:
    requests: int = 0
    tokens_in: int = 0
    tokens_out: int = 0


Counts = dict[str, dict[str, int]]  # store key -> field -> increment


class UsageBackend(Protocol):
    async def add(self, counts: Counts) -> None: ...

    async def get(self, key: str) -> dict[str, int]: ...

    async def close(self) -> None: ...


class MemoryUsage:
    def __init__(self) -> None:
        self._data: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(FIELDS, 0))

    async def add(self, counts: Counts) -> None:
        for key, fields in counts.items():
            for name, n in fields.items():
                self._data[key][name] += n

    async def get(self, key: str) -> dict[str, int]:
        return dict(self._data.get(key, {}))

    async def close(self) -> None:
        return None


class RedisUsage:
    def __init__(self, url: str) -> None:
        import redis.asyncio as aioredis

        self._client = aioredis.from_url(url, decode_responses=True)

    async def add(self, counts: Counts) -> None:
        async with self._client.pipeline(transaction=False) as pipe:
            for key, fields in counts.items():
                for name, n in fields.items():
                    pipe.hincrby(key, name, n)
                pipe.expire(key, RETAIN_DAYS * 86400)
            await pipe.execute()

    async def get(self, key: str) -> dict[str, int]:
        return {k: int(v) for k, v in (await self._client.hgetall(key)).items()}

    async def close(self) -> None:
        await self._client.aclose()


class UsageLedger:
    def __init__(self, backend: UsageBackend, clock: Clock, *, flush_s: float = 1.0, prefix: str = "{sluice}") -> None:
        self._backend = backend
        self._clock = clock
        self._flush_s = flush_s
        self._prefix = prefix
        self._pending: Counts = {}
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def for_state(cls, state_url: str, clock: Clock) -> UsageLedger:
        return cls(MemoryUsage() if state_url.startswith("memory://") else RedisUsage(state_url), clock)

    def add(self, key_id: str, user: str, tenant: str, tokens_in: int, tokens_out: int) -> None:
        day = self.today()
        for scope, ident in (("key", key_id), ("user", user), ("tenant", tenant)):
            fields = self._pending.setdefault(self._key(day, scope, ident), dict.fromkeys(FIELDS, 0))
            fields["requests"] += 1
            fields["tokens_in"] += tokens_in
            fields["tokens_out"] += tokens_out

    async def read(self, scope: UsageScope, ident: str, day: str | None = None) -> Usage:
        await self.flush()
        fields = await self._backend.get(self._key(day or self.today(), scope, ident))
        return Usage(**{name: fields.get(name, 0) for name in FIELDS})

    def today(self) -> str:
        return dt.datetime.fromtimestamp(self._clock.wall(), dt.timezone.utc).date().isoformat()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._flush_forever())

    async def flush(self) -> None:
        if not self._pending:
            return
        counts, self._pending = self._pending, {}
        try:
            await self._backend.add(counts)
        except Exception as exc:  # noqa: BLE001 - keep the counts for the next flush rather than lose them
            log.warning("could not write usage (%s); keeping it for the next flush", exc)
            for key, fields in counts.items():
                mine = self._pending.setdefault(key, dict.fromkeys(FIELDS, 0))
                for name, n in fields.items():
                    mine[name] += n

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
        await self._backend.close()

    async def _flush_forever(self) -> None:
        while True:
            await self._clock.sleep(self._flush_s)
            await self.flush()

    def _key(self, day: str, scope: str, ident: str) -> str:
        return f"{self._prefix}:usage:{day}:{scope}={ident}"
