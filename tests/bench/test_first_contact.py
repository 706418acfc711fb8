"""`sluice bench` as a first user runs it: the closed loop by default, a base URL with /v1, a drain that says
what it waits for and is bounded, errors shown with their status and message, an early stop when all fails."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluice.bench import Fixed, LoadSpec, RequestResult, RequestShape, Tenant, run_load
from sluice.cli import main
from sluice.clock import MonotonicClock
from sluice.config import SimSettings
from tests.conftest import LiveSim

MODEL = "bench-sim"
FAST = SimSettings(speed=50.0, max_model_len=512, num_kv_blocks=1024, output_len_min=4, output_len_max=40)
QUIET = ["--no-plots", "--no-progress"]


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A server that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def summary_of(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_without_rate_or_concurrency_it_runs_the_documented_closed_loop(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with LiveSim(FAST, model_name=MODEL) as live:
        code = main(["bench", "--base-url", live.url, "--model", MODEL, "--requests", "16", "--input-len", "8",
                     "--output-len", "4", "--out", str(out), *QUIET])
    assert code == 0
    summary = summary_of(out)
    assert summary["settings"]["concurrency"] == 8 and summary["settings"]["rate_per_s"] is None
    assert summary["requests"]["succeeded"] == 16


@pytest.mark.parametrize("suffix", ["/v1", "/v1/", "/"])
def test_a_base_url_with_or_without_v1_reaches_the_endpoint(tmp_path: Path, suffix: str) -> None:
    out = tmp_path / "run"
    with LiveSim(FAST, model_name=MODEL) as live:
        code = main(["bench", "--base-url", live.url + suffix, "--model", MODEL, "--requests", "4",
                     "--concurrency", "2", "--output-len", "4", "--out", str(out), *QUIET])
    assert code == 0
    assert summary_of(out)["requests"]["succeeded"] == 4


def test_after_the_duration_it_says_what_it_waits_for_and_cuts_it_at_the_drain_timeout(
        tmp_path: Path, silent_server: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code = main(["bench", "--base-url", silent_server, "--model", "m", "--concurrency", "2", "--duration", "0.3",
                 "--drain-timeout", "0.5", "--out", str(out), *QUIET])
    captured = capsys.readouterr()
    assert code == 1
    assert "waiting at most 0.5 s (--drain-timeout) for the 2 request(s) still in flight" in captured.err
    assert "wall time" in captured.out and "2 request(s) cut unfinished" in captured.out
    summary = summary_of(out)
    assert summary["cut"] == 2 and summary["errors"]["by_reason"] == {"drain_timeout": 2}
    assert summary["settings"]["drain_timeout_s"] == 0.5


async def test_the_drain_waits_for_requests_that_end_within_it() -> None:
    with LiveSim(FAST, model_name=MODEL) as live:
        record = await run_load(RequestShape(live.url, MODEL), LoadSpec(concurrency=3, duration_s=0.2,
                                                                        drain_timeout_s=60.0),
                                (Tenant("t", Fixed(4), Fixed(4)),), seed=0, clock=MonotonicClock())
    assert record.cut == 0 and record.results and all(r.ok for r in record.results)
    assert 0 <= record.drain_s <= record.duration_s


def test_it_stops_early_when_everything_fails_and_shows_status_and_message(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    with LiveSim(FAST, model_name=MODEL) as live:
        code = main(["bench", "--base-url", live.url, "--model", "nope", "--requests", "500", "--concurrency", "2",
                     "--max-failures", "5", "--out", str(out), *QUIET])
    captured = capsys.readouterr()
    assert code == 1
    assert ("stopped early: the first 5 requests all failed; most often 404: The model `nope` does not exist."
            in captured.err)
    assert "404: The model `nope` does not exist." in captured.out  # the table's most common errors
    summary = summary_of(out)
    assert summary["stopped_early"].startswith("the first 5 requests all failed")
    assert 5 <= summary["requests"]["sent"] < 500
    assert summary["errors"]["most_common"][0]["error"] == "404: The model `nope` does not exist."


def result(status: int, ok: bool = False, reason: str | None = None) -> RequestResult:
    return RequestResult(0, "t", 0.0, 1, 1, status=status, ok=ok, reason=reason, error=None if ok else "boom")


def test_the_watch_ignores_rejections_once_something_succeeded_but_not_failures_in_a_row() -> None:
    from sluice.bench._failure_watch import FailureWatch

    watch = FailureWatch(3)
    assert watch.observe(result(200, ok=True)) is None
    assert all(watch.observe(result(429, reason="quota_requests")) is None for _ in range(50))  # measured, not fatal
    assert watch.observe(result(500, reason="internal")) is None
    assert watch.observe(result(200, ok=True)) is None  # a success starts the count again
    assert watch.observe(result(500, reason="internal")) is None
    assert watch.observe(result(0, reason="connection_error")) is None
    assert watch.observe(result(500, reason="internal")) == (
        "3 requests in a row failed (429 and 503 not counted); most often 500 internal: boom")


def test_the_watch_stops_a_run_whose_first_requests_all_fail_even_by_rejection() -> None:
    from sluice.bench._failure_watch import FailureWatch

    watch = FailureWatch(2)
    assert watch.observe(result(429, reason="quota_tokens")) is None
    assert watch.observe(result(429, reason="quota_tokens")) == (
        "the first 2 requests all failed; most often 429 quota_tokens: boom")
    assert FailureWatch(0).observe(result(500)) is None  # 0: never
