"""sluice bench against a live engine simulator (started in-process on a free port)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sluice.bench import (
    Constant,
    Fixed,
    LoadSpec,
    Poisson,
    RequestShape,
    Tenant,
    Uniform,
    run_load,
    summarize,
)
from sluice.clock import MonotonicClock
from sluice.config import SimSettings

MODEL = "bench-sim"
FAST = SimSettings(speed=50.0, max_model_len=512, num_kv_blocks=1024, output_len_min=4, output_len_max=40)


@pytest.fixture
async def sim() -> AsyncIterator[str]:
    from sluice.sim import SimServer

    server = await SimServer.start(FAST, model_name=MODEL)
    yield server.url
    await server.stop()


TENANTS = (Tenant("a", Uniform(5, 20), Fixed(12), weight=2.0), Tenant("b", Fixed(8), Uniform(3, 9)))


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
async def test_open_loop_streamed_measures_every_token(sim: str, endpoint: str) -> None:
    shape = RequestShape(sim, MODEL, endpoint=endpoint)
    record = await run_load(shape, LoadSpec(Poisson(200.0), requests=30), TENANTS, seed=3, clock=MonotonicClock())
    assert [r.index for r in record.results] == list(range(30))
    for r in record.results:
        assert r.ok and r.status == 200, r
        assert r.output_tokens == r.output_len  # ignore_eos: exactly max_tokens
        assert len(r.itl_s) == r.output_tokens - 1  # the simulator sends one chunk per token
        assert r.ttft_s is not None and r.e2e_s is not None and 0 < r.ttft_s <= r.e2e_s
        assert r.tpot_s == pytest.approx((r.e2e_s - r.ttft_s) / (r.output_tokens - 1))
        assert r.prompt_tokens is not None and r.prompt_tokens >= r.input_len
    s = summarize(record.results, duration_s=record.duration_s, tenants=TENANTS)
    assert s["requests"]["succeeded"] == 30
    assert s["throughput"]["output_tokens"] == sum(r.output_len for r in record.results)


async def test_same_seed_same_requests(sim: str) -> None:
    shape = RequestShape(sim, MODEL, stream=False)
    runs = [await run_load(shape, LoadSpec(concurrency=4, requests=12), TENANTS, seed=9, clock=MonotonicClock())
            for _ in range(2)]
    key = [[(r.tenant, r.input_len, r.output_len, r.prompt_tokens) for r in run.results] for run in runs]
    assert key[0] == key[1]
    assert all(r.ok and r.output_tokens == r.output_len and r.tpot_s is None for r in runs[0].results)


async def test_closed_loop_for_a_duration_and_constant_rate(sim: str) -> None:
    shape = RequestShape(sim, MODEL)
    record = await run_load(shape, LoadSpec(concurrency=3, duration_s=0.5), TENANTS, seed=1, clock=MonotonicClock())
    assert len(record.results) >= 3 and all(r.ok for r in record.results)
    assert max(r.start_s for r in record.results) < 0.55  # none started after the duration (give or take a tick)
    record = await run_load(shape, LoadSpec(Constant(20.0), requests=6), TENANTS, seed=1, clock=MonotonicClock())
    starts = [r.start_s for r in record.results]
    assert starts == pytest.approx([0.05 * k for k in range(1, 7)], abs=0.04)


async def test_refusals_are_counted_by_status_and_reason() -> None:
    from sluice.sim import SimServer

    # One sequence at a time and no waiting room: everything arriving at once beyond the first is refused (503).
    server = await SimServer.start(SimSettings(decode_base_s=0.02, max_num_seqs=1, max_waiting=0), model_name=MODEL)
    try:
        record = await run_load(RequestShape(server.url, MODEL), LoadSpec(Poisson(float("inf")), requests=5),
                                (Tenant("t", Fixed(4), Fixed(8)),), seed=0, clock=MonotonicClock())
    finally:
        await server.stop()
    s = summarize(record.results, duration_s=record.duration_s, tenants=(Tenant("t", Fixed(4), Fixed(8)),))
    assert s["requests"]["succeeded"] >= 1
    assert s["requests"]["rejected"] == s["requests"]["failed"] >= 1
    assert s["errors"]["by_status"] == {"503": s["requests"]["failed"]}
    assert sum(s["errors"]["by_reason"].values()) == s["requests"]["failed"]
    assert "unknown" not in s["errors"]["by_reason"]
    assert s["goodput"]["rejection_rate"] == pytest.approx(s["requests"]["failed"] / 5)


async def test_connection_errors_are_results_not_exceptions() -> None:
    record = await run_load(RequestShape("http://127.0.0.1:9", MODEL, timeout_s=5), LoadSpec(concurrency=1, requests=2),
                            (Tenant("t", Fixed(4), Fixed(8)),), seed=0, clock=MonotonicClock())
    assert [(r.status, r.ok, r.reason) for r in record.results] == [(0, False, "connection_error")] * 2


def test_cli_writes_results_summary_and_plots(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from sluice.cli import main
    from tests.conftest import LiveSim

    out = tmp_path / "run"
    with LiveSim(FAST, model_name=MODEL) as live:
        code = main(["bench", "--base-url", live.url, "--model", MODEL, "--rate", "100", "--requests", "20",
                     "--input-len", "10-30", "--output-len", "8", "--tenants", "x,weight=1;y,output=4",
                     "--slo-ttft", "5", "--slo-tpot", "1", "--seed", "4", "--out", str(out), "--no-progress"])
    assert code == 0
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 20
    assert {json.loads(line)["output_tokens"] for line in lines} == {4, 8}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["rate_per_s"] == 100 and summary["settings"]["arrival"] == "poisson"
    assert summary["goodput"]["requests"] == 20
    assert set(summary["tenants"]) == {"x", "y"}
    for png in ("latency_cdf.png", "timeline.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_refuses_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    from sluice.cli import main

    assert main(["bench", "--base-url", "http://127.0.0.1:9", "--model", "m", "--input-len", "zipf"]) == 2
    assert main(["bench", "--base-url", "http://127.0.0.1:9", "--model", "m", "--concurrency", "0"]) == 2
    assert main(["bench", "--base-url", "http://127.0.0.1:9", "--model", "m", "--max-failures", "-1"]) == 2
    assert "configuration error" in capsys.readouterr().err


async def test_refusal_reason_from_header_else_body() -> None:
    from aiohttp import web

    async def refuse(request: web.Request) -> web.Response:
        if request.headers.get("authorization") == "Bearer sk-limited":
            return web.json_response({"error": {"message": "slow down", "type": "rate_limit_error", "code": None}},
                                     status=429, headers={"x-sluice-reason": "quota_requests"})
        return web.json_response({"error": {"message": "boom", "type": "InternalServerError", "code": 500}},
                                 status=500)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    tenants = (Tenant("limited", Fixed(3), Fixed(3), api_key="sk-limited"), Tenant("other", Fixed(3), Fixed(3)))
    try:
        record = await run_load(RequestShape(f"http://127.0.0.1:{port}", MODEL), LoadSpec(concurrency=2, requests=20),
                                tenants, seed=2, clock=MonotonicClock())
    finally:
        await runner.cleanup()
    s = summarize(record.results, duration_s=record.duration_s, tenants=tenants)
    limited, other = s["tenants"]["limited"], s["tenants"]["other"]
    assert limited["errors"]["by_reason"] == {"quota_requests": limited["requests"]["sent"]}
    assert other["errors"]["by_reason"] == {"500": other["requests"]["sent"]}  # the body's code, as text
    assert limited["requests"]["rejected"] == limited["requests"]["sent"] and other["requests"]["rejected"] == 0
    assert {r.error for r in record.results} == {"slow down", "boom"}


async def test_fit_span_sends_the_last_request_at_count_over_rate(sim: str) -> None:
    record = await run_load(RequestShape(sim, MODEL), LoadSpec(Poisson(40.0), requests=10, fit_span=True), TENANTS,
                            seed=8, clock=MonotonicClock())
    assert max(r.start_s for r in record.results) == pytest.approx(10 / 40.0, abs=0.03)
