"""HTTP/1.1 over raw sockets, for clients no HTTP library would be: trickled heads, oversized heads, half bodies."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    closed: bool  # the server closed the connection after this response

    def json(self) -> Any:
        return json.loads(self.body)


def connect(url: str, timeout_s: float = 10.0) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def head(method: str, path: str, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "host: sluice", *(f"{k}: {v}" for k, v in (headers or {}).items()), "", ""]
    return "\r\n".join(lines).encode("latin-1")


def send_quietly(sock: socket.socket, data: bytes) -> bool:
    """Send ``data``; False if the server had already closed the connection (reset, broken pipe)."""
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        return False
    return True


def read_response(sock: socket.socket, timeout_s: float = 10.0, close_wait_s: float | None = None) -> RawResponse:
    """One response (its body by content-length), then whether the server closed the connection after it (waiting
    up to ``close_wait_s``, by default ``timeout_s``, to see)."""
    sock.settimeout(timeout_s)
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = _recv(sock)
        if not chunk:
            raise ConnectionError(f"connection closed before a response head (got {buffer[:200]!r})")
        buffer += chunk
    raw_head, _, body = buffer.partition(b"\r\n\r\n")
    status_line, *header_lines = raw_head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (h.partition(":") for h in header_lines)}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = _recv(sock)
        if not chunk:
            break
        body += chunk
    closed = closed_by_server(sock, timeout_s if close_wait_s is None else close_wait_s)
    return RawResponse(int(status_line.split()[1]), headers, body, closed)


def closed_by_server(sock: socket.socket, timeout_s: float = 10.0) -> bool:
    """Wait up to ``timeout_s`` for the server to close the connection (True) or for the wait to end (False)."""
    sock.settimeout(timeout_s)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except (TimeoutError, BlockingIOError):  # still open (a zero timeout only looks)
        return False


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except ConnectionResetError:
        return b""
