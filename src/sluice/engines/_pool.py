"""A pool of replicas serving one model, reached through one pooled HTTP client.

The router orders the replicas; replicas whose circuit is open are skipped; a connect error or an engine's
"overloaded" answer (429/503) moves on to the next replica, since nothing has reached the client yet. Active
health checks probe every replica. The replicas are the pool's live ``ReplicaSet``: a replica added is tried by
the next request, a draining one gets no new request and leaves when its last answer is closed. The upstream
client is our own (engines/_http_client.py: keep-alive HTTP/1.1 on asyncio protocols and httptools), measured
against aiohttp and httpx as a proxy client in ``python -m bench.upstream_client``.

A request holds one of the pool's ``max_connections`` slots (``ConnectionSlots``) from the moment it is sent
until its answer is read or closed; the slots, not the client (which does not cap its connections), bound the
connections, so a request that cannot have one is refused in bounded time. Health probes are not counted: one
per replica at a time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from sluice.clock import Clock, MonotonicClock
from sluice.engines._breaker import BreakerState
from sluice.engines._errors import engine_error
from sluice.engines._http_client import HttpResponse, UpstreamClient
from sluice.engines._http_connection import UpstreamBodyError, UpstreamConnectError, UpstreamHttpError
from sluice.engines._replica import Replica
from sluice.engines._replica_set import ReplicaSet
from sluice.engines._routing import Router
from sluice.engines._slots import ConnectionSlots
from sluice.engines.dialects import dialect_for
from sluice.errors import EngineUnavailableError, SluiceError

log = logging.getLogger("sluice")

PROBE_TIMEOUT_S = 2.0


@dataclass
class UpstreamResponse:
    """An engine's successful answer, not yet read. Whoever receives it must ``close()`` it."""

    replica: Replica
    status: int
    content_type: str
    _resp: HttpResponse = field(repr=False)
    _slots: ConnectionSlots = field(repr=False)
    _replicas: ReplicaSet = field(repr=False)
    _closed: bool = False

    async def read(self) -> bytes:
        """The whole body; the answer is closed after. An engine that dies mid-answer raises
        ``EngineUnavailableError`` (reason ``engine_died``)."""
        try:
            return await self._resp.read()
        except (UpstreamBodyError, TimeoutError) as exc:
            raise _engine_died(self.replica, exc) from exc
        finally:
            self.close()

    async def next_chunk(self) -> bytes | None:
        """The body received so far (what came since the last call, never buffered whole), None at its end. An
        engine that dies mid-answer raises ``EngineUnavailableError`` (reason ``engine_died``), not the HTTP
        client's own exception; an answer the gateway closed (the gate stopped its request), before or while it
        is read, raises ``EngineUnavailableError`` (reason ``upstream_closed``)."""
        if self._closed:
            raise _closed()
        try:
            return await self._resp.next_chunk()
        except (UpstreamBodyError, TimeoutError) as exc:
            if self._closed:
                raise _closed() from exc
            raise _engine_died(self.replica, exc) from exc

    def close(self) -> None:
        """Release the replica and the pool's slot. A body not read to the end closes the connection, which
        aborts the request."""
        if not self._closed:
            self._closed = True
            self._replicas.release(self.replica)
            self._resp.close()
            self._slots.release()


