"""What the admin API changes at run time, shared by every gateway replica through the state store: keys issued
(stored hashed), keys revoked, tiers' live settings, and engine replicas added or drained (the fleet).

Each replica mirrors it locally (so checking a key costs a dict lookup) and refreshes its mirror every
``refresh_s``: a change made on one replica is in force on all of them within a second. One version number in
the store says whether anything changed, so an idle refresh is one small read. While the state store is
unavailable the mirror stays as it was and changes are refused (503 ``state_unavailable``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from sluice.clock import Clock
from sluice.state import Client, MemoryState, RedisState, State

log = logging.getLogger("sluice")

SNAPSHOT_TIMEOUT_S = 2.0  # a whole directory (every issued key) may take longer than one quota decision


@dataclass(frozen=True, slots=True)
class IssuedKey:
    id: str
    hash: str
    user: str
    tenant: str
    tier: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    version: int
    keys: dict[str, IssuedKey]  # by hash
    revoked: frozenset[str]  # key ids
    tiers: dict[str, dict[str, Any]]  # tier name -> its live record (gateway/_live.py reads it)
    fleet: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # model -> replica URL -> its doc


class DirectoryBackend(Protocol):
    async def version(self) -> int: ...

    async def snapshot(self) -> Snapshot: ...

    async def put_key(self, key: IssuedKey) -> None: ...

    async def revoke(self, key_id: str) -> None: ...

    async def restore(self, key_id: str) -> None: ...

    async def rotate(self, old_hash: str, key: IssuedKey) -> None: ...

    async def put_tier(self, name: str, settings: dict[str, Any]) -> None: ...

    async def drop_tier(self, name: str, expected: dict[str, Any] | None) -> bool: ...

    async def start(self) -> None: ...

    async def put_replica(self, model: str, url: str, doc: dict[str, Any] | None) -> None: ...

    async def close(self) -> None: ...


class MemoryDirectory:
    def __init__(self) -> None:
        self._snapshot = Snapshot(0, {}, frozenset(), {})

    async def version(self) -> int:
        return self._snapshot.version

    async def snapshot(self) -> Snapshot:
        return self._snapshot

    async def put_key(self, key: IssuedKey) -> None:
        s = self._snapshot
        self._snapshot = Snapshot(s.version + 1, {**s.keys, key.hash: key}, s.revoked - {key.id}, s.tiers, s.fleet)

    async def revoke(self, key_id: str) -> None:
        s = self._snapshot
        self._snapshot = Snapshot(s.version + 1, s.keys, s.revoked | {key_id}, s.tiers, s.fleet)

    async def restore(self, key_id: str) -> None:
        s = self._snapshot
        self._snapshot = dataclasses.replace(s, version=s.version + 1, revoked=s.revoked - {key_id})

    async def rotate(self, old_hash: str, key: IssuedKey) -> None:
        s = self._snapshot
        keys = {h: k for h, k in s.keys.items() if h != old_hash} | {key.hash: key}
        self._snapshot = dataclasses.replace(s, version=s.version + 1, keys=keys)

    async def put_tier(self, name: str, settings: dict[str, Any]) -> None:
        s = self._snapshot
        self._snapshot = Snapshot(s.version + 1, s.keys, s.revoked, {**s.tiers, name: settings}, s.fleet)

    async def drop_tier(self, name: str, expected: dict[str, Any] | None) -> bool:
        s = self._snapshot
        if name not in s.tiers or (expected is not None and s.tiers[name] != expected):
            return False
        tiers = {n: doc for n, doc in s.tiers.items() if n != name}
        self._snapshot = dataclasses.replace(s, version=s.version + 1, tiers=tiers)
        return True

    async def start(self) -> None:
        return None  # nothing outlives the process, and the docs say so

    async def put_replica(self, model: str, url: str, doc: dict[str, Any] | None) -> None:
        s = self._snapshot
        replicas = {u: d for u, d in s.fleet.get(model, {}).items() if u != url} | ({url: doc} if doc else {})
        self._snapshot = Snapshot(s.version + 1, s.keys, s.revoked, s.tiers, {**s.fleet, model: replicas})

    async def close(self) -> None:
        return None


# Drop a tier's live record only if it is still the one the caller saw (another gateway may have changed it since).
DROP_TIER_LUA = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] or (ARGV[2] == '' and redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1)
then redis.call('HDEL', KEYS[1], ARGV[1]); redis.call('INCR', KEYS[2]); return 1 end
return 0
"""


