"""One keep-alive HTTP/1.1 connection to an engine: an asyncio Protocol whose answers httptools parses.

It carries one request at a time. The body is buffered as it arrives and handed to the one reader in whatever
pieces came (never more than ~64 KiB: past that, reading from the socket pauses until the reader catches up).
One timer per connection, re-armed lazily, serves both the read timeout (no byte for ``read_timeout_s`` while an
answer is awaited) and the idle timeout (a pooled connection unused for ``idle_timeout_s`` is closed): a chunk
only stores its arrival time, and a timer that fires early re-arms itself at the stored deadline.

Errors are this module's own, raised once here: ``UpstreamConnectError`` (a ``ConnectionError``: nothing of an
answer came) and ``UpstreamBodyError`` (the connection broke in the middle of a body); a read timeout raises
``TimeoutError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

BUFFER_HIGH_BYTES = 64 * 1024  # unread body past this: stop reading the socket until the reader drains it


class UpstreamHttpError(Exception):
    """An engine's HTTP exchange failed."""


class UpstreamConnectError(UpstreamHttpError, ConnectionError):
    """The engine could not be reached, or closed the connection before its answer began."""


class StaleConnectionError(UpstreamConnectError):
    """A reused keep-alive connection was closed by the engine before any byte of the answer: the request never
    reached it, and may be sent again on a fresh connection."""


class UpstreamBodyError(UpstreamHttpError):
    """The connection broke (or the engine spoke garbage) in the middle of an answer's body."""


