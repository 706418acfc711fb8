"""HTTP abuse against a running gateway, on real sockets: oversized and trickled heads, trickled and abandoned
bodies, slow clients by the thousand, and connections past the cap. Every refusal is an OpenAI-shaped error with
``x-sluice-reason``, and the connection closes."""

from __future__ import annotations

import json
import logging
import os
import re
import resource
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sluice.config import parse_settings
from sluice.gateway._connections import ConnectionTable
from sluice.gateway._http_protocol import LimitedHttpProtocol
from tests.conftest import LiveServer, metric_value, serve_gateway, wait_until
from tests.gateway import raw_http
from tests.redis_server import free_port

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
MAX_HEADER_BYTES = 64 * 1024  # the defaults, tested as shipped
MAX_HEADERS = 100


def _settings(access_log: Path | None = None, **server: object):
    return parse_settings({
        "server": {**server, **({"access_log_path": str(access_log)} if access_log else {})},
        "auth": {"mode": "open"},
        "models": [{"name": "m", "sim": {"speed": 50}},
                   # at least 100 tokens at ~8 ms each: an answer that lasts longer than the header timeout
                   {"name": "slow", "sim": {"output_len_min": 100, "output_len_max": 100}}],
    })


@pytest.fixture(scope="module")
def access_log(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("logs") / "access.jsonl"


@pytest.fixture(scope="module")
def gateway(access_log) -> Iterator[LiveServer]:
    with serve_gateway(_settings(access_log, header_timeout_s=0.5, body_timeout_s=0.5)) as live:
        yield live


@pytest.fixture(scope="module")
def capped_gateway() -> Iterator[LiveServer]:
    with serve_gateway(_settings(max_connections=4, header_timeout_s=30, body_timeout_s=30)) as live:
        yield live


class _Collected(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def server_log() -> Iterator[_Collected]:
    """Everything the gateway and uvicorn log (uvicorn's loggers do not propagate to the root), tracebacks too."""
    handler = _Collected()
    loggers = [logging.getLogger(), logging.getLogger("uvicorn"), logging.getLogger("uvicorn.error")]
    for logger in loggers:
        logger.addHandler(handler)
    yield handler
    for logger in loggers:
        logger.removeHandler(handler)


def _table(live: LiveServer) -> ConnectionTable:
    protocol = live.server.config.http_protocol_class
    assert issubclass(protocol, LimitedHttpProtocol)
    return protocol.table


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _assert_error(response: raw_http.RawResponse, status: int, code: str, reason: str) -> None:
    assert response.status == status, response
    assert response.headers["x-sluice-reason"] == reason
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and error["message"]
    assert response.closed


def _padded_head(total_bytes: int, body: bytes) -> bytes:
    """A chat request head of exactly ``total_bytes`` (request line to the blank line), padded by one header."""
    fields = {"content-type": "application/json", "content-length": str(len(body))}
    bare = raw_http.head("POST", "/v1/chat/completions", {**fields, "x-pad": ""})
    return raw_http.head("POST", "/v1/chat/completions", {**fields, "x-pad": "p" * (total_bytes - len(bare))})


# Request heads


def test_a_head_of_exactly_the_limit_is_served_and_one_byte_more_is_431(gateway):
    body = json.dumps(CHAT).encode()
    for size, status in ((MAX_HEADER_BYTES, 200), (MAX_HEADER_BYTES + 1, 431)):
        head = _padded_head(size, body)
        assert len(head) == size
        with raw_http.connect(gateway.url) as sock:
            sock.sendall(head + body)  # one write: the head's budget must not count the body
            response = raw_http.read_response(sock, close_wait_s=0 if status == 200 else 10)
        if status == 200:
            assert response.status == 200, response
            assert response.json()["choices"][0]["message"]["content"]
        else:
            _assert_error(response, 431, "request_header_fields_too_large", "header_too_large")


def test_an_endless_header_is_refused_without_being_read(gateway):
    with raw_http.connect(gateway.url) as sock:
        sent = 0
        chunk = b"a" * 65536
        if raw_http.send_quietly(sock, b"GET /health HTTP/1.1\r\nhost: sluice\r\nx-big: "):
            while sent < 64 * 1024 * 1024 and raw_http.send_quietly(sock, chunk):
                sent += len(chunk)
        response = raw_http.read_response(sock)
    _assert_error(response, 431, "request_header_fields_too_large", "header_too_large")
    assert sent < 64 * 1024 * 1024  # the server closed the connection: the rest was never read


def test_endless_trailers_of_a_chunked_body_are_refused_without_being_read(gateway):
    body = json.dumps(CHAT).encode()
    with raw_http.connect(gateway.url) as sock:
        sent = 0
        chunk = b"a" * 65536
        start = raw_http.head("POST", "/v1/chat/completions", {"transfer-encoding": "chunked"})
        if raw_http.send_quietly(sock, start + b"%x\r\n%s\r\n0\r\nx-trailer: " % (len(body), body)):
            while sent < 64 * 1024 * 1024 and raw_http.send_quietly(sock, chunk):
                sent += len(chunk)
        response = raw_http.read_response(sock)
    _assert_error(response, 431, "request_header_fields_too_large", "header_too_large")
    assert sent < 64 * 1024 * 1024


def test_a_chunked_body_with_trailers_is_served(gateway):
    body = json.dumps(CHAT).encode()
    body = body[:-1] + b" " * (2 * MAX_HEADER_BYTES) + b"}"  # a chunk bigger than a header section's budget
    with raw_http.connect(gateway.url) as sock:
        sock.sendall(raw_http.head("POST", "/v1/chat/completions", {"transfer-encoding": "chunked"}))
        for piece in (body[:10], body[10:], b""):  # the last chunk is empty; trailers follow it
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if piece else b"0\r\nx-trailer: t\r\n\r\n")
        response = raw_http.read_response(sock, close_wait_s=0)
    assert response.status == 200, response
    assert response.json()["choices"][0]["message"]["content"]


def test_too_many_header_fields_is_431(gateway):
    for count, status in ((MAX_HEADERS, 200), (MAX_HEADERS + 1, 431)):
        fields = {f"x-field-{i}": "v" for i in range(count - 1)}  # + host
        with raw_http.connect(gateway.url) as sock:
            sock.sendall(raw_http.head("GET", "/health", fields))
            response = raw_http.read_response(sock, close_wait_s=0 if status == 200 else 10)
        if status == 200:
            assert response.status == 200, response
        else:
            _assert_error(response, 431, "request_header_fields_too_large", "header_too_large")
            assert str(MAX_HEADERS) in response.json()["error"]["message"]


def _refused(live: LiveServer, reason: str) -> float:
    return metric_value(live.url, "sluice_connections_refused_total", reason=reason) or 0.0


def test_a_trickled_head_gets_408_and_the_connection_closes(gateway):
    before = _refused(gateway, "request_timeout")
    with raw_http.connect(gateway.url) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: sluice\r\nx-slow: ")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not select.select([sock], [], [], 0.05)[0]:
            if not raw_http.send_quietly(sock, b"z"):  # a byte at a time: trickling does not extend the deadline
                break
        response = raw_http.read_response(sock)
    _assert_error(response, 408, "request_timeout", "request_timeout")
    assert _refused(gateway, "request_timeout") == before + 1  # no request record: counted by the HTTP layer


def test_a_silent_connection_is_closed_without_an_answer(gateway):
    with raw_http.connect(gateway.url) as sock:
        sock.settimeout(10)
        assert sock.recv(1) == b""  # closed after the header timeout; no request, so nothing to answer


def test_a_kept_alive_connection_gets_a_new_header_timeout_after_each_answer(gateway):
    with raw_http.connect(gateway.url) as sock:
        for _ in range(3):  # idle 0.3 s before each: more than the 0.5 s header timeout in all, never in one wait
            time.sleep(0.3)
            sock.sendall(raw_http.head("GET", "/health"))
            answer = raw_http.read_response(sock, close_wait_s=0)
            assert answer.status == 200
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: sluice\r\n")  # ... and the head never ends
        response = raw_http.read_response(sock)
    _assert_error(response, 408, "request_timeout", "request_timeout")


def test_an_answer_longer_than_the_header_timeout_is_not_cut(gateway):
    body = {**CHAT, "model": "slow", "max_tokens": 100, "stream": True}
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, timeout=30) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert len(lines) > 100  # every token arrived (the timer stopped when the head was complete)