class RedisDirectory:
    """The directory in the process's state store. A change while Redis is unavailable raises
    ``StateUnavailableError`` (503): it is refused, never half made. Everything here lives only in Redis: at
    start, and whenever Redis answers again after a lost connection, the state layer checks that Redis persists
    (and warns when it does not: a restart would bring revoked keys back)."""

    def __init__(self, state: RedisState, prefix: str = "{sluice}") -> None:
        self._state = state
        self._persistence_check: asyncio.Task[str | None] | None = None
        self._version, self._keys = f"{prefix}:directory:version", f"{prefix}:directory:keys"
        self._revoked, self._tiers = f"{prefix}:directory:revoked", f"{prefix}:directory:tiers"
        self._fleet = f"{prefix}:directory:fleet"  # "<model> <url>" -> the replica's doc

    async def version(self) -> int:
        return int(await self._state.run(lambda client: client.get(self._version), "key directory read") or 0)

    async def snapshot(self) -> Snapshot:
        async def read(client: Client) -> list[Any]:
            async with client.pipeline(transaction=True) as pipe:
                # Raw commands: in a Redis Cluster transaction, redis-py (8.1) hands the helpers' ``keys=`` to reply
                # parsers that do not take it; the replies are parsed the same way on both clients.
                pipe.execute_command("GET", self._version)
                pipe.execute_command("HGETALL", self._keys)
                pipe.execute_command("SMEMBERS", self._revoked)
                pipe.execute_command("HGETALL", self._tiers)
                pipe.execute_command("HGETALL", self._fleet)
                return await pipe.execute()

        version, keys, revoked, tiers, replicas = await self._state.run(read, "key directory read",
                                                                        timeout_s=SNAPSHOT_TIMEOUT_S)
        fleet: dict[str, dict[str, dict[str, Any]]] = {}
        for where, doc in replicas.items():
            model, url = where.decode().split(" ", 1)
            fleet.setdefault(model, {})[url] = orjson.loads(doc)
        issued = {h.decode(): IssuedKey(**orjson.loads(doc)) for h, doc in keys.items()}
        return Snapshot(int(version or 0), issued, frozenset(r.decode() for r in revoked),
                        {name.decode(): orjson.loads(doc) for name, doc in tiers.items()}, fleet)

    async def put_key(self, key: IssuedKey) -> None:
        doc = orjson.dumps({"id": key.id, "hash": key.hash, "user": key.user, "tenant": key.tenant, "tier": key.tier})
        await self._write(lambda pipe: (pipe.hset(self._keys, key.hash, doc), pipe.srem(self._revoked, key.id)))

    async def revoke(self, key_id: str) -> None:
        await self._write(lambda pipe: pipe.sadd(self._revoked, key_id))

    async def restore(self, key_id: str) -> None:
        await self._write(lambda pipe: pipe.srem(self._revoked, key_id))

    async def rotate(self, old_hash: str, key: IssuedKey) -> None:
        doc = orjson.dumps({"id": key.id, "hash": key.hash, "user": key.user, "tenant": key.tenant, "tier": key.tier})
        await self._write(lambda pipe: (pipe.hdel(self._keys, old_hash), pipe.hset(self._keys, key.hash, doc)))

    async def put_tier(self, name: str, settings: dict[str, Any]) -> None:
        await self._write(lambda pipe: pipe.hset(self._tiers, name, orjson.dumps(settings)))

    async def drop_tier(self, name: str, expected: dict[str, Any] | None) -> bool:
        seen = orjson.dumps(expected) if expected is not None else b""

        async def drop(client: Client) -> int:
            return int(await client.eval(DROP_TIER_LUA, 2, self._tiers, self._version, name, seen))

        return bool(await self._state.run(drop, "key directory write", timeout_s=SNAPSHOT_TIMEOUT_S))

    async def start(self) -> None:
        await self._state.check_persistence()
        self._state.watch(self._on_state)

    def _on_state(self, available: bool) -> None:
        """Redis answers again: it may have restarted with another configuration (or empty): check again."""
        running = self._persistence_check is not None and not self._persistence_check.done()
        if available and not running:
            self._persistence_check = asyncio.get_running_loop().create_task(self._state.check_persistence())

    async def put_replica(self, model: str, url: str, doc: dict[str, Any] | None) -> None:
        where = f"{model} {url}"
        await self._write(lambda pipe: pipe.hset(self._fleet, where, orjson.dumps(doc)) if doc
                          else pipe.hdel(self._fleet, where))

    async def close(self) -> None:
        if self._persistence_check is not None:
            self._persistence_check.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._persistence_check
        # the state store is the process's, closed by its owner

    async def _write(self, change: Callable[[Any], Any]) -> None:
        """One change and a new version, in one transaction (sent again on a fresh connection: both repeat safely)."""
        async def write(client: Client) -> None:
            async with client.pipeline(transaction=True) as pipe:
                change(pipe)
                pipe.incr(self._version)
                await pipe.execute()

        await self._state.run(write, "key directory write", timeout_s=SNAPSHOT_TIMEOUT_S)


