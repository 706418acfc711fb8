"""The hot routes (inference endpoints) are served straight from the HTTP protocol (``gateway/_exchange.py``), not
over ASGI: what HTTP/1.1 asks of a server still holds there, on real sockets. Pipelined requests are answered in
order, ``Expect: 100-continue`` is honoured, an HTTP/1.0 client gets its answer and the connection closes, a
streamed answer is chunked and leaves the connection reusable, and a percent-encoded path is the same route."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from sluice.config import parse_settings
from sluice.gateway.app import create_app
from tests.conftest import LiveServer, serve_gateway
from tests.gateway import raw_http

CHAT = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3}).encode()
STREAM = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3,
                     "stream": True}).encode()


def _settings():
    return parse_settings({"auth": {"mode": "open"}, "models": [{"name": "m", "sim": {"speed": 50}}]})


@pytest.fixture(scope="module")
def gateway() -> Iterator[LiveServer]:
    with serve_gateway(_settings()) as live:
        yield live


def _request(body: bytes, path: str = "/v1/chat/completions", version: str = "1.1", **headers: str) -> bytes:
    fields = {"host": "sluice", "content-type": "application/json", "content-length": str(len(body)),
              **{k.replace("_", "-"): v for k, v in headers.items()}}
    lines = [f"POST {path} HTTP/{version}", *(f"{k}: {v}" for k, v in fields.items()), "", ""]
    return "\r\n".join(lines).encode("latin-1") + body


def _responses(sock, count: int) -> list[raw_http.RawResponse]:
    """``count`` responses read from one connection (bodies by content-length), in the order they came."""
    buffer, out = b"", []
    sock.settimeout(10)
    while len(out) < count:
        while b"\r\n\r\n" not in buffer:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {len(out)} responses"
            buffer += chunk
        head, _, buffer = buffer.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {n.strip().lower(): v.strip() for n, _, v in (line.partition(":") for line in lines)}
        length = int(headers["content-length"])
        while len(buffer) < length:
            chunk = sock.recv(65536)
            assert chunk
            buffer += chunk
        out.append(raw_http.RawResponse(int(status_line.split()[1]), headers, buffer[:length], False))
        buffer = buffer[length:]
    return out


def test_pipelined_requests_are_answered_in_order_on_one_connection(gateway):
    with raw_http.connect(gateway.url) as sock:
        sock.sendall(_request(CHAT, x_request_id="first") + _request(b"{", x_request_id="second")
                     + _request(CHAT, x_request_id="third"))
        first, second, third = _responses(sock, 3)
        assert [first.status, second.status, third.status] == [200, 400, 200]
        assert [r.headers["x-request-id"] for r in (first, second, third)] == ["first", "second", "third"]
        assert first.json()["choices"][0]["message"]["content"]
        assert second.json()["error"]["type"] == "invalid_request_error"
        assert not raw_http.closed_by_server(sock, 0.2)  # still open for the next request


def test_expect_100_continue_gets_its_interim_answer_before_the_body_is_sent(gateway):
    with raw_http.connect(gateway.url) as sock:
        head = _request(CHAT, expect="100-continue")[:-len(CHAT)]
        sock.sendall(head)
        sock.settimeout(10)
        interim = b""
        while not interim.endswith(b"\r\n\r\n"):
            interim += sock.recv(1)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(CHAT)
        (answer,) = _responses(sock, 1)
        assert answer.status == 200 and answer.json()["usage"]["completion_tokens"] == 3


def test_an_http_1_0_client_gets_its_answer_and_the_connection_closes(gateway):
    with raw_http.connect(gateway.url) as sock:
        sock.sendall(_request(CHAT, version="1.0"))
        answer = raw_http.read_response(sock)
        assert answer.status == 200 and answer.headers["connection"] == "close" and answer.closed


def test_a_stream_is_chunked_and_the_connection_serves_the_next_request(gateway):
    with raw_http.connect(gateway.url) as sock:
        sock.sendall(_request(STREAM))
        sock.settimeout(10)
        data = b""
        while not data.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert b"transfer-encoding: chunked" in head and b"content-type: text/event-stream" in head
        assert b"data: [DONE]" in body
        sock.sendall(_request(CHAT))
        (answer,) = _responses(sock, 1)
        assert answer.status == 200


def test_a_percent_encoded_path_is_the_same_hot_route(gateway):
    with raw_http.connect(gateway.url) as sock:
        sock.sendall(_request(CHAT, path="/v1/chat%2Fcompletions"))
        (answer,) = _responses(sock, 1)
        assert answer.status == 200 and answer.json()["object"] == "chat.completion"


def test_a_hot_route_reached_over_asgi_says_which_server_serves_it():
    """Only a server other than the gateway's own would bring a hot route to the ASGI layer: a clear 501."""
    app = create_app(_settings())
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": CHAT, "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": [], "state": {}}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 501
    assert json.loads(sent[1]["body"])["error"]["code"] == "not_implemented"


def test_a_stream_goes_out_in_one_write_per_chunk_its_head_with_the_first_and_its_end_with_the_last():
    """Every write is a TCP send (the costliest step of relaying a chunk): a stream of N chunks takes N writes."""
    from uvicorn.protocols.http.flow_control import FlowControl

    from sluice.gateway._exchange import Exchange
    from sluice.gateway._responses import write_reply
    from sluice.gateway.service import StreamReply

    writes: list[bytes] = []

    class Transport(asyncio.Transport):
        def write(self, data):
            writes.append(data)

        def is_closing(self):
            return False

    async def chunks():
        for frame in (b"data: 1\n\n", b"data: 2\n\n", b"data: [DONE]\n\n"):
            yield frame

    async def run(finished_at_done: bool) -> None:
        writes.clear()
        transport = Transport()
        exchange = Exchange(method="POST", path="/v1/chat/completions", headers=[], server=None, keep_alive=True,
                            expect_continue=False, transport=transport, flow=FlowControl(transport),
                            default_headers=[], on_complete=lambda: None, serve=None, app_state=None)
        seen: list[bytes] = []

        async def tallied():
            async for chunk in chunks():
                seen.append(chunk)
                yield chunk

        def finished() -> bool:
            return finished_at_done and seen[-1].startswith(b"data: [DONE]")

        await write_reply(exchange, StreamReply(tallied(), {"x-a": "1"}, finished=finished))
        assert exchange.response_complete

    asyncio.run(run(True))
    assert len(writes) == 3
    assert writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and writes[0].endswith(b"\r\n\r\n9\r\ndata: 1\n\n\r\n")
    assert writes[2] == b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"
    asyncio.run(run(False))  # not known to be the last: the end goes on its own
    assert len(writes) == 4 and writes[3] == b"0\r\n\r\n"