# Request bodies


def test_a_trickled_body_gets_408_and_the_connection_closes(gateway, access_log):
    with raw_http.connect(gateway.url) as sock:
        sock.sendall(raw_http.head("POST", "/v1/chat/completions", {"content-type": "application/json",
                                                                    "content-length": "100",
                                                                    "x-request-id": "trickled-body"}))
        sock.sendall(b'{"model": ')
        response = raw_http.read_response(sock)
    _assert_error(response, 408, "request_timeout", "request_timeout")
    assert response.headers["connection"] == "close"
    assert wait_until(lambda: any(r.get("request_id") == "trickled-body" for r in _records(access_log)))
    record = next(r for r in _records(access_log) if r.get("request_id") == "trickled-body")
    assert (record["status"], record["reason"]) == (408, "request_timeout")


def test_a_client_gone_mid_body_is_499_with_no_traceback(gateway, access_log, server_log):
    def count(name: str, **labels: str) -> float:
        return metric_value(gateway.url, name, **labels) or 0.0

    route = {"route": "/v1/chat/completions", "model": "", "tier": ""}
    errors_before = count("sluice_requests_total", **route, status="500")
    gone_before = count("sluice_rejections_total", reason="client_disconnected", model="")
    with raw_http.connect(gateway.url) as sock:
        sock.sendall(raw_http.head("POST", "/v1/chat/completions", {"content-length": "1000",
                                                                    "x-request-id": "gone-mid-body"}))
        sock.sendall(b'{"model": "m", ')
    assert wait_until(lambda: any(r.get("request_id") == "gone-mid-body" for r in _records(access_log)))
    record = next(r for r in _records(access_log) if r.get("request_id") == "gone-mid-body")
    assert (record["status"], record["reason"]) == (499, "client_disconnected")
    assert count("sluice_rejections_total", reason="client_disconnected", model="") == gone_before + 1
    assert count("sluice_requests_total", **route, status="500") == errors_before
    assert not [line for line in server_log.lines if "Traceback" in line or line.startswith("ERROR")]


