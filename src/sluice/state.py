"""The state store of one process: ``memory://`` (nothing shared) or one Redis client, shared by quota, the
response cache, usage accounting and the key directory.

One client means one connection pool, one account of Redis' health and one translation of its errors:

- every Redis, OS and timeout error of a call is translated here, once, into ``StateUnavailableError`` (503,
  ``state_unavailable``); callers decide what it means for them (quota falls back to local limits, the cache
  answers a miss, an admin write answers 503);
- a call that cannot reach Redis, or gets no answer within ``timeout_s``, marks it down. While it is down, calls
  fail at once, without waiting for a timeout each, and a probe PINGs every ``retry_s``: when Redis answers, the
  layer is up again and tells its watchers, with no traffic needed (the degraded gauge goes back to 0 by itself);
- a connection error drops every idle pooled connection at once (after a Redis restart each one would otherwise
  fail once, one by one, each time sending the gateway back to degraded mode), and an idempotent call is tried
  once more, on a fresh connection, before Redis counts as down.

A Redis Cluster (``redis+cluster://host:port[,host:port...]``, ``rediss+cluster://`` with TLS) goes through the same
layer with a ``RedisCluster`` client: it routes each command by its keys' slot (every Sluice key carries the hash
tag ``{sluice}``, so a decision, a transaction or a pipeline stays on one slot) and follows MOVED/ASK itself. A
failover is followed too: a lost connection makes the client fetch the slot map again before the retry, and while
the cluster is down the probe fetches it from a node that answers, then PINGs every master in it (each must say
``cluster_state:ok``), so the layer is up again once a replica has taken over, and its calls land on the new master.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from sluice.clock import Clock
from sluice.config import QuotaSettings
from sluice.errors import StateUnavailableError

log = logging.getLogger("sluice.state")

T = TypeVar("T")
Watcher = Callable[[bool], None]
Client = aioredis.Redis | RedisCluster  # what a call run by the state layer is given

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}  # a cluster URL, and its plain scheme
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (redis.exceptions.ConnectionError, OSError)
# A cluster that no node can give a slot map for (RedisClusterException), or that says it is down (CLUSTERDOWN:
# a master lost and no replica promoted yet), is down like a Redis that does not answer.
DOWN_ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, TimeoutError, redis.exceptions.TimeoutError,
                                                redis.exceptions.ClusterDownError,
                                                redis.exceptions.RedisClusterException)
STATE_ERRORS: tuple[type[BaseException], ...] = (redis.exceptions.RedisError, redis.exceptions.RedisClusterException,
                                                 OSError, TimeoutError)
# Opening a connection (TCP, then redis-py's handshake) is not a store call: it gets this long, whatever the store
# timeout (a fresh connection on a CPU-starved gateway, e.g. at startup, must not count as Redis being down).
CONNECT_S = 1.0


class StoreDeadline:
    """``async with StoreDeadline(0.02): await call()``: raises ``TimeoutError`` when the call is not answered in
    time, counting only time in which the gateway could have read the answer.

    ``asyncio.timeout`` fires when the event loop reaches its timer. On a gateway whose loop is saturated (a burst
    of requests, a long callback), the loop may reach the timer well after the deadline while the store's answer
    has been sitting unread in the socket: a healthy Redis would count as slow, and the gateway would drop to
    degraded mode exactly at its peak load. So a timer that fires late, by more than ``LATE_FRACTION`` of the
    timeout, proves the loop was busy, not that the store was slow: it is re-armed for another timeout (at most
    ``MAX_EXTENSIONS`` times). A timer that fires on time cancels the call, which then raises ``TimeoutError``.
    """

    LATE_FRACTION = 0.5
    MAX_EXTENSIONS = 4

    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._task: asyncio.Task[object] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._extensions = 0
        self._expired = False
        self._token: contextvars.Token[StoreDeadline | None] | None = None

    @property
    def extensions(self) -> int:
        """How many times a late timer was re-armed (the loop was busy at the deadline)."""
        return self._extensions

    async def __aenter__(self) -> StoreDeadline:
        loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._arm(loop, loop.time() + self._timeout_s)
        self._token = _CURRENT_DEADLINE.set(self)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._token is not None:
            _CURRENT_DEADLINE.reset(self._token)
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._expired and exc_type is asyncio.CancelledError and self._task is not None \
                and self._task.uncancel() == 0:
            raise TimeoutError from exc

    @contextlib.asynccontextmanager
    async def connecting(self, budget_s: float) -> AsyncIterator[None]:
        """Opening a connection is not the call: it gets ``budget_s`` of its own (a plain timer), and the call's
        time left is what it was when the connection began."""
        loop = asyncio.get_running_loop()
        if self._handle is None:  # expired already: the cancellation is on its way
            yield
            return
        self._handle.cancel()
        left_s = max(0.0, self._deadline - loop.time())
        self._handle = loop.call_at(loop.time() + budget_s, self._expire_now)
        try:
            yield
        finally:
            if self._handle is not None:
                self._handle.cancel()
                self._arm(loop, loop.time() + left_s)

    def _expire_now(self) -> None:
        self._handle = None
        self._expired = True
        if self._task is not None:
            self._task.cancel()

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        self._deadline = when
        self._handle = loop.call_at(when, self._expire, loop)

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._handle = None
        if busy_loop_late(loop.time() - self._deadline, self._timeout_s, self._extensions):
            self._extensions += 1
            self._arm(loop, loop.time() + self._timeout_s)
            return
        self._expired = True
        if self._task is not None:
            self._task.cancel()


def busy_loop_late(late_s: float, timeout_s: float, extensions: int) -> bool:
    """Whether a deadline's timer, run ``late_s`` after the deadline, proves the loop was busy rather than the store
    slow (``StoreDeadline``): the deadline is then extended by another timeout, at most ``MAX_EXTENSIONS`` times."""
    return late_s > StoreDeadline.LATE_FRACTION * timeout_s and extensions < StoreDeadline.MAX_EXTENSIONS


_CURRENT_DEADLINE: contextvars.ContextVar[StoreDeadline | None] = contextvars.ContextVar("sluice_store_deadline",
                                                                                       default=None)


class _ConnectsOutsideTheDeadline:
    """Mixed into the pool's connection class: a connection opened during a call (TCP, then redis-py's handshake)
    has ``CONNECT_S`` of its own instead of eating the call's store timeout."""

    async def connect(self) -> None:
        deadline = _CURRENT_DEADLINE.get()
        if deadline is None or self.is_connected:  # type: ignore[attr-defined]
            await super().connect()  # type: ignore[misc]
            return
        async with deadline.connecting(CONNECT_S):
            await super().connect()  # type: ignore[misc]


