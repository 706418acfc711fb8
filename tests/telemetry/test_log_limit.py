"""Repeated log lines are limited: the first of a kind passes, repeats in the window are counted and reported once."""

from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluice.clock import FakeClock
from sluice.telemetry._log_limit import RepeatLimiter, limit_repeats


class Lines:
    """A logger whose only handler writes to a buffer, behind a ``RepeatLimiter`` on a fake clock."""

    def __init__(self, name: str, window_s: float = 60.0) -> None:
        self.clock = FakeClock()
        self.buffer = io.StringIO()
        self.handler = logging.StreamHandler(self.buffer)
        self.handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        (self.limiter,) = limit_repeats([self.handler], self.clock, window_s=window_s)
        self.log = logging.getLogger(name)
        self.log.propagate = False
        self.log.setLevel(logging.DEBUG)
        self.log.addHandler(self.handler)

    def lines(self) -> list[str]:
        return self.buffer.getvalue().splitlines()

    def close(self) -> None:
        self.log.removeHandler(self.handler)
        self.log.propagate = True


@pytest.fixture
def out(request: pytest.FixtureRequest) -> Iterator[Lines]:
    lines = Lines(f"test.log_limit.{request.node.name}")
    yield lines
    lines.close()


def test_the_first_line_passes_and_repeats_within_the_window_are_dropped(out: Lines) -> None:
    for i in range(50):
        out.log.warning("store down (%s)", f"attempt {i}")
        out.clock.advance(1.0)  # one a second, for 50 s: all inside the 60 s window
    assert out.lines() == [f"WARNING {out.log.name} store down (attempt 0)"]


def test_when_the_window_ends_one_line_says_how_many_repeats_there_were(out: Lines) -> None:
    for i in range(60):
        out.log.warning("store down (%s)", i)
        out.clock.advance(1.0)
    out.log.warning("store down (%s)", "again")  # at 60 s: the window ended
    assert out.lines() == [
        f"WARNING {out.log.name} store down (0)",
        f"WARNING {out.log.name} store down (59) (repeated 59 times in the last 60 s)",
        f"WARNING {out.log.name} store down (again)",  # the first of a new window
    ]


def test_a_line_of_another_kind_also_writes_the_ended_windows_summary(out: Lines) -> None:
    out.log.error("boom %d", 1)
    out.log.error("boom %d", 2)
    out.log.error("boom %d", 3)
    out.clock.advance(61)
    out.log.info("something else")
    assert out.lines() == [
        f"ERROR {out.log.name} boom 1",
        f"ERROR {out.log.name} boom 3 (repeated 2 times in the last 60 s)",
        f"INFO {out.log.name} something else",
    ]


def test_kinds_are_template_logger_and_level(out: Lines) -> None:
    other = logging.getLogger(out.log.name + ".other")  # propagates to out.log's handler
    out.log.warning("a %s", 1)
    out.log.error("a %s", 1)  # another level
    other.warning("a %s", 1)  # another logger
    out.log.warning("b %s", 1)  # another template
    out.log.warning("a %s", 2)  # a repeat
    assert len(out.lines()) == 4


def test_a_window_without_repeats_ends_silently(out: Lines) -> None:
    out.log.warning("once")
    out.clock.advance(120)
    out.log.warning("once")
    assert out.lines() == [f"WARNING {out.log.name} once"] * 2


def test_flush_writes_pending_summaries_at_once(out: Lines) -> None:
    for _ in range(5):
        out.log.warning("flapping")
    out.limiter.flush()
    assert out.lines()[-1] == f"WARNING {out.log.name} flapping (repeated 4 times in the last 60 s)"
    out.limiter.flush()  # nothing left
    assert len(out.lines()) == 2


def test_lines_stay_bounded_over_an_hour_of_one_line_a_second(out: Lines) -> None:
    for _ in range(3600):
        out.log.warning("store down")
        out.clock.advance(1.0)
    assert 60 <= len(out.lines()) <= 2 * 60 + 1  # a first and a summary per minute, not 3600


