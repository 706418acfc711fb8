"""Each worker's exposition on its unix socket, and /metrics merging every worker's (sluice.gateway._worker_metrics)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sluice.gateway._worker_metrics import WorkerMetrics, worker_socket
from sluice.telemetry import GatewayMetrics


@pytest.fixture
def directory() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sw-"))  # short: a unix socket's path is at most 107 bytes
    yield path
    shutil.rmtree(path)


def counted(metrics: GatewayMetrics, refused: int) -> GatewayMetrics:
    for _ in range(refused):
        metrics.connection_refused("request_timeout")
    return metrics


def refused_total(text: bytes) -> float:
    return sum(s.value for family in text_string_to_metric_families(text.decode()) for s in family.samples
               if s.name == "sluice_connections_refused_total")


def workers_merged(text: bytes) -> float:
    return next(s.value for family in text_string_to_metric_families(text.decode()) for s in family.samples
                if s.name == "sluice_gateway_workers")


async def test_any_worker_merges_every_worker_and_skips_one_that_is_down(directory: Path) -> None:
    a, b, c = (counted(GatewayMetrics(), n) for n in (1, 2, 4))
    workers = [WorkerMetrics(directory, i, m.render, timeout_s=1.0) for i, m in enumerate((a, b, c))]
    for worker in workers:
        await worker.start()
    try:
        assert stat.S_ISSOCK(worker_socket(directory, 1).stat().st_mode)
        for worker in workers:
            merged = await worker.merged()
            assert refused_total(merged) == 7
            assert workers_merged(merged) == 3
        await workers[2].close()
        dead = socket.socket(socket.AF_UNIX)  # a worker killed before it could remove its socket: nothing listens
        dead.bind(str(worker_socket(directory, 2)))
        dead.close()
        merged = await workers[0].merged()
        assert refused_total(merged) == 3
        assert workers_merged(merged) == 2
    finally:
        for worker in workers[:2]:
            await worker.close()


async def test_a_peer_that_never_sends_a_request_is_dropped_and_a_stuck_peer_is_left_out(directory: Path) -> None:
    own = WorkerMetrics(directory, 0, counted(GatewayMetrics(), 1).render, timeout_s=0.5)
    await own.start()
    silent = await asyncio.open_unix_connection(str(worker_socket(directory, 0)))  # connects, sends nothing

    async def stuck(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)  # a worker that accepts and never answers (stopped, swapping)

    hung = await asyncio.start_unix_server(stuck, path=str(worker_socket(directory, 1)))
    try:
        merged = await own.merged()
        assert refused_total(merged) == 1 and workers_merged(merged) == 1
        assert await asyncio.wait_for(silent[0].read(), timeout=5) == b""  # closed by the worker, not left open
    finally:
        silent[1].close()
        hung.close()
        await own.close()


async def test_the_socket_answers_http_with_the_workers_own_exposition(directory: Path) -> None:
    metrics = counted(GatewayMetrics(), 5)
    worker = WorkerMetrics(directory, 3, metrics.render)
    await worker.start()
    try:
        reader, writer = await asyncio.open_unix_connection(str(worker_socket(directory, 3)))
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, body = (await reader.read()).partition(b"\r\n\r\n")
        writer.close()
        assert head.startswith(b"HTTP/1.0 200") and b"text/plain" in head
        assert refused_total(body) == 5
    finally:
        await worker.close()
    assert not worker_socket(directory, 3).exists()
