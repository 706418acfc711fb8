"""One Redis connection carrying the quota store's script calls pipelined: each call is written at once, and its
reply is handed to its callback straight from the connection's read, in order, by a ``hiredis`` reader.

Under load a decision's round trip is mostly the gateway's own event loop: with redis-py's connection a reply
wakes a stream reader's waiter, which wakes the batch's task (one loop pass), which wakes the callers (another),
and the next batch left in a task of its own (a third). Here the reply reaches the callers' futures in the read
itself, and the next batch is written in the same pass: a queued decision costs one pass of the loop, not three
(measured at 64 connections: docs/benchmarks.md).

The connection is opened by redis-py (TCP or a unix socket, TLS, AUTH, SELECT: its handshake, RESP2), then read
and written here. A call not answered within ``timeout_s`` of being written ends the connection, every call on it
answered ``TimeoutError``, unless the loop itself was late to look (``StoreDeadline``'s rule, ``busy_loop_late``);
a lost connection answers every call on it ``ConnectionError``. What a failure means is the store's to decide.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

import hiredis
import redis.asyncio as aioredis

from sluice.state import busy_loop_late

Answer = Callable[[Any], None]  # a reply, a ``hiredis.ReplyError``, or a ``ConnectionError``/``TimeoutError``


class _Call:
    __slots__ = ("answer", "deadline", "extensions")

    def __init__(self, answer: Answer, deadline: float) -> None:
        self.answer = answer
        self.deadline = deadline
        self.extensions = 0


class Pipe(asyncio.Protocol):
    def __init__(self, transport: asyncio.Transport, timeout_s: float, opener: object = None) -> None:
        self._transport = transport
        self._opener = opener  # what opened the transport (a stream writer closes it when it is collected)
        self._timeout_s = timeout_s
        self._loop = asyncio.get_running_loop()
        self._reader = hiredis.Reader()
        self._calls: deque[_Call] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False
        self.lost = False  # Redis (or the network) ended the connection: Redis may have restarted

    @classmethod
    async def open(cls, client: aioredis.Redis, timeout_s: float) -> Pipe:
        """A connection made by ``client``'s pool (its settings and handshake, in RESP2: no push messages can come
        between replies), then read and written by the pipe."""
        pool = client.connection_pool
        conn = pool.connection_class(**{**pool.connection_kwargs, "protocol": 2})
        await conn.connect()  # type: ignore[no-untyped-call]
        writer = conn._writer
        assert writer is not None
        conn._reader = conn._writer = None  # the connection is the pipe's now: redis-py must not close it
        transport: Any = writer.transport
        pipe = cls(transport, timeout_s, writer)
        transport.set_protocol(pipe)
        return pipe

    @property
    def in_flight(self) -> int:
        return len(self._calls)

    def send(self, command: bytes, answer: Answer) -> None:
        """Write ``command`` (packed RESP); ``answer`` hears its reply, or why none will come."""
        if self.closed:
            answer(ConnectionError("the quota store's connection is closed"))
            return
        self._calls.append(_Call(answer, self._loop.time() + self._timeout_s))
        if self._timer is None:
            self._timer = self._loop.call_at(self._calls[0].deadline, self._check)
        self._transport.write(command)

    async def call(self, command: bytes) -> Any:
        """``send``, awaited: the reply, or raises (a ``ReplyError`` Redis answered, ``ConnectionError``,
        ``TimeoutError``)."""
        future: asyncio.Future[Any] = self._loop.create_future()

        def answer(reply: Any) -> None:
            if not future.done():
                future.set_result(reply)

        self.send(command, answer)
        reply = await future
        if isinstance(reply, (hiredis.ReplyError, ConnectionError, TimeoutError)):
            raise reply
        return reply

    def close(self) -> None:
        """Abort the connection: every call on it is answered ``ConnectionError``."""
        if not self.closed:
            self._transport.abort()
            self._end(ConnectionError("the quota store's connection was closed"))

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        calls, gets = self._calls, self._reader.gets
        while calls:
            reply = gets()
            if reply is False:
                return
            calls.popleft().answer(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = not self.closed
        self._end(ConnectionError(f"the quota store's connection was lost: {exc or 'closed by Redis'}"))

    def _end(self, failure: BaseException) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        calls, self._calls = self._calls, deque()
        for call in calls:
            call.answer(failure)

    def _check(self) -> None:
        """The oldest call's deadline: passed with no reply, the connection ends (each call answered
        ``TimeoutError``), unless the loop came late to look; else the timer waits for the next deadline."""
        self._timer = None
        if not self._calls:
            return
        oldest, now = self._calls[0], self._loop.time()
        if now < oldest.deadline:
            self._timer = self._loop.call_at(oldest.deadline, self._check)
            return
        if busy_loop_late(now - oldest.deadline, self._timeout_s, oldest.extensions):
            oldest.extensions += 1
            oldest.deadline = now + self._timeout_s
            self._timer = self._loop.call_at(oldest.deadline, self._check)
            return
        self._transport.abort()
        self._end(TimeoutError(f"the quota store did not answer within {self._timeout_s:g} s"))