class Directory:
    """The local mirror of the shared directory, and the way to change it."""

    def __init__(self, backend: DirectoryBackend, clock: Clock, *, refresh_s: float = 0.25,
                 on_tiers: Callable[[dict[str, dict[str, Any]]], None] | None = None,
                 on_fleet: Callable[[dict[str, dict[str, dict[str, Any]]]], None] | None = None) -> None:
        self.backend = backend
        self._clock = clock
        self._refresh_s = refresh_s
        self._on_tiers = on_tiers
        self._on_fleet = on_fleet
        self.snapshot = Snapshot(-1, {}, frozenset(), {})
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def for_state(cls, state: State, clock: Clock, **kwargs: Any) -> Directory:
        backend = MemoryDirectory() if isinstance(state, MemoryState) else RedisDirectory(state)
        return cls(backend, clock, **kwargs)

    def issued(self, key_hash: str) -> IssuedKey | None:
        return self.snapshot.keys.get(key_hash)

    def is_revoked(self, key_id: str) -> bool:
        return key_id in self.snapshot.revoked

    async def start(self) -> None:
        await self.backend.start()
        await self.refresh()
        self._task = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def refresh(self) -> None:
        if await self.backend.version() == self.snapshot.version:
            return
        previous = self.snapshot
        self.snapshot = await self.backend.snapshot()
        if self.snapshot.tiers != previous.tiers and self._on_tiers is not None:
            self._on_tiers(self.snapshot.tiers)
        if self.snapshot.fleet != previous.fleet and self._on_fleet is not None:
            self._on_fleet(self.snapshot.fleet)

    async def put_key(self, key: IssuedKey) -> None:
        await self.backend.put_key(key)
        await self.refresh()

    async def revoke(self, key_id: str) -> None:
        await self.backend.revoke(key_id)
        await self.refresh()

    async def restore(self, key_id: str) -> None:
        """Un-revoke a key: accepted again on every replica within a second."""
        await self.backend.restore(key_id)
        await self.refresh()

    async def rotate(self, old: IssuedKey, key_hash: str) -> IssuedKey:
        """Give an issued key a new secret (same id, user, tenant, tier): the old secret stops working at once."""
        new = dataclasses.replace(old, hash=key_hash)
        await self.backend.rotate(old.hash, new)
        await self.refresh()
        return new

    async def put_tier(self, name: str, settings: dict[str, Any]) -> None:
        await self.backend.put_tier(name, settings)
        await self.refresh()

    async def drop_tier(self, name: str, expected: dict[str, Any] | None = None) -> bool:
        """Remove a tier's live record (only if it is still ``expected``, when given); True if it was removed."""
        dropped = await self.backend.drop_tier(name, expected)
        await self.refresh()
        return dropped

    def replica(self, model: str, url: str) -> dict[str, Any]:
        """What the admin API said of one replica: ``{"added": bool, "weight": float, "cordoned": bool}``."""
        return {"added": False, "weight": 1.0, "cordoned": False, **self.snapshot.fleet.get(model, {}).get(url, {})}

    async def put_replica(self, model: str, url: str, doc: dict[str, Any]) -> None:
        """Record what the admin API says of one replica (a doc saying nothing is removed)."""
        await self.backend.put_replica(model, url, doc if doc.get("added") or doc.get("cordoned") else None)
        await self.refresh()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.backend.close()

    async def _refresh_forever(self) -> None:
        failing = False
        while True:
            await self._clock.sleep(self._refresh_s)
            try:
                await self.refresh()
            except Exception as exc:  # noqa: BLE001 - keep the last mirror; try again next time
                if not failing:  # once until a refresh succeeds again, not four times a second
                    log.warning("could not refresh the key directory (%s): keeping the last copy", exc)
                failing = True
            else:
                failing = False