def is_cluster_url(url: str) -> bool:
    return url.partition("://")[0] in CLUSTER_SCHEMES


def _open_client(url: str) -> Client:
    """The client retries nothing itself (this layer decides what may be retried) and has no socket timeouts of its
    own (every call here has a deadline)."""
    if is_cluster_url(url):
        return _open_cluster(url)
    client = aioredis.from_url(url, decode_responses=False, health_check_interval=0, retry=Retry(NoBackoff(), 0),
                               socket_connect_timeout=CONNECT_S, socket_timeout=None)  # redis-py 8's default is 5 s,
    # which sends every command through asyncio.wait_for: ~100 µs of CPU per quota call for a deadline we already set
    pool = client.connection_pool
    base = pool.connection_class
    pool.connection_class = type(base.__name__, (_ConnectsOutsideTheDeadline, base), {})
    return client


def _open_cluster(url: str) -> RedisCluster:
    """``redis+cluster://[user:password@]host:port[,host:port...][?option=value]``: every listed node is a seed
    (one that answers is enough); options, user, password and TLS (``rediss+cluster://``) as in a plain URL."""
    scheme, netloc, _, query, _ = urlsplit(url)
    auth, _, hosts = netloc.rpartition("@")
    seeds = [_host_port(h) for h in hosts.split(",") if h.strip()]
    if not seeds:
        raise ValueError(f"a cluster URL names at least one host:port ({scheme}://host:port[,host:port...])")
    first = hosts.split(",")[0]
    plain = urlunsplit((CLUSTER_SCHEMES[scheme], f"{auth}@{first}" if auth else first, "", query, ""))
    options: dict[str, Any] = dict(parse_url(plain))  # user, password, options: as a plain URL's
    for name in ("host", "port", "db", "path"):
        options.pop(name, None)
    options["ssl"] = options.pop("connection_class", None) is not None  # rediss: parse_url names SSLConnection
    defaults: dict[str, Any] = {"decode_responses": False, "health_check_interval": 0,
                                "retry": Retry(NoBackoff(), 0), "socket_connect_timeout": CONNECT_S,
                                "socket_timeout": None}
    client = RedisCluster(startup_nodes=[ClusterNode(host, port) for host, port in seeds],
                          **{**defaults, **options})  # as with a plain URL, its query options win
    base = client.connection_kwargs["connection_class"]
    wrapped = type(base.__name__, (_ConnectsOutsideTheDeadline, base), {})
    client.connection_kwargs["connection_class"] = wrapped  # the nodes found later (the slot map) get it from here
    for node in client.nodes_manager.startup_nodes.values():
        node.connection_class = wrapped
    return client


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.strip().rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"a cluster node is host:port, not {text!r}")
    return host.strip("[]"), int(port)