# The connection cap


def test_the_connection_waiting_longest_makes_room_for_a_new_one(capped_gateway):
    table = _table(capped_gateway)
    assert wait_until(lambda: table.snapshot()["open"] == 0)
    shed_before = table.shed_total
    idle = [raw_http.connect(capped_gateway.url) for _ in range(4)]
    try:
        for sock in idle:  # one answer on each: admitted, now kept alive and waiting, in this order
            sock.sendall(raw_http.head("GET", "/health"))
            assert raw_http.read_response(sock, close_wait_s=0.1).status == 200
        idle[0].sendall(b"POST /v1/chat/completions HTTP/1.1\r\n")  # the oldest has begun a head, slowly
        for _ in range(2):  # two newcomers, each served (and kept open): the two waiting longest make room
            idle.append(raw_http.connect(capped_gateway.url))
            idle[-1].sendall(raw_http.head("GET", "/health"))
            assert raw_http.read_response(idle[-1], close_wait_s=0.1).status == 200
        _assert_error(raw_http.read_response(idle[0]), 503, "too_many_connections", "too_many_connections")
        idle[1].settimeout(0.5)
        assert idle[1].recv(1) == b""  # idle, with no request begun: closed without an answer
        for sock in idle[2:]:
            assert not raw_http.closed_by_server(sock, timeout_s=0.2)
        assert (table.snapshot()["open"], table.snapshot()["waiting"]) == (4, 4)
        assert table.shed_total == shed_before + 2
    finally:
        for sock in idle:
            sock.close()