class HttpConnection(asyncio.Protocol):
    """A connection to one origin. ``send`` a request, await ``head()``, then ``next_chunk()`` until None; then
    ``release()`` it (True: it may carry the next request) or ``close()`` it."""

    __slots__ = (
        "_buffered", "_chunks", "_closed", "_complete", "_deadline", "_error", "_got_bytes", "_head_done", "_idle",
        "_idle_timeout_s", "_informational", "_keep_alive", "_loop", "_on_lost", "_parser", "_paused", "_period_s",
        "_read_timeout_s", "_reading", "_skip_body", "_timer", "_transport", "_until_eof", "_waiter", "headers",
        "origin", "status", "uses"
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, origin: str, read_timeout_s: float, idle_timeout_s: float,
                 on_lost: Callable[[HttpConnection], None]) -> None:
        self.origin = origin
        self.uses = 0  # requests sent on it
        self.headers: dict[str, str] = {}
        self.status = 0
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._parser = HttpResponseParser(self)
        self._read_timeout_s = read_timeout_s
        self._idle_timeout_s = idle_timeout_s
        self._period_s = min(read_timeout_s, idle_timeout_s)  # the timer never sleeps longer than this
        self._on_lost = on_lost
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._paused = False
        self._reading = False  # a request was sent and its answer is not complete
        self._idle = False  # in the client's pool, waiting for a request
        self._closed = False
        self._got_bytes = False
        self._head_done = False
        self._complete = False
        self._keep_alive = False
        self._until_eof = False  # the body ends when the connection does (no length, not chunked)
        self._skip_body = False  # an answer to HEAD: no body, whatever its headers say
        self._informational = False  # a 1xx head is being parsed: not the answer
        self._error: BaseException | None = None

    @property
    def usable(self) -> bool:
        transport = self._transport
        return not self._closed and transport is not None and not transport.is_closing()

    @property
    def reading_paused(self) -> bool:
        return self._paused

    @property
    def timer_armed(self) -> bool:
        return self._timer is not None

    # -- the request, as its sender sees it

    def send(self, data: bytes, skip_body: bool = False) -> None:
        """Write a whole request (head and body, one write). The connection must be fresh or released."""
        if self._skip_body:  # the last answer was to HEAD: its parser may still expect that answer's body
            self._parser = HttpResponseParser(self)
        self.uses += 1
        self.headers = {}
        self.status = 0
        self._chunks.clear()
        self._buffered = 0
        self._idle = self._got_bytes = self._head_done = self._complete = self._keep_alive = False
        self._until_eof = False
        self._skip_body = skip_body
        self._error = None
        self._reading = True
        self._deadline = self._loop.time() + self._read_timeout_s
        assert self._transport is not None
        self._transport.write(data)

    async def head(self) -> None:
        """Return once the answer's status and headers are in."""
        while not self._head_done:
            if self._error is not None:
                raise self._error
            await self._wait()

    async def next_chunk(self) -> bytes | None:
        """Everything of the body buffered so far, at least one byte; None once it ended."""
        while True:
            chunks = self._chunks
            if chunks:
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self._buffered = 0
                if self._paused:
                    self._resume()
                return data
            if self._complete:
                return None
            if self._error is not None:
                raise self._error
            await self._wait()

    def release(self) -> bool:
        """The answer is done with: True if the connection may carry another request (its answer came whole and
        the engine keeps the connection alive), else it is closed."""
        if not (self._complete and self._keep_alive and self.usable):
            self.close()
            return False
        self._chunks.clear()
        self._buffered = 0
        if self._paused:
            self._resume()
        self._idle = True
        self._deadline = self._loop.time() + self._idle_timeout_s
        return True

    def close(self) -> None:
        """Close the connection now (an answer not read to its end is aborted: the engine sees the disconnect)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._reading and self._error is None:
            what = UpstreamBodyError if self._head_done else UpstreamConnectError
            self._error = what(f"the connection to {self.origin} was closed before the answer's end")
        self._reading = self._idle = False
        if self._transport is not None and not self._closed:
            self._transport.close()
        self._closed = True
        self._wake()

    async def _wait(self) -> None:
        waiter = self._waiter = self._loop.create_future()
        try:
            await waiter
        except BaseException:  # cancelled while waiting: the answer is in an unknown state, the connection goes
            self._waiter = None
            self.close()
            raise

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        self._error = error
        self.close()

    def _resume(self) -> None:
        self._paused = False
        self._deadline = self._loop.time() + self._read_timeout_s
        if self._transport is not None and not self._closed:
            self._transport.resume_reading()

    # -- the timer: one per connection, re-armed lazily

    def _arm(self) -> None:
        now = self._loop.time()
        when = min(self._deadline, now + self._period_s)
        if when <= now:
            when = now + self._period_s
        self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._closed:
            return
        if self._loop.time() >= self._deadline:
            if self._idle:
                self.close()
                return
            if self._reading and not self._paused:
                self._fail(TimeoutError(f"{self.origin} sent nothing for {self._read_timeout_s} s"))
                return
        self._arm()

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self._deadline = self._loop.time() + self._read_timeout_s
        self._arm()

    def data_received(self, data: bytes) -> None:
        if not self._reading:  # bytes nobody asked for: the connection is not in a known state
            self.close()
            return
        self._got_bytes = True
        self._deadline = self._loop.time() + self._read_timeout_s
        try:
            self._parser.feed_data(data)
        except (HttpParserError, HttpParserUpgrade) as exc:
            what = UpstreamBodyError if self._head_done else UpstreamConnectError
            error = what(f"{self.origin} answered something that is not HTTP/1.1: {exc}")
            error.__cause__ = exc
            self._fail(error)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._reading:
            if not self._head_done:
                what = StaleConnectionError if not self._got_bytes and self.uses > 1 else UpstreamConnectError
                self._error = what(f"{self.origin} closed the connection before answering")
                self._error.__cause__ = exc
            elif self._until_eof and exc is None:
                self._complete = True  # the body's end is the connection's end
            else:
                self._error = UpstreamBodyError(f"{self.origin} closed the connection in the middle of an answer")
                self._error.__cause__ = exc
        self._reading = False
        self._closed = True
        self._on_lost(self)
        self._idle = False
        self._wake()

    # -- httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        headers = self.headers
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:  # an interim answer (100 Continue, 103 Early Hints): not it
            self._informational = True
            self.headers = {}
            return
        self.status = status
        self._head_done = True
        headers = self.headers
        coding = headers.get("transfer-encoding")
        self._until_eof = ("content-length" not in headers and not (coding and coding.lower().endswith("chunked"))
                           and status not in (204, 304) and not self._skip_body)
        if self._skip_body:
            self._finish()
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._skip_body:
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > BUFFER_HIGH_BYTES and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if not self._complete:
            self._finish()
        self._wake()

    def _finish(self) -> None:
        self._complete = True
        self._reading = False
        self._keep_alive = self._parser.should_keep_alive() and not self._until_eof
