"""The engines' own HTTP/1.1 client (engines/_http_client.py), against real servers on 127.0.0.1: the simulator,
and a raw asyncio server written here for the edge cases (how bodies end, keep-alive, a server closing, dying,
stalling, a slow reader). The server counts the connections it accepted, so reuse is seen from its side."""

from __future__ import annotations

import asyncio
import re
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import aiohttp
import orjson
import pytest

from sluice.clock import FakeClock
from sluice.config import SimSettings
from sluice.engines import EnginePool, Replica
from sluice.engines._http_client import UpstreamClient
from sluice.engines._http_connection import UpstreamBodyError, UpstreamConnectError
from sluice.errors import EngineUnavailableError
from sluice.sim import SimServer
from tests.redis_server import free_port

T = TypeVar("T")
CHAT = "/v1/chat/completions"
JSON = {"content-type": "application/json"}
OK_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[bool]]  # (.., request no) -> go on?


class RawServer:
    """Reads requests (head, then a content-length body) and answers each with ``answer``; counts connections."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections = 0
        self.requests: list[bytes] = []  # each request's head, as received
        self.ended = asyncio.Event()  # set each time a connection's reader saw the client close it
        self.writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def start(self, tls: ssl.SSLContext | None = None) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=tls)
        return f"{'https' if tls else 'http'}://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self.writers:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    self.ended.set()
                    return
                self.requests.append(head)
                length = re.search(rb"content-length: (\d+)", head)
                if length:
                    await reader.readexactly(int(length.group(1)))
                if not await self.answer(reader, writer, len(self.requests)):
                    return
        finally:
            writer.close()


MakeServer = Callable[[Answer], Awaitable[tuple[RawServer, str]]]


@pytest.fixture
async def raw() -> AsyncIterator[MakeServer]:
    servers: list[RawServer] = []

    async def make(answer: Answer) -> tuple[RawServer, str]:
        server = RawServer(answer)
        servers.append(server)
        return server, await server.start()

    yield make
    for server in servers:
        await server.stop()


def answering(payload: bytes, extra: bytes = b"") -> Answer:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(OK_HEAD + extra + b"content-length: %d\r\n\r\n" % len(payload) + payload)
        await writer.drain()
        return True
    return answer


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


async def bounded(work: Awaitable[T], limit_s: float = 5.0) -> T:
    """``work``'s result, or an AssertionError (never a TimeoutError of its own) if it hangs."""
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait({task}, timeout=limit_s)
    if not done:
        task.cancel()
        raise AssertionError("it hung")
    return task.result()


def no_ids(data: bytes) -> bytes:
    return re.sub(rb'"created":\d+', b"T", re.sub(rb"(chatcmpl|cmpl)-[0-9a-f]+", b"ID", data))


async def test_the_simulator_answers_it_the_bytes_it_answers_aiohttp() -> None:
    server = await SimServer.start(SimSettings(max_num_seqs=8, speed=1000.0), model_name="m")
    client = UpstreamClient()
    try:
        async with aiohttp.ClientSession() as session:
            for stream in (False, True):
                body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                     "max_tokens": 3, "ignore_eos": True, "stream": stream, "seed": 7})
                async with session.post(server.url + CHAT, data=body, headers=JSON) as theirs:
                    expected = await theirs.read()
                    expected_type = theirs.headers["content-type"]
                resp = await client.request("POST", server.url, CHAT, body, JSON)
                got = b""
                while (chunk := await resp.next_chunk()) is not None:
                    got += chunk
                resp.close()
                assert resp.status == 200 and resp.headers["content-type"] == expected_type
                assert no_ids(got) == no_ids(expected) and (b"data: [DONE]" in got) == stream
        assert client.connections_opened == 1  # both on one kept-alive connection
    finally:
        await client.close()
        await server.stop()


