"""uvicorn's httptools protocol, with the limits a public server needs before any request reaches the app.

uvicorn reads a request head for as long as the client takes and as large as it is sent, and accepts every
connection. This subclass adds, per connection:

- a byte budget for the head (request line + headers): past ``max_header_bytes`` the parser is not fed another
  byte; the answer is 431 and the connection closes. Also 431 past ``max_headers`` header fields. The trailers
  of a chunked body get the same byte budget (the parser buffers header fields whole, trailers too);
- one timer, from accept (or from the end of the previous answer on a kept-alive connection) until the head is
  complete: past ``header_timeout_s``, 408 if a head had begun, else a silent close (an idle connection has no
  request to answer; uvicorn's own keep-alive timeout usually closes those first);
- a place in the server's ``ConnectionTable`` (the cap on open connections, see ``_connections``);
- OpenAI-shaped answers for all of these, and for heads the parser rejects (400), instead of uvicorn's text;
- the hot routes (``HotRoutes``: the inference endpoints) served straight from here, as an ``Exchange`` in place
  of uvicorn's ASGI cycle: no ASGI scope, messages or Starlette objects on the path most requests take.

Those answers are written before any request exists: they are in neither the access log nor the request metrics,
but counted by reason (``ConnectionObserver``: ``sluice_connections_refused_total``).
The body is bounded where it is read (``routes/_proxy.read_body``: size and ``body_timeout_s``).

It relies on uvicorn's HttpToolsProtocol internals (callbacks, ``cycle``, ``pipeline``, ``on_response_complete``);
pyproject.toml pins the uvicorn versions checked.
"""

from __future__ import annotations

import asyncio
import http
import logging
import urllib.parse
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, ClassVar, Protocol

import httptools
import orjson
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from sluice.errors import (
    HeaderTooLargeError,
    InvalidRequestError,
    OverloadedError,
    RequestTimeoutError,
    SluiceError,
)
from sluice.gateway._connections import ConnectionTable
from sluice.gateway._exchange import Exchange, Serve

log = logging.getLogger("sluice")


@dataclass(frozen=True, slots=True)
class HttpLimits:
    max_header_bytes: int
    max_headers: int
    header_timeout_s: float
    max_connections: int


@dataclass(frozen=True, slots=True)
class HotRoutes:
    """The POST routes served straight from the protocol, what serves them, and the app state they read."""

    paths: frozenset[str]
    serve: Serve
    state: SimpleNamespace


class ConnectionObserver(Protocol):
    def connection_refused(self, reason: str) -> None: ...


@dataclass(frozen=True, slots=True)
class _Answer:
    reason: str  # x-sluice-reason, and the label it is counted under
    data: bytes

    @classmethod
    def of(cls, error: SluiceError) -> _Answer:
        return cls(error.reason, answer_bytes(error))


def answer_bytes(error: SluiceError) -> bytes:
    """``error`` as a complete HTTP/1.1 response that closes the connection."""
    body = orjson.dumps(error.body())
    lines = [f"HTTP/1.1 {error.status} {http.HTTPStatus(error.status).phrase}",
             "content-type: application/json", f"content-length: {len(body)}", f"x-sluice-reason: {error.reason}",
             *(f"{name}: {value}" for name, value in error.headers.items()), "connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1") + body


@dataclass(frozen=True, slots=True)
class _Answers:
    """The protocol's own answers, encoded once per server."""

    head_too_large: _Answer
    too_many_headers: _Answer
    head_timeout: _Answer
    too_many_connections: _Answer
    bad_request: _Answer

    @classmethod
    def for_limits(cls, limits: HttpLimits) -> _Answers:
        return cls(
            head_too_large=_Answer.of(HeaderTooLargeError(
                f"The request line and headers are larger than the limit of {limits.max_header_bytes} bytes.")),
            too_many_headers=_Answer.of(HeaderTooLargeError(
                f"The request has more than {limits.max_headers} header fields.")),
            head_timeout=_Answer.of(RequestTimeoutError(
                f"The request headers were not received within {limits.header_timeout_s:g} s.")),
            too_many_connections=_Answer.of(OverloadedError(
                "The server has too many open connections; retry shortly.", code="too_many_connections",
                reason="too_many_connections", headers={"retry-after": "1"})),
            bad_request=_Answer.of(InvalidRequestError("Invalid HTTP request.", code="invalid_http_request",
                                                         reason="invalid_http_request")),
        )


