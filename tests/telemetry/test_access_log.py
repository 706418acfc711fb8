"""The access log written in batches off the request path: on its clock's tick, on a burst, at close; and a real
gateway process told to stop (SIGTERM) writes every line it still held."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import signal
import subprocess
from pathlib import Path

import httpx

from sluice.clock import FakeClock
from sluice.telemetry import AccessLog, RequestRecord
from sluice.telemetry._access_log import MAX_BUFFERED_LINES
from tests.gateway_process import GatewayProcess


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def record(i: int) -> RequestRecord:
    return RequestRecord(f"req-{i}", "POST", "/v1/chat/completions", 0.0, status=200, key_id="k", duration_s=0.01)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


async def test_lines_wait_for_the_tick_then_go_in_one_write() -> None:
    clock, stream = FakeClock(), CountingStream()
    log = AccessLog(stream, flush_s=0.2)
    log.start(clock)
    for i in range(3):
        log.write(record(i))
    await clock.run_for(0.1)
    assert stream.getvalue() == "" and log.buffered
    await clock.run_for(0.1)
    assert [line["request_id"] for line in lines(stream)] == ["req-0", "req-1", "req-2"]
    assert stream.writes == 1
    log.write(record(3))
    await clock.run_for(0.2)  # the next tick takes the next lines
    assert [line["request_id"] for line in lines(stream)][-1] == "req-3" and stream.writes == 2
    log.close()


async def test_a_burst_is_written_at_once_without_waiting_for_the_tick() -> None:
    stream = CountingStream()
    log = AccessLog(stream, flush_s=3600)
    log.start(FakeClock())
    for i in range(MAX_BUFFERED_LINES + 1):
        log.write(record(i))
    assert len(lines(stream)) == MAX_BUFFERED_LINES and stream.writes == 1
    log.close()
    assert len(lines(stream)) == MAX_BUFFERED_LINES + 1


async def test_close_writes_what_is_waiting() -> None:
    stream = CountingStream()
    log = AccessLog(stream, flush_s=3600)
    log.start(FakeClock())
    log.write(record(1))
    assert stream.getvalue() == ""
    log.close()
    assert [line["request_id"] for line in lines(stream)] == ["req-1"]
    await asyncio.sleep(0)  # the flusher, cancelled, ends
    log.write(record(2))  # after close: written at once (no flusher any more)
    assert [line["request_id"] for line in lines(stream)] == ["req-1", "req-2"]


def test_not_started_or_flush_s_zero_each_line_goes_at_once() -> None:
    stream = CountingStream()
    AccessLog(stream).write(record(1))
    assert len(lines(stream)) == 1

    async def started_with_zero() -> None:
        log = AccessLog(stream, flush_s=0)
        log.start(FakeClock())
        assert not log.buffered
        log.write(record(2))
        assert len(lines(stream)) == 2

    asyncio.run(started_with_zero())


def test_sigterm_writes_every_line_held(tmp_path: Path) -> None:
    """A gateway holding its lines (a tick far away) writes them all when told to stop, none lost."""
    access = tmp_path / "access.jsonl"
    config = tmp_path / "sluice.yaml"
    config.write_text(f"server: {{access_log_path: '{access}', access_log_flush_s: 3600}}\n"
                      "auth: {mode: open}\nmodels:\n  - {name: m, sim: {speed: 1000}}\n")
    gateway = GatewayProcess(config, tmp_path / "gateway.log")
    try:
        gateway.wait_healthy()
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        with httpx.Client(base_url=gateway.url, timeout=10) as client:
            for i in range(20):
                r = client.post("/v1/chat/completions", json=body, headers={"x-request-id": f"held-{i}"})
                assert r.status_code == 200, r.text
        held = access.read_text() if access.exists() else ""
        assert "held-" not in held  # still in memory: the tick is an hour away
        gateway.proc.send_signal(signal.SIGTERM)
        assert gateway.proc.wait(timeout=20) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once drained
    finally:
        if gateway.proc.poll() is None:
            gateway.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                gateway.proc.wait(timeout=10)
        gateway.stop()
    logged = [json.loads(line) for line in access.read_text().splitlines()]
    ids = [line["request_id"] for line in logged if str(line["request_id"]).startswith("held-")]
    assert ids == [f"held-{i}" for i in range(20)]
    assert all(line["status"] == 200 for line in logged if line["request_id"] in ids)