class MemoryState:
    """``memory://``: this process's own state; never unavailable."""

    available = True
    outages = 0

    def watch(self, watcher: Watcher) -> None:
        return None

    async def close(self) -> None:
        return None


class RedisState:
    """One Redis client (one connection pool) for the process, and the one judge of whether Redis is up."""

    def __init__(self, client: Client, clock: Clock, *, timeout_s: float, retry_s: float) -> None:
        self.client = client
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self._clock = clock
        self._up = asyncio.Event()
        self._up.set()
        self._down_since = 0.0
        self.outages = 0  # times Redis went down: a caller that logs once per outage compares it
        self._watchers: list[Watcher] = []
        self._probe: asyncio.Task[None] | None = None

    @classmethod
    def from_url(cls, url: str, clock: Clock, *, timeout_s: float, retry_s: float) -> RedisState:
        return cls(_open_client(url), clock, timeout_s=timeout_s, retry_s=retry_s)

    @property
    def available(self) -> bool:
        return self._up.is_set()

    def watch(self, watcher: Watcher) -> None:
        """Call ``watcher(False)`` when Redis goes down, and ``watcher(True)`` when it answers again after an outage
        or after a lost connection (either way it may have restarted empty: a watcher takes again what it holds)."""
        self._watchers.append(watcher)

    async def until_available(self) -> None:
        await self._up.wait()

    async def run(self, call: Callable[[Client], Awaitable[T]], what: str, *, idempotent: bool = True,
                  timeout_s: float | None = None) -> T:
        """``await call(client)`` within the store timeout, its errors translated. Refused at once while Redis is
        down. After a connection error the idle pool is dropped and an ``idempotent`` call is tried once more."""
        if not self.available:
            raise self.refusal(what)
        budget_s = timeout_s or self.timeout_s
        try:
            try:
                async with StoreDeadline(budget_s):
                    return await call(self.client)
            except CONNECTION_ERRORS as exc:
                if not idempotent or isinstance(exc, TimeoutError):  # TimeoutError is an OSError: not a lost link
                    raise
                await self.drop_idle_connections()
                async with StoreDeadline(budget_s):
                    result = await call(self.client)
                self.reconnected()
                return result
        except STATE_ERRORS as exc:
            raise self.failed(exc, what) from exc

    def reconnected(self) -> None:
        """A call that lost its connection was answered on a fresh one: Redis may have restarted, and forgotten
        what the watchers hold."""
        self._tell(True)

    def failed(self, exc: BaseException, what: str) -> StateUnavailableError:
        """The translation of a failed call (to raise ``from exc``). A connection error or a timeout marks Redis
        down; an error Redis answered (e.g. OOM) fails only this call."""
        if isinstance(exc, DOWN_ERRORS):
            self._mark_down(exc)
        return StateUnavailableError(f"The shared state store did not answer ({what}); please retry shortly.",
                                     headers={"retry-after": str(max(1, round(self.retry_s)))})

    def refusal(self, what: str) -> StateUnavailableError:
        return StateUnavailableError(f"The shared state store is unavailable ({what}); please retry shortly.",
                                     headers={"retry-after": str(max(1, round(self.retry_s)))})

    async def check_persistence(self) -> str | None:
        """Ask Redis whether it keeps its data across a restart (``CONFIG GET appendonly`` and ``save``), and log
        what it says: a warning when nothing persists (a restart forgets every key revoked or issued through the
        admin API), or when it cannot tell (CONFIG renamed or denied by an ACL). Returns what persists ("AOF",
        "RDB snapshots"), or None. Never raises: the gateway runs either way."""
        try:
            nodes = await self.run(_persistence_of_every_master, "persistence check")
        except StateUnavailableError as exc:
            cause = exc.__cause__ if exc.__cause__ is not None else exc
            log.warning("could not check whether the state store persists (%s: %s): make sure it does (AOF "
                        "recommended), or a Redis restart brings revoked keys back and forgets issued ones",
                        type(cause).__name__, cause)
            return None
        missing = [node for node, kind in nodes.items() if kind is None]
        if missing:
            log.warning("the state store does not persist (appendonly no, save \"\" on %s): a Redis restart forgets "
                        "every key issued, revoked or rotated and every tier changed through the admin API (a revoked "
                        "key works again). Turn on AOF (appendonly yes)", ", ".join(missing))
            return None
        kinds = sorted({kind for kind in nodes.values() if kind is not None})
        log.info("the state store persists (%s)%s", ", ".join(kinds),
                 "" if "AOF" in kinds else ": changes since the last snapshot are lost on a crash (AOF recommended)")
        return kinds[0] if len(kinds) == 1 else ", ".join(kinds)

    async def drop_idle_connections(self) -> None:
        """Disconnect every idle pooled connection: the next calls open fresh ones (in-use ones fail on their own,
        and redis-py drops each that fails). On a cluster, also fetch the slot map again (within the store
        timeout): a master that lost its connections may have been replaced by its replica."""
        with contextlib.suppress(*STATE_ERRORS):
            if isinstance(self.client, RedisCluster):
                for node in self.client.get_nodes():
                    await node.disconnect_free_connections()
                async with StoreDeadline(self.timeout_s):
                    await self.client.nodes_manager.initialize()
            else:
                await self.client.connection_pool.disconnect(inuse_connections=False)

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
            self._probe = None
        await self.client.aclose()

    def _mark_down(self, exc: BaseException) -> None:
        if not self.available:
            return
        self._up.clear()
        self.outages += 1
        self._down_since = self._clock.now()
        log.warning("state store unavailable (%s: %s): calls fail at once until it answers a PING again "
                    "(tried every %.3g s)", type(exc).__name__, exc, self.retry_s)
        self._tell(False)
        self._probe = asyncio.get_running_loop().create_task(self._probe_until_up())

    async def _probe_until_up(self) -> None:
        await self.drop_idle_connections()
        while True:
            await self._clock.sleep(self.retry_s)
            try:
                async with StoreDeadline(self.timeout_s):
                    await self._ping()
            except STATE_ERRORS:
                continue
            break
        self._probe = None
        self._up.set()
        log.warning("state store answers again after %.1f s", self._clock.now() - self._down_since)
        self._tell(True)

    async def _ping(self) -> None:
        """PING Redis; on a cluster, every master of a slot map fetched again (from a node that answers: a failover
        may have moved slots to a promoted replica), each saying the cluster is ok."""
        if not isinstance(self.client, RedisCluster):
            await self.client.ping()
            return
        await self.client.nodes_manager.initialize()
        masters = self.client.get_primaries()
        infos = await asyncio.gather(*(node.execute_command("CLUSTER INFO") for node in masters))
        for node, info in zip(masters, infos, strict=True):
            if _cluster_state(info) != "ok":
                raise redis.exceptions.ClusterDownError(f"{node.name} says the cluster is {_cluster_state(info)}")

    def _tell(self, available: bool) -> None:
        for watcher in self._watchers:
            try:
                watcher(available)
            except Exception:  # noqa: BLE001 - one watcher's bug must not keep the others uninformed
                log.exception("a state watcher failed")