async def test_a_connection_is_reused_and_the_request_is_written_as_asked(raw: MakeServer) -> None:
    server, url = await raw(answering(b"hello"))
    client = UpstreamClient()
    try:
        for _ in range(3):
            resp = await client.request("POST", url, "/v1/x", b"{}", {"content-type": "application/json"})
            assert await resp.read() == b"hello"
            resp.close()
        assert server.connections == 1 and client.idle_connections(url) == 1
        head = server.requests[0].decode().lower()
        assert head.startswith("post /v1/x http/1.1\r\n")
        assert f"host: {url.removeprefix('http://')}\r\n" in head and "content-length: 2\r\n" in head
        assert "content-type: application/json\r\n" in head and "user-agent" not in head
        with pytest.raises(ValueError):
            await client.request("POST", url, "/v1/x", b"{}", {"x-evil": "a\r\nhost: elsewhere"})
    finally:
        await client.close()


async def test_chunked_and_length_bodies_keep_the_connection_an_eof_ended_one_does_not(raw: MakeServer) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        if n == 1:
            writer.write(OK_HEAD + b"transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        elif n == 2:
            writer.write(OK_HEAD + b"content-length: 3\r\n\r\nabc")
        else:
            writer.write(OK_HEAD + b"\r\nuntil the end")
            await writer.drain()
            return False  # closes: that is the body's end
        await writer.drain()
        return True

    server, url = await raw(answer)
    client = UpstreamClient()
    try:
        bodies = []
        for _ in range(3):
            resp = await client.request("GET", url, "/")
            bodies.append(await resp.read())
            resp.close()
        assert bodies == [b"hello world", b"abc", b"until the end"]
        assert server.connections == 1 and client.idle_connections(url) == 0
        resp = await client.request("GET", url, "/")  # the EOF-ended answer's connection was not kept
        assert server.connections == 2
        resp.close()
    finally:
        await client.close()


async def test_connection_close_head_and_http_1_0_answers_are_not_reused_but_bodiless_ones_are(raw: MakeServer) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        kind = [b"", b"HTTP/1.1 204 No Content\r\n\r\n",
                b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n",  # to HEAD: no body follows
                b"HTTP/1.1 304 Not Modified\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
                b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok"][n]
        writer.write(kind)
        await writer.drain()
        return n < 4

    server, url = await raw(answer)
    client = UpstreamClient()
    try:
        for method, status, body in [("GET", 204, b""), ("HEAD", 200, b""), ("GET", 304, b"")]:
            resp = await client.request(method, url, "/")
            assert (resp.status, await resp.read()) == (status, body)
            resp.close()
        assert server.connections == 1
        for _ in range(2):
            resp = await client.request("GET", url, "/")
            assert await resp.read() == b"ok"
            resp.close()
            assert client.idle_connections(url) == 0
        assert server.connections == 2
    finally:
        await client.close()


async def test_a_kept_connection_the_server_closed_is_replaced_and_a_fresh_ones_failure_raised(raw: MakeServer) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        if n in (2, 6, 7):
            return False  # as a keep-alive timeout racing the request: closed without a byte of answer
        writer.write(OK_HEAD + b"content-length: 2\r\n\r\nok")
        await writer.drain()
        return n != 4  # after the fourth, closed while idle

    server, url = await raw(answer)
    client = UpstreamClient()
    try:
        for expected_connections in (1, 2, 2, 3):  # 1st; 2nd lost on the kept one, resent; 3rd; 4th after close
            if expected_connections == 3:
                await until(lambda: client.idle_connections(url) == 0)  # the close reached the client
            resp = await client.request("GET", url, "/")
            assert await resp.read() == b"ok"
            resp.close()
            assert server.connections == expected_connections
        with pytest.raises(UpstreamConnectError):  # lost on the kept one, then lost on a fresh one: raised
            await client.request("GET", url, "/")
        assert server.connections == 4
    finally:
        await client.close()


async def test_refused_dead_mid_body_and_stalled_servers_raise_the_clients_errors(raw: MakeServer) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        if n == 1:
            writer.write(OK_HEAD + b"content-length: 100\r\n\r\nonly ten..")
            await writer.drain()
            return False  # dies mid-body
        if n == 2:
            writer.write(OK_HEAD + b"transfer-encoding: chunked\r\n\r\n2\r\nhi\r\n")
            await writer.drain()
        await reader.read()  # stalls (after its head, then before it) until the client leaves
        return True

    client = UpstreamClient(read_timeout_s=0.2)
    try:
        with pytest.raises(UpstreamConnectError) as refused:
            await client.request("GET", f"http://127.0.0.1:{free_port()}", "/")
        assert isinstance(refused.value, ConnectionError) and isinstance(refused.value.__cause__, OSError)
        _, url = await raw(answer)
        resp = await client.request("GET", url, "/")
        with pytest.raises(UpstreamBodyError):
            await resp.read()
        resp.close()
        resp = await client.request("GET", url, "/")
        assert await resp.next_chunk() == b"hi"
        with pytest.raises(TimeoutError):
            await bounded(resp.next_chunk())
        resp.close()
        with pytest.raises(TimeoutError):
            await bounded(client.request("GET", url, "/"))
        await until(lambda: client.open_connections == 0)  # timed out connections are closed
    finally:
        await client.close()


async def test_closing_an_answer_before_its_end_closes_the_connection_and_the_server_sees_it(raw: MakeServer) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(OK_HEAD + b"transfer-encoding: chunked\r\n\r\n3\r\none\r\n")
        await writer.drain()
        return True  # the rest never comes: the server waits for the next request, or the end

    server, url = await raw(answer)
    client = UpstreamClient()
    try:
        resp = await client.request("POST", url, CHAT, b"{}")
        assert await resp.next_chunk() == b"one"
        resp.close()
        await asyncio.wait_for(server.ended.wait(), 5)
        assert client.idle_connections(url) == 0
    finally:
        await client.close()


async def test_a_slow_reader_pauses_the_socket_and_still_gets_every_byte(raw: MakeServer) -> None:
    piece = b"x" * 262144
    pieces = 64  # 16 MiB: more than the client buffers, or the kernel's socket buffers hold
    server_blocked = asyncio.Event()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(OK_HEAD + b"content-length: %d\r\n\r\n" % (len(piece) * pieces))
        for _ in range(pieces):
            writer.write(piece)
            if writer.transport.get_write_buffer_size() > 0:
                server_blocked.set()  # the kernel's buffers are full: the client stopped reading
            await writer.drain()
        return True

    _, url = await raw(answer)
    client = UpstreamClient()
    try:
        resp = await client.request("GET", url, "/")
        await until(lambda: resp.reading_paused)
        await asyncio.wait_for(server_blocked.wait(), 5)
        total = 0
        while (chunk := await resp.next_chunk()) is not None:
            assert len(chunk) <= 512 * 1024  # never the whole answer buffered (64 KiB + one socket read)
            total += len(chunk)
        assert total == len(piece) * pieces and not resp.reading_paused
        resp.close()
        assert client.idle_connections(url) == 1
    finally:
        await client.close()


async def test_a_request_cancelled_while_waiting_leaves_no_connection_and_no_timer(raw: MakeServer) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        if n == 2:
            writer.write(OK_HEAD + b"transfer-encoding: chunked\r\n\r\n")
            await writer.drain()
        await reader.read()  # stalls until the client leaves
        return True

    server, url = await raw(answer)
    client = UpstreamClient()
    try:
        waiting = asyncio.ensure_future(client.request("GET", url, "/"))  # for the head
        await until(lambda: len(server.requests) == 1)
        (conn,) = client._connections
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert not conn.usable and not conn.timer_armed
        await asyncio.wait_for(server.ended.wait(), 5)
        server.ended.clear()
        resp = await client.request("GET", url, "/")  # a new connection; now waiting for a chunk
        reading = asyncio.ensure_future(resp.next_chunk())
        await asyncio.sleep(0.01)
        (conn,) = client._connections
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
        resp.close()
        assert not conn.usable and not conn.timer_armed and client.idle_connections(url) == 0
        await asyncio.wait_for(server.ended.wait(), 5)
        assert server.connections == 2
    finally:
        await client.close()


async def test_an_idle_connection_is_closed_after_its_idle_timeout(raw: MakeServer) -> None:
    server, url = await raw(answering(b"ok"))
    client = UpstreamClient(idle_timeout_s=0.1)
    try:
        resp = await client.request("GET", url, "/")
        await resp.read()
        resp.close()
        assert client.idle_connections(url) == 1
        await asyncio.wait_for(server.ended.wait(), 5)  # the client closed it: the server saw the end
        assert client.idle_connections(url) == 0 and client.open_connections == 0
    finally:
        await client.close()


async def test_through_the_pool_an_engine_dying_mid_answer_is_engine_died(raw: MakeServer) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(OK_HEAD + b"content-length: 100\r\n\r\npartial")
        await writer.drain()
        return False

    _, url = await raw(answer)
    pool = EnginePool([Replica(url)], clock=FakeClock())
    try:
        for read in ("read", "next_chunk"):
            upstream = await pool.post(CHAT, b"{}", JSON)
            with pytest.raises(EngineUnavailableError) as died:
                if read == "read":
                    await upstream.read()
                else:
                    assert await upstream.next_chunk() == b"partial"
                    await upstream.next_chunk()
            upstream.close()
            assert (died.value.status, died.value.reason) == (502, "engine_died")
        assert pool.connections.in_use == 0
    finally:
        await pool.close()


async def test_through_the_pool_an_answer_the_gateway_closed_reads_as_closed_before_or_while_it_is_read(
        raw: MakeServer) -> None:
    """The gate stops a request by closing its answer (preemption), whether the relay is between reads or waiting
    in one: either way the next read raises the pool's ``upstream_closed``, which the relay knows (never the
    client's own RuntimeError)."""
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(OK_HEAD + b"content-length: 100\r\n\r\npartial")
        await writer.drain()
        await asyncio.sleep(30)
        return False

    _, url = await raw(answer)
    pool = EnginePool([Replica(url)], clock=FakeClock())
    try:
        between = await pool.post(CHAT, b"{}", JSON)
        assert await between.next_chunk() == b"partial"
        between.close()
        with pytest.raises(EngineUnavailableError) as closed:
            await between.next_chunk()
        assert closed.value.reason == "upstream_closed"
        waiting = await pool.post(CHAT, b"{}", JSON)
        assert await waiting.next_chunk() == b"partial"
        read = asyncio.ensure_future(waiting.next_chunk())
        await asyncio.sleep(0.05)
        waiting.close()
        with pytest.raises(EngineUnavailableError) as closed:
            await read
        assert closed.value.reason == "upstream_closed"
        assert pool.connections.in_use == 0
    finally:
        await pool.close()


async def test_an_https_origin_is_reached_over_tls_checked_against_the_trusted_cas(tmp_path: Path) -> None:
    cert, key = tmp_path / "engine.crt", tmp_path / "engine.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=engine", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    server = RawServer(answering(b"secret"))
    url = await server.start(server_tls)
    trusting = UpstreamClient(tls=ssl.create_default_context(cafile=str(cert)))
    default = UpstreamClient()
    try:
        resp = await trusting.request("GET", url, "/")
        assert await resp.read() == b"secret"
        resp.close()
        with pytest.raises(UpstreamConnectError) as refused:  # the system's CAs do not know this certificate
            await default.request("GET", url, "/")
        assert isinstance(refused.value.__cause__, ssl.SSLCertVerificationError)
        assert server.requests and all(r.startswith(b"GET / HTTP/1.1") for r in server.requests)
        assert len(server.requests) == 1  # the untrusted connection sent nothing
    finally:
        await trusting.close()
        await default.close()
        await server.stop()


async def test_through_the_pool_answers_read_whole_keep_their_connection_one_closed_early_aborts_it() -> None:
    server = await SimServer.start(SimSettings(max_num_seqs=8), model_name="m")  # real time: a long stream lasts
    pool = EnginePool([Replica(server.url)], clock=FakeClock())
    short = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
    long = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4000,
                         "ignore_eos": True, "stream": True})
    try:
        for _ in range(3):
            assert b'"choices"' in await (await pool.post(CHAT, short, JSON)).read()
        assert pool.client.connections_opened == 1
        stream = await pool.post(CHAT, long, JSON)
        assert (await stream.next_chunk() or b"").startswith(b"data: ")
        assert server.engine.num_running == 1
        stream.close()  # before its end: the engine sees the connection closed and drops the request
        await until(lambda: server.engine.num_running == 0)
        assert b'"choices"' in await (await pool.post(CHAT, short, JSON)).read()
        assert pool.client.connections_opened == 2 and pool.connections.in_use == 0
    finally:
        await pool.close()
        await server.stop()
