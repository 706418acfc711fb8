"""One request on the hot path, served straight from the HTTP protocol: no ASGI scope, receive/send messages,
Starlette request or response, and no watcher task.

The inference routes are the gateway's traffic; every microsecond spent between the socket and the pipeline is
spent on each of them (issue 19: the ASGI layer, Starlette's objects and the disconnect watcher's task cost about
a fifth of the gateway's CPU per request). ``LimitedHttpProtocol`` makes an ``Exchange`` for a request to one of
them instead of uvicorn's ``RequestResponseCycle``, which it stands in for: the protocol fills ``body``,
``more_body``, ``disconnected`` and ``keep_alive`` as it does a cycle's, queues it behind a pipelined request the
same way, and starts it with ``run_asgi``. Everything else (admin API, console, metrics) stays on the ASGI layer.

A response is written in one ``transport.write`` (head and body), a stream in one write per chunk (chunked
transfer coding; its head goes with its first chunk, its end with its last: each write is a TCP send). While a
handler is ``watching()``, the client closing the connection cancels the handler's task, and the cancellation comes
out as ``ClientDisconnected``: work stops the moment nobody waits for it.
"""

from __future__ import annotations

import asyncio
import http
from collections.abc import Awaitable, Callable, Iterable
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from sluice.errors import PayloadTooLargeError, RequestTimeoutError
from sluice.gateway._disconnect import ClientDisconnected

if TYPE_CHECKING:
    from uvicorn.protocols.http.flow_control import FlowControl

    from sluice.telemetry import RequestRecord

Serve = Callable[["Exchange"], Awaitable[None]]