def test_past_the_cap_with_every_connection_busy_a_new_one_is_refused_with_503(capped_gateway):
    table = _table(capped_gateway)
    before = _refused(capped_gateway, "too_many_connections")
    assert wait_until(lambda: table.snapshot()["open"] == 0)
    busy = [raw_http.connect(capped_gateway.url) for _ in range(4)]
    try:
        for sock in busy:  # complete heads, bodies still coming: requests in progress, not sheddable
            sock.sendall(raw_http.head("POST", "/v1/chat/completions", {"content-length": "1000"}) + b"{")
        assert wait_until(lambda: (table.snapshot()["open"], table.snapshot()["waiting"]) == (4, 0))
        refused = httpx.get(capped_gateway.url + "/health")
        assert refused.status_code == 503
        assert refused.headers["x-sluice-reason"] == "too_many_connections"
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "too_many_connections"
    finally:
        for sock in busy:
            sock.close()
    assert wait_until(lambda: table.snapshot()["open"] == 0)
    assert httpx.get(capped_gateway.url + "/health").status_code == 200
    assert _refused(capped_gateway, "too_many_connections") == before + 1
    assert metric_value(capped_gateway.url, "sluice_connections", state="busy") == 1  # the scrape's own


def test_thousands_of_slow_clients_do_not_starve_a_healthy_one(tmp_path):
    """The observed failure: ~1,100 slow clients exhausted a 1,024 file-descriptor limit and every healthy request
    failed. `sluice serve` with its defaults (the soft limit raised to the hard one, the connection cap sized to
    it), 2,000 slow clients that come back when shed, and a healthy client."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "gateway.log"

    def low_fd_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1536))  # fewer than the slow clients

    with open(log_path, "wb") as log_file:
        gateway = subprocess.Popen([sys.executable, "-m", "sluice.cli", "serve", "--port", str(port)],
                                   stdout=log_file, stderr=subprocess.STDOUT, preexec_fn=low_fd_limit,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    slow = None
    try:
        assert wait_until(lambda: _healthy(url), timeout_s=30), log_path.read_text()
        ready = tmp_path / "slow-clients-ready"
        slow = subprocess.Popen([sys.executable, "-m", "tests.gateway.slow_clients", "--url", url, "--count", "2000",
                                 "--duration-s", "12", "--ready-file", str(ready)], stdout=subprocess.PIPE, text=True)
        assert wait_until(ready.exists, timeout_s=30)
        answers = []
        while slow.poll() is None and len(answers) < 25:
            with httpx.Client(timeout=10) as healthy:  # a new connection each time: it has to get in
                answers.append(healthy.post(url + "/v1/chat/completions", json={**CHAT, "model": "sluice-sim"}))
            time.sleep(0.2)
        counts = json.loads(slow.communicate(timeout=60)[0])
    finally:
        if slow is not None and slow.poll() is None:
            slow.kill()
        gateway.terminate()
        gateway.wait(timeout=30)
    assert len(answers) >= 10
    assert [a.status_code for a in answers] == [200] * len(answers)
    assert counts["opened"] >= 2000 and counts["open_failed"] == 0
    assert counts["answered_503"] > 0  # the cap was reached: slow heads were shed to make room
    log = log_path.read_text()
    assert "Traceback" not in log and "Too many open files" not in log
    cap, fd_limit = map(int, re.search(r"HTTP limits: (\d+) connections \(file-descriptor limit (\d+)\)", log).groups())
    assert fd_limit == 1536 and cap < 1536


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


# The table alone


class _Connection:
    def __init__(self, name: str) -> None:
        self.name = name
        self.shed_count = 0

    def shed(self) -> None:
        self.shed_count += 1


def test_the_table_sheds_the_longest_waiting_and_refuses_when_none_waits():
    table = ConnectionTable(max_connections=3)
    a, b, c, d, e = (_Connection(n) for n in "abcde")
    for connection in (a, b, c):
        assert table.admit(connection)
        table.waiting(connection)
    table.waiting(a)  # a waits again (a new head after an answer): now the most recent
    assert table.admit(d)
    assert (a.shed_count, b.shed_count, c.shed_count) == (0, 1, 0)
    table.busy(c)
    table.busy(d)
    assert table.admit(e)  # a is the only one waiting
    assert a.shed_count == 1
    table.busy(e)
    assert not table.admit(_Connection("f"))  # c, d, e all busy: refused, nobody shed
    assert table.snapshot() == {"open": 3, "waiting": 0, "max_connections": 3, "shed_total": 2, "refused_total": 1}
    table.remove(c)
    assert table.admit(_Connection("g"))