class _HeadRefused(Exception):
    def __init__(self, answer: _Answer) -> None:
        super().__init__()
        self.answer = answer


class LimitedHttpProtocol(HttpToolsProtocol):
    """Bound to one server's limits and connection table by ``protocol_class``."""

    limits: ClassVar[HttpLimits]
    table: ClassVar[ConnectionTable]
    answers: ClassVar[_Answers]
    observer: ClassVar[ConnectionObserver | None]
    hot: ClassVar[HotRoutes | None]

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        # The parser buffers header fields whole, in Python: those of request heads, and chunked bodies' trailers.
        # Each such section gets a byte budget; the parser is never fed past it.
        self._section_room = self.limits.max_header_bytes  # bytes the open section may still take; -1: none open
        self._in_head = True  # the open (or next) section is a request head, not a chunk header and its trailers
        self._sections_done = 0
        self._head_deadline: float | None = None  # loop time the awaited head is due by; None: not waiting
        self._head_timer: asyncio.TimerHandle | None = None  # at most one, re-armed lazily (not per request)
        self._closing = False  # answered by the protocol itself: what the client sends next is dropped

    # Connection life

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.table.admit(self):
            self._answer(self.answers.too_many_connections)
            return
        self._wait_for_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self.table.remove(self)
        cycle: object = self.cycle
        super().connection_lost(exc)
        if isinstance(cycle, Exchange):
            cycle.connection_lost()

    def shed(self) -> None:
        self._answer(self.answers.too_many_connections if self._head_begun() else None)

    def on_response_complete(self) -> None:
        next_head_ready = bool(self.pipeline)
        super().on_response_complete()
        if not next_head_ready and not self._closing and not self.transport.is_closing():
            self._wait_for_head()

    # Reading

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._unset_keepalive_if_required()
        try:
            self._feed(data)
        except _HeadRefused as refused:
            self._answer(refused.answer)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _HeadRefused):
                self._answer(cause.answer)
            else:
                log.warning("invalid HTTP request: %s", type(cause).__name__ if cause else exc)
                self._answer(self.answers.bad_request)
        except httptools.HttpParserError:
            log.debug("invalid HTTP request received")
            self._answer(self.answers.bad_request)
        except httptools.HttpParserUpgrade:  # served as plain HTTP: the gateway has no WebSocket routes (ws="none")
            log.debug("upgrade request ignored")

    def _feed(self, data: bytes) -> None:
        """Feed the parser, never more than the open header section's remaining budget."""
        while True:
            room = self._section_room
            if room < 0 or len(data) <= room:
                if room >= 0:
                    self._section_room = room - len(data)
                self.parser.feed_data(data)
                return
            done = self._sections_done
            if room:
                self.parser.feed_data(data[:room])
            if self._sections_done == done:
                raise _HeadRefused(self.answers.head_too_large)
            data = data[room:]  # the section ended within its budget: the rest is body, or the next request

    def _head_begun(self) -> bool:
        """Bytes of a request head have arrived (and it is not complete yet)."""
        return self._in_head and 0 <= self._section_room < self.limits.max_header_bytes

    def _close_section(self) -> None:
        if self._section_room >= 0:
            self._section_room = -1
            self._sections_done += 1

    # Parser callbacks

    def on_headers_complete(self) -> None:
        if len(self.headers) > self.limits.max_headers:  # counted once whole: the byte budget bounds them meanwhile
            raise _HeadRefused(self.answers.too_many_headers)
        self._close_section()
        self._in_head = False
        self._stop_waiting()
        exchange = self._hot_exchange()
        if exchange is None:
            super().on_headers_complete()
            return
        existing = self.cycle
        self.cycle = exchange  # type: ignore[assignment]  # it stands in for uvicorn's cycle
        if existing is None or existing.response_complete:
            self._start_asgi_task(exchange, self.app)  # type: ignore[arg-type]
        else:  # pipelined behind a request still being answered, as uvicorn queues its cycles
            self.flow.pause_reading()
            self.pipeline.appendleft((exchange, self.app))  # type: ignore[arg-type]

    def _hot_exchange(self) -> Exchange | None:
        """The exchange of a request to a hot route; None for any other request (served over ASGI)."""
        hot = self.hot
        if hot is None or self.parser.get_method() != b"POST":
            return None
        raw_path = httptools.parse_url(self.url).path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        if path not in hot.paths:
            return None
        version = self.parser.get_http_version()
        keep_alive = version != "1.0" and self.parser.should_keep_alive()
        return Exchange(method="POST", path=path, headers=self.headers, server=self.server, keep_alive=keep_alive,
                        expect_continue=self.expect_100_continue, transport=self.transport, flow=self.flow,
                        default_headers=self.server_state.default_headers, on_complete=self.on_response_complete,
                        serve=hot.serve, app_state=hot.state)

    def on_chunk_header(self) -> None:
        self._section_room = self.limits.max_header_bytes  # chunk data follows, or (last chunk) the trailers

    def on_body(self, body: bytes) -> None:
        if self._section_room >= 0:
            self._close_section()
        super().on_body(body)

    def on_chunk_complete(self) -> None:
        self._close_section()

    def on_message_complete(self) -> None:
        self._section_room = self.limits.max_header_bytes  # what follows is the next request's head
        self._in_head = True
        super().on_message_complete()

    # Waiting for a head

    def _wait_for_head(self) -> None:
        self._head_deadline = deadline = self.loop.time() + self.limits.header_timeout_s
        if self._head_timer is None:
            self._head_timer = self.loop.call_at(deadline, self._head_timer_fired)
        self.table.waiting(self)

    def _stop_waiting(self) -> None:
        self._head_deadline = None
        self.table.busy(self)

    def _head_timer_fired(self) -> None:
        self._head_timer = None
        deadline = self._head_deadline
        if deadline is None:  # not waiting now: the next wait arms a timer of its own
            return
        if self.loop.time() < deadline:  # a later wait than the one this timer was armed for
            self._head_timer = self.loop.call_at(deadline, self._head_timer_fired)
            return
        self._answer(self.answers.head_timeout if self._head_begun() else None)

    def _answer(self, answer: _Answer | None) -> None:
        """Write ``answer`` and close; the connection leaves the table. No answer if one would interleave with a
        response being written, or if the request at fault (its trailers) has had a response already."""
        self._closing = True
        self._stop_waiting()
        self.table.remove(self)
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if answer is not None and (cycle is None or (cycle.response_complete if self._in_head
                                                     else not cycle.response_started)):
            self.transport.write(answer.data)
            if self.observer is not None:
                self.observer.connection_refused(answer.reason)
        self.transport.close()


def protocol_class(limits: HttpLimits, observer: ConnectionObserver | None = None,
                   hot: HotRoutes | None = None) -> type[LimitedHttpProtocol]:
    """The protocol uvicorn instantiates per connection, bound to ``limits``, one new connection table, the
    observer that counts its refusals, and the routes it serves itself."""

    class SluiceHttpProtocol(LimitedHttpProtocol):
        pass

    SluiceHttpProtocol.limits = limits
    SluiceHttpProtocol.table = ConnectionTable(limits.max_connections)
    SluiceHttpProtocol.answers = _Answers.for_limits(limits)
    SluiceHttpProtocol.observer = observer
    SluiceHttpProtocol.hot = hot
    return SluiceHttpProtocol