def test_a_window_must_be_positive() -> None:
    with pytest.raises(ValueError):
        RepeatLimiter(FakeClock(), lambda record: None, window_s=0)


# -- a real gateway whose real Redis keeps going away ---------------------------------------------------------

KEY = "sk-sluice-log-limit-0123456789abcdef"
FLAPS = 4  # Redis stalls (SIGSTOP) and comes back (SIGCONT) this many times under traffic


def _degraded_events(url: str) -> float:
    from tests.conftest import metric_value

    return metric_value(url, "sluice_quota_store_degraded_events_total") or 0.0


def test_a_gateway_whose_redis_keeps_stalling_logs_each_kind_of_line_once(tmp_path: Path) -> None:
    """A Redis that stalls again and again (a fork on a big dataset, a network blip) made the gateway write the same
    few warnings at every outage; behind ``sluice serve``'s limiter each kind is written once per minute."""
    import httpx
    import yaml

    from sluice.config import SimSettings
    from sluice.identity import hash_key
    from tests.conftest import LiveSim, _start_redis, wait_until
    from tests.redis_server import free_port

    redis = _start_redis()
    sim = LiveSim(SimSettings(speed=1e6), model_name="m").__enter__()
    proc: subprocess.Popen[bytes] | None = None
    try:
        config = {
            "state": redis.url,
            "models": [{"name": "m", "engine": {"urls": [sim.url]}}],
            "tiers": {"t": {"requests": "100000/minute"}},
            "keys": [{"id": "k", "hash": hash_key(KEY), "tier": "t"}],
        }
        (tmp_path / "sluice.yaml").write_text(yaml.safe_dump(config))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log_path = tmp_path / "gateway.log"
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "sluice.cli", "serve", "--config", "sluice.yaml", "--port", str(port)],
                stdout=log_file, stderr=subprocess.STDOUT, cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        assert wait_until(lambda: _answers(url) or proc.poll() is not None, 60), log_path.read_text()
        assert proc.poll() is None, log_path.read_text()
        headers = {"authorization": f"Bearer {KEY}"}
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            assert client.post("/v1/chat/completions", json=body).status_code == 200
            statuses = []
            for flap in range(FLAPS):
                assert redis.proc is not None
                os.kill(redis.proc.pid, signal.SIGSTOP)
                try:
                    # traffic until the gateway saw this outage (bounded by count, not timed)
                    for _ in range(200):
                        statuses.append(client.post("/v1/chat/completions", json=body).status_code)
                        if _degraded_events(url) > flap:
                            break
                finally:
                    os.kill(redis.proc.pid, signal.SIGCONT)
                for _ in range(200):  # and until it is back on Redis
                    statuses.append(client.post("/v1/chat/completions", json=body).status_code)
                    if _metric(url, "sluice_quota_store_degraded") == 0:
                        break
        assert _degraded_events(url) >= FLAPS, "the gateway did not see every outage"
        assert statuses.count(200) >= FLAPS  # the traffic went on (limits fail open by default)
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGINT)  # Ctrl-C: it returns from main, which writes the pending summaries
            proc.wait(timeout=30)
        sim.__exit__(None, None, None)
        if redis.proc is not None:
            os.kill(redis.proc.pid, signal.SIGCONT)
        redis.kill()
    lines = [line for line in log_path.read_text().splitlines() if not line.startswith("{")]  # not the access log
    unavailable = [line for line in lines if line.startswith("state store unavailable")]
    assert len(unavailable) == 2, "\n".join(lines)  # the first outage, and at shutdown how many followed
    assert unavailable[1].endswith(f"(repeated {FLAPS - 1} times in the last 60 s)"), "\n".join(lines)
    assert len(lines) < 40, "\n".join(lines)  # startup lines and one of each kind, not one per outage


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url + "/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _metric(url: str, name: str) -> float | None:
    from tests.conftest import metric_value

    return metric_value(url, name)
