"""Metrics across gateway workers: each worker serves its own exposition on a private unix socket, and
``/metrics`` on any worker merges every worker's into one (``sluice.telemetry.merge_expositions``).

The sockets live in one directory per supervisor (mode 0700: only the gateway's user reaches them), one per worker
index (``worker-<index>.sock``), answering any HTTP request with the worker's own exposition, e.g.
``curl --unix-socket <dir>/worker-0.sock http://worker/metrics``. A worker that is down (restarting) is left out of
the merge; ``sluice_gateway_workers`` says how many were merged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

from sluice.telemetry import merge_expositions

log = logging.getLogger("sluice")

MAX_REQUEST_HEAD_BYTES = 8192
FETCH_TIMEOUT_S = 2.0
_REQUEST = b"GET /metrics HTTP/1.0\r\nHost: worker\r\n\r\n"


def worker_socket(directory: Path, index: int) -> Path:
    return directory / f"worker-{index}.sock"


class WorkerMetrics:
    """This worker's exposition on its socket in ``directory``, and the exposition of all the workers there."""

    def __init__(self, directory: Path, index: int, render: Callable[[], bytes], *,
                 timeout_s: float = FETCH_TIMEOUT_S) -> None:
        self._directory = directory
        self._path = worker_socket(directory, index)
        self._render = render
        self._timeout_s = timeout_s
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._path.unlink(missing_ok=True)  # left by this worker index's previous process, if it was killed
        self._server = await asyncio.start_unix_server(self._answer, path=str(self._path),
                                                       limit=MAX_REQUEST_HEAD_BYTES)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._path.unlink(missing_ok=True)

    async def merged(self) -> bytes:
        """Every worker's exposition merged: this one's, and each other worker's that answers within the timeout."""
        own = self._render().decode()
        peers = [path for path in sorted(self._directory.glob("worker-*.sock")) if path != self._path]
        answers = await asyncio.gather(*(self._fetch(path) for path in peers))
        return merge_expositions([own, *(text for text in answers if text is not None)]).encode()

    async def _fetch(self, path: Path) -> str | None:
        try:
            async with asyncio.timeout(self._timeout_s):
                reader, writer = await asyncio.open_unix_connection(str(path))
                try:
                    writer.write(_REQUEST)
                    response = await reader.read()
                finally:
                    writer.close()
        except (OSError, TimeoutError) as exc:  # that worker is down or restarting: merged without it
            log.debug("worker metrics at %s not read: %r", path, exc)
            return None
        head, _, body = response.partition(b"\r\n\r\n")
        return body.decode() if head.startswith(b"HTTP/1.0 200") else None

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                await reader.readuntil(b"\r\n\r\n")
                body = self._render()
                writer.write(b"HTTP/1.0 200 OK\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8\r\n"
                             b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body) + body)
                await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a client that went away or sent no request head: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