class EnginePool:
    def __init__(
        self,
        replicas: Sequence[Replica] | ReplicaSet,
        *,
        router: Router | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 600.0,
        max_connections: int = 1024,
        connection_wait_s: float = 1.0,
        clock: Clock | None = None,
    ) -> None:
        self.replicas = replicas if isinstance(replicas, ReplicaSet) else ReplicaSet.of(replicas)
        self.router = router or Router(self.replicas)
        self.connections = ConnectionSlots(max_connections, connection_wait_s, clock or MonotonicClock())
        self._health_task: asyncio.Task[None] | None = None
        self.client = UpstreamClient(connect_timeout_s=connect_timeout_s, read_timeout_s=read_timeout_s)

    @property
    def max_connections(self) -> int:
        """Requests the pool may have at its engines at once: the most any admission window may hold."""
        return self.connections.capacity

    async def post(self, path: str, body: bytes, headers: Mapping[str, str],
                   affinity: str | None = None, prefer: Replica | None = None) -> UpstreamResponse:
        """Send ``body`` to the best replica that takes it; raise the translated error if none does. ``prefer``
        (the replica whose KV cache holds the request's prefix, for a resumed stream) is tried first. It needs
        one of the pool's connection slots, for at most ``connection_wait_s`` (else 503 ``upstream_saturated``);
        the answer holds it until closed."""
        if not any(r.breaker.allows() for r in self.replicas.routable()):
            raise _all_failing(bool(self.replicas.routable()))  # at once: no point waiting for a connection
        await self.connections.acquire()
        try:
            return await self._send(path, body, headers, affinity, prefer)
        except BaseException:
            self.connections.release()
            raise

    async def _send(self, path: str, body: bytes, headers: Mapping[str, str], affinity: str | None,
                    prefer: Replica | None) -> UpstreamResponse:
        usable = [r for r in self.replicas.routable() if r.breaker.allows()]
        if not usable:
            raise _all_failing(bool(self.replicas.routable()))
        unreachable = ""  # what the last unreachable replica raised, as text: the exception would hold this frame
        overloaded: SluiceError | None = None
        order = self.router.order(usable, affinity)
        if prefer is not None and prefer in order:
            order.remove(prefer)
            order.insert(0, prefer)
        for replica in order:
            replica.breaker.on_send()
            replica.outstanding += 1
            try:
                resp = await self.client.request("POST", replica.url, path, body, headers)
            except (TimeoutError, UpstreamConnectError) as exc:
                self.replicas.release(replica)
                replica.breaker.on_failure()
                unreachable = f"{replica.url}: {type(exc).__name__}: {exc}"
                continue
            except BaseException:
                self.replicas.release(replica)
                replica.breaker.on_abandon()
                raise
            if resp.status < 400:
                replica.breaker.on_success()
                return UpstreamResponse(replica, resp.status, resp.headers.get("content-type", ""), resp,
                                        self.connections, self.replicas)
            try:
                err_body = await resp.read()
            except (UpstreamBodyError, TimeoutError) as exc:  # it died while saying what went wrong
                replica.breaker.on_failure()
                unreachable = f"{replica.url}: {type(exc).__name__}: {exc}"
                continue
            finally:
                resp.close()
                self.replicas.release(replica)
            error = engine_error(resp.status, err_body, replica.url, dialect_for(replica.dialect).overload, path)
            if error.reason == "engine_overloaded":
                overloaded = error  # alive but full: the next replica may have room
                continue
            if resp.status >= 500:
                replica.breaker.on_failure()
            else:
                replica.breaker.on_success()
            raise error
        if overloaded is not None:
            raise overloaded
        log.warning("no engine replica is reachable (last: %s)", unreachable)
        raise EngineUnavailableError(
            "No engine replica of this model is reachable.",
            status=502,
            code="engine_unreachable",
            reason="engine_unreachable",
        )

    def start_health_checks(self, clock: Clock, interval_s: float) -> None:
        """Probe every replica's health endpoint every ``interval_s``: a failed probe counts against its circuit,
        and a good probe of a replica whose circuit is half-open closes it."""
        async def run() -> None:
            while True:
                await clock.sleep(interval_s)
                replicas = self.replicas.all()
                for replica, healthy in zip(replicas, await asyncio.gather(*map(self._probe, replicas)),
                                            strict=True):
                    if not healthy:
                        replica.breaker.on_failure()
                    elif replica.breaker.state is BreakerState.HALF_OPEN:
                        replica.breaker.on_success()

        self._health_task = asyncio.get_running_loop().create_task(run())

    async def is_ready(self) -> bool:
        """True when at least one replica answers its readiness probe (SGLang's generates a token)."""
        results = await asyncio.gather(*(self._probe(r, ready=True) for r in self.replicas.routable()))
        return any(results)

    async def _probe(self, replica: Replica, ready: bool = False) -> bool:
        dialect = dialect_for(replica.dialect)
        path = dialect.ready_path if ready else dialect.health_path
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                resp = await self.client.request("GET", replica.url, path)
                try:
                    await resp.read()  # read whole, its connection serves the next probe
                finally:
                    resp.close()
                return resp.status == 200
        except (TimeoutError, UpstreamHttpError):
            return False

    async def close(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            self._health_task = None
        await self.client.close()


def _engine_died(replica: Replica, exc: BaseException) -> EngineUnavailableError:
    log.warning("engine %s stopped in the middle of its answer: %s: %s", replica.url, type(exc).__name__, exc)
    return EngineUnavailableError("The model's engine stopped in the middle of its answer.",
                                  status=502, code="engine_died", reason="engine_died")


def _closed() -> EngineUnavailableError:
    return EngineUnavailableError("The answer was closed before its end.", status=502, code="upstream_closed",
                                  reason="upstream_closed")


def _all_failing(any_replica: bool) -> EngineUnavailableError:
    why = "Every replica of this model is failing (circuits open)" if any_replica else \
        "This model has no engine replica right now"
    return EngineUnavailableError(f"{why}; retry shortly.", code="engine_unavailable", reason="engine_unavailable",
                                  headers={"retry-after": "1"})
