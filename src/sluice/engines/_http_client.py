"""The engines' HTTP/1.1 client: keep-alive connections pooled per origin, one client per engine pool.

Lean on purpose: under load aiohttp's client was a quarter of the gateway's CPU per request (``python -m
bench.upstream_client`` measures this client beside aiohttp and httpx). A request is one write (head and body);
its answer is returned as soon as its head is in, and its body is read as it arrives. A connection goes back to
the pool only when its answer came whole and the engine keeps it alive; an answer closed before its end closes
its connection, which is how an engine learns that a generation is abandoned. The number of connections is not
capped here: the engine pool's ``ConnectionSlots`` bound the requests in flight.

A reused connection the engine closed while it sat idle (its keep-alive timeout raced the request) fails before
any byte of the answer: the request is sent once more, on a fresh connection. A fresh connection's failure is
the caller's: ``UpstreamConnectError`` (a ``ConnectionError``) or ``TimeoutError``.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sluice.engines._http_connection import (
    HttpConnection,
    StaleConnectionError,
    UpstreamConnectError,
)

_BODYLESS_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})  # no content-length unless a body is given
_MAX_ORIGINS_CACHED = 1024


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a base URL's requests go: scheme, host and port, and the path prefix its requests get."""

    key: str  # scheme://host:port
    host: str
    port: int
    tls: bool
    host_line: str  # the request's host header, with its CRLF
    prefix: str  # the base URL's path, before each request's

    @classmethod
    def of(cls, base_url: str) -> Origin:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        tls = parts.scheme == "https"
        default = 443 if tls else 80
        port = parts.port or default
        host = parts.hostname
        shown = f"[{host}]" if ":" in host else host
        netloc = shown if port == default else f"{shown}:{port}"
        return cls(f"{parts.scheme}://{shown}:{port}", host, port, tls, f"host: {netloc}\r\n",
                   parts.path.rstrip("/"))


class HttpResponse:
    """An answer whose head is in. ``close()`` it when done: read to its end, its connection is reused."""

    __slots__ = ("_client", "_conn", "headers", "status")

    def __init__(self, conn: HttpConnection, client: UpstreamClient) -> None:
        self.status = conn.status
        self.headers = conn.headers  # lower-case names
        self._conn: HttpConnection | None = conn
        self._client = client

    def next_chunk(self) -> Coroutine[Any, Any, bytes | None]:
        """The body buffered so far (at least one byte; waits for it), None at its end. Raises
        ``UpstreamBodyError`` if the connection breaks before the end, ``TimeoutError`` if the engine sends
        nothing for the client's ``read_timeout_s``. (The connection's own coroutine, not one around it: one
        frame less per relayed chunk.)"""
        if self._conn is None:
            raise RuntimeError("the answer was closed")
        return self._conn.next_chunk()

    async def read(self) -> bytes:
        """The whole body (the rest of it)."""
        parts = []
        while (chunk := await self.next_chunk()) is not None:
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and conn.release():
            self._client._reuse(conn)

    @property
    def reading_paused(self) -> bool:
        """True while the socket is not read because too much of the body waits unread."""
        return self._conn is not None and self._conn.reading_paused


class UpstreamClient:
    """Pooled keep-alive HTTP/1.1 connections to the engines, per origin."""

    def __init__(self, *, connect_timeout_s: float = 5.0, read_timeout_s: float = 600.0,
                 idle_timeout_s: float = 15.0, tls: ssl.SSLContext | None = None) -> None:
        """``tls``: for https origins (default: the system's CAs, the host name checked)."""
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._idle_timeout_s = idle_timeout_s
        self._origins: dict[str, Origin] = {}
        self._idle: dict[str, list[HttpConnection]] = {}  # per origin key; the last one is the warmest
        self._connections: set[HttpConnection] = set()
        self._tls = tls
        self._closed = False
        self.connections_opened = 0

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    def idle_connections(self, base_url: str) -> int:
        return len(self._idle.get(Origin.of(base_url).key, ()))

    async def request(self, method: str, base_url: str, path: str, body: bytes = b"",
                      headers: Mapping[str, str] | None = None) -> HttpResponse:
        """Send a request; return its answer once its head is in. ``headers`` must not set host, content-length,
        transfer-encoding or connection (this client writes those it needs)."""
        origin = self._origins.get(base_url)
        if origin is None:
            origin = self._origin(base_url)
        data = _request_bytes(method, origin, path, body, headers)
        skip_body = method == "HEAD"
        idle = self._idle.get(origin.key)
        while idle:
            conn = idle.pop()
            if not conn.usable:
                continue
            conn.send(data, skip_body)
            try:
                await conn.head()
            except StaleConnectionError:
                break  # the engine had closed it: once more, on a fresh one
            return HttpResponse(conn, self)
        conn = await self._connect(origin)
        conn.send(data, skip_body)
        await conn.head()
        return HttpResponse(conn, self)

    async def close(self) -> None:
        """Close every connection (answers still being read end with an error); answers closed later are not
        kept."""
        self._closed = True
        for conn in list(self._connections):
            conn.close()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports close

    def _origin(self, base_url: str) -> Origin:
        if len(self._origins) >= _MAX_ORIGINS_CACHED:
            self._origins.clear()
        origin = self._origins[base_url] = Origin.of(base_url)
        return origin

    async def _connect(self, origin: Origin) -> HttpConnection:
        loop = asyncio.get_running_loop()
        conn = HttpConnection(loop, origin.key, self._read_timeout_s, self._idle_timeout_s, self._forget)
        tls = None
        if origin.tls:
            tls = self._tls = self._tls or ssl.create_default_context()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                await loop.create_connection(lambda: conn, origin.host, origin.port, ssl=tls,
                                             server_hostname=origin.host if tls else None)
        except TimeoutError:
            conn.close()
            raise TimeoutError(f"connecting to {origin.key} took over {self._connect_timeout_s} s") from None
        except OSError as exc:  # refused, unreachable, reset, name unknown, TLS handshake failed
            raise UpstreamConnectError(f"cannot connect to {origin.key}: {exc}") from exc
        self._connections.add(conn)
        self.connections_opened += 1
        return conn

    def _reuse(self, conn: HttpConnection) -> None:
        if self._closed:
            conn.close()
        else:
            self._idle.setdefault(conn.origin, []).append(conn)

    def _forget(self, conn: HttpConnection) -> None:
        """The connection is gone (closed by either side)."""
        self._connections.discard(conn)
        idle = self._idle.get(conn.origin)
        if idle and conn in idle:
            idle.remove(conn)


def _request_bytes(method: str, origin: Origin, path: str, body: bytes, headers: Mapping[str, str] | None) -> bytes:
    lines = [f"{method} {origin.prefix}{path} HTTP/1.1\r\n", origin.host_line]
    if body or method not in _BODYLESS_METHODS:
        lines.append(f"content-length: {len(body)}\r\n")
    if headers:
        lines.extend([f"{name}: {value}\r\n" for name, value in headers.items()])
    lines.append("\r\n")
    head = "".join(lines)
    if head.count("\n") != len(lines) or head.count("\r") != len(lines) or " " in method:
        raise ValueError("a CR or LF inside a request's method, path or header")
    return head.encode("latin-1") + body
