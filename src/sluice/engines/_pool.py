"""A pool of replicas serving one model, reached through one pooled HTTP client.

aiohttp is the upstream client: measured against httpx as a proxy client in bench/upstream_client.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import aiohttp

from sluice.config import Dialect
from sluice.engines._errors import engine_error
from sluice.errors import EngineUnavailableError


@dataclass
class Replica:
    url: str
    dialect: Dialect = "vllm"
    outstanding: int = 0


@dataclass
class UpstreamResponse:
    """An engine's successful answer, not yet read. Whoever receives it must ``close()`` it."""

    replica: Replica
    status: int
    content_type: str
    _resp: aiohttp.ClientResponse = field(repr=False)
    _closed: bool = False

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        finally:
            self.close()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, chunk by chunk (never buffered whole)."""
        async for chunk in self._resp.content.iter_any():
            yield chunk

    def close(self) -> None:
        """Release the replica. A body not read to the end closes the connection, which aborts the request."""
        if not self._closed:
            self._closed = True
            self.replica.outstanding -= 1
            self._resp.close()


class EnginePool:
    """The replicas of one model. Picks the one with the fewest outstanding requests; on a connect error it
    tries the next one, since nothing has reached an engine yet."""

    def __init__(
        self,
        replicas: list[Replica],
        *,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 600.0,
        max_connections: int = 1024,
    ) -> None:
        if not replicas:
            raise ValueError("an engine pool needs at least one replica")
        self.replicas = replicas
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._max_connections, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, auto_decompress=False, skip_auto_headers=("User-Agent",)
            )
        return self._session

    async def post(self, path: str, body: bytes, headers: Mapping[str, str]) -> UpstreamResponse:
        """Send ``body`` to the least loaded replica; raise the translated error if the engine refuses it."""
        last_error: Exception | None = None
        for replica in sorted(self.replicas, key=lambda r: r.outstanding):
            replica.outstanding += 1
            try:
                resp = await self.session.post(replica.url + path, data=body, headers=headers)
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
                replica.outstanding -= 1
                last_error = exc
                continue
            except BaseException:
                replica.outstanding -= 1
                raise
            if resp.status >= 400:
                try:
                    err_body = await resp.read()
                finally:
                    resp.close()
                    replica.outstanding -= 1
                raise engine_error(resp.status, err_body, replica.url)
            return UpstreamResponse(replica, resp.status, resp.headers.get("content-type", ""), resp)
        raise EngineUnavailableError(
            f"No engine replica is reachable ({type(last_error).__name__}: {last_error}).",
            status=502,
            code="engine_unreachable",
            reason="engine_unreachable",
        ) from last_error

    async def is_ready(self) -> bool:
        """True when at least one replica answers its health probe."""
        results = await asyncio.gather(*(self._probe(r) for r in self.replicas))
        return any(results)

    async def _probe(self, replica: Replica) -> bool:
        try:
            async with self.session.get(replica.url + "/health", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return False

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