_STATUS_LINES = {int(status): f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode() for status in http.HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_LAST_CHUNK = b"0\r\n\r\n"


class _Wakeup:
    """What the protocol calls ``message_event``: set when body bytes, the body's end or a disconnect arrive."""

    __slots__ = ("_waiter",)

    def __init__(self) -> None:
        self._waiter: asyncio.Future[None] | None = None

    def set(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None


class Exchange:
    """One request and its response on the wire. The protocol sets up the request side; a handler reads the body
    (``read_body``), then answers with ``respond`` or a stream (``start_stream``, ``send``, ``end_stream``)."""

    __slots__ = (
        "_cancelled",
        "_default_headers",
        "_expect_continue",
        "_flow",
        "_on_complete",
        "_serve",
        "_task",
        "_transport",
        "_unsent_head",
        "_watching",
        "app_state",
        "body",
        "disconnected",
        "headers",
        "keep_alive",
        "message_event",
        "method",
        "more_body",
        "path",
        "record",
        "response_complete",
        "response_started",
        "server",
    )

    def __init__(self, *, method: str, path: str, headers: list[tuple[bytes, bytes]],
                 server: tuple[str, int | None] | None, keep_alive: bool, expect_continue: bool,
                 transport: asyncio.Transport, flow: FlowControl, default_headers: list[tuple[bytes, bytes]],
                 on_complete: Callable[[], None], serve: Serve, app_state: SimpleNamespace) -> None:
        self.method = method
        self.path = path
        self.headers = headers  # as received: lower-case names, raw values
        self.server = server  # (host, port) the request came in on
        self.body = bytearray()
        self.more_body = True
        self.disconnected = False
        self.keep_alive = keep_alive
        self.message_event = _Wakeup()
        self.response_started = False
        self.response_complete = False
        self.record: RequestRecord | None = None  # the request's record, once the gateway opened it
        self.app_state = app_state
        self._transport = transport
        self._flow = flow
        self._default_headers = default_headers  # the server's date (and server) header
        self._expect_continue = expect_continue
        self._on_complete = on_complete
        self._serve = serve
        self._task: asyncio.Task[Any] | None = None
        self._watching = False
        self._cancelled = False  # the client left while watched: this task was cancelled for it
        self._unsent_head = b""  # a stream's head, until its first chunk goes with it

    async def run_asgi(self, _app: object) -> None:
        """Serve the request in this task (the name and signature are those of the cycle it stands in for)."""
        self._task = asyncio.current_task()
        await self._serve(self)

    # Request

    def header_values(self, names: tuple[bytes, ...]) -> list[str | None]:
        """The first value of each of ``names``, in one pass over the headers."""
        found: list[str | None] = [None] * len(names)
        for name, value in self.headers:
            if name in names:
                at = names.index(name)
                if found[at] is None:
                    found[at] = value.decode("latin-1")
        return found

    async def read_body(self, limit: int, timeout_s: float, declared: str | None) -> bytes:
        """The whole body, at most ``limit`` bytes (else 413), all of it within ``timeout_s`` (else 408, and the
        connection closes). ``declared``: the content-length header. A client gone before its body is complete:
        ``ClientDisconnected``. A body that came with its head (the usual case) is returned without waiting."""
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large(limit)
        if self.more_body and not self.disconnected:
            try:
                async with asyncio.timeout(timeout_s):
                    await self._rest_of_body(limit)
            except TimeoutError as exc:
                raise body_timeout(timeout_s) from exc
        if self.disconnected:
            raise ClientDisconnected
        if len(self.body) > limit:
            raise too_large(limit)
        return bytes(self.body)

    async def _rest_of_body(self, limit: int) -> None:
        if self._expect_continue:
            self._expect_continue = False
            self._transport.write(_CONTINUE)
        while self.more_body and not self.disconnected:
            if len(self.body) > limit:
                raise too_large(limit)
            self._flow.resume_reading()  # the protocol pauses reading past its high-water mark
            await self.message_event.wait()

    # Disconnects

    def watching(self) -> _Watching:
        """A context in which the client's leaving cancels this task; the cancellation leaves it as
        ``ClientDisconnected`` (any other cancellation passes through untouched)."""
        return _Watching(self)

    def connection_lost(self) -> None:
        """Told by the protocol when the connection closes."""
        if self.response_complete:
            return
        self.disconnected = True
        self.message_event.set()
        if self._watching and self._task is not None and not self._cancelled:
            self._cancelled = True
            self._task.cancel()

    # Response

    def respond(self, status: int, headers: Iterable[tuple[str, str]], content_type: str, body: bytes,
                header_lines: bytes = b"") -> None:
        """The whole response, in one write. ``header_lines``: more headers, rendered already (CRLF-ended)."""
        head = self._head(status, headers, b"content-type: %b\r\ncontent-length: %d\r\n%b"
                          % (content_type.encode("latin-1"), len(body), header_lines))
        if not self.disconnected:
            self._transport.write(head + body)
        self._complete()

    def start_stream(self, status: int, headers: Iterable[tuple[str, str]], header_lines: bytes = b"") -> None:
        """The head of a streamed response (chunked), written with its first chunk (one write, not two: each is a
        TCP send); ``send`` its chunks, then ``end_stream``. ``header_lines``: as ``respond``'s."""
        self._unsent_head = self._head(status, headers, b"transfer-encoding: chunked\r\n" + header_lines)

    async def send(self, chunk: bytes, *, last: bool = False) -> None:
        """One chunk of a stream, once the client's connection can take it (the transport's flow control);
        ``last``: the stream ends with it (in the same write)."""
        if self.response_complete:  # ended already: nothing may follow its end
            return
        if self._flow.write_paused and not self.disconnected:
            await self._flow.drain()
        if self.disconnected:
            raise ClientDisconnected
        data = b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunk else b""
        if last:
            data += _LAST_CHUNK
        if self._unsent_head:
            data, self._unsent_head = self._unsent_head + data, b""
        if data:
            self._transport.write(data)
        if last:
            self._complete()

    def end_stream(self) -> None:
        if self.response_complete:
            return
        if not self.disconnected:
            self._transport.write(self._unsent_head + _LAST_CHUNK)
        self._unsent_head = b""
        self._complete()

    def abort(self) -> None:
        """A response begun that cannot be finished: the connection closes, so the client sees it cut. (None
        once the response is complete: the connection stays for the next request.)"""
        if self.response_complete:
            return
        self.keep_alive = False
        self._transport.close()
        self._complete()

    def _head(self, status: int, headers: Iterable[tuple[str, str]], framing: bytes) -> bytes:
        self.response_started = True
        if self.record is not None:
            self.record.status = status
        parts = [_STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status, framing]
        for default_name, default_value in self._default_headers:
            parts += (default_name, b": ", default_value, b"\r\n")
        for name, value in headers:
            if name == "connection" and value == "close":
                self.keep_alive = False
                continue
            parts.append(f"{name}: {value}\r\n".encode("latin-1"))
        if self.record is not None:
            parts.append(b"x-request-id: %b\r\n" % self.record.request_id.encode())
        parts.append(b"\r\n" if self.keep_alive else b"connection: close\r\n\r\n")
        return b"".join(parts)

    def _complete(self) -> None:
        if self.response_complete:
            return
        self.response_complete = True
        self.message_event.set()
        if not self.keep_alive:
            self._transport.close()
        self._on_complete()


class _Watching:
    __slots__ = ("_exchange",)

    def __init__(self, exchange: Exchange) -> None:
        self._exchange = exchange

    def __enter__(self) -> None:
        exchange = self._exchange
        if exchange.disconnected:
            raise ClientDisconnected
        exchange._watching = True

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        exchange = self._exchange
        exchange._watching = False
        if exchange._cancelled:
            exchange._cancelled = False
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            if exc_type is asyncio.CancelledError or exc_type is None:
                raise ClientDisconnected from exc


def too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"The request body is larger than the limit of {limit} bytes.")


def body_timeout(timeout_s: float) -> RequestTimeoutError:
    return RequestTimeoutError(f"The request body was not received within {timeout_s:g} s.",
                               headers={"connection": "close"})