State = MemoryState | RedisState


async def _persistence_of_every_master(client: Client) -> dict[str, str | None]:
    """For each Redis (each master of a cluster): "AOF", "RDB snapshots" or None (nothing persists)."""
    nodes = client.get_primaries() if isinstance(client, RedisCluster) else [client]
    found: dict[str, str | None] = {}
    for node in nodes:
        name = node.name if isinstance(node, ClusterNode) else "redis"
        appendonly = _config_value(await node.execute_command("CONFIG", "GET", "appendonly"))
        save = _config_value(await node.execute_command("CONFIG", "GET", "save"))
        found[name] = "AOF" if appendonly == "yes" else "RDB snapshots" if save.strip() else None
    return found


def _config_value(reply: Any) -> str:
    """The value of a one-name ``CONFIG GET`` reply (a dict when redis-py parsed it, else [name, value])."""
    values = list(reply.values()) if isinstance(reply, dict) else list(reply)[1::2]
    value = values[0] if values else b""
    return value.decode() if isinstance(value, bytes) else str(value)


def _cluster_state(info: Any) -> str:
    """``cluster_state`` of a CLUSTER INFO answer (parsed into a dict by redis-py, or raw)."""
    if isinstance(info, dict):
        return str(info.get("cluster_state", "unknown"))
    text = info.decode() if isinstance(info, bytes) else str(info)
    return next((line.partition(":")[2].strip() for line in text.splitlines() if line.startswith("cluster_state:")),
                "unknown")


def open_state(url: str, quota: QuotaSettings, clock: Clock) -> State:
    """The process's state store for the ``state`` setting (memory://, a redis:// URL or a redis+cluster:// one)."""
    if url.startswith("memory://"):
        return MemoryState()
    return RedisState.from_url(url, clock, timeout_s=quota.store_timeout_s, retry_s=quota.store_retry_s)
