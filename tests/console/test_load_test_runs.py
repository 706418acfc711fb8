"""Load tests from the console kept on disk: each ended run's directory (summary, results, plots), read back by a
new console, its plots served by name only, two runs compared, and the plot loading in a real browser."""

from __future__ import annotations

import json

import httpx
import pytest

from sluice.clock import MonotonicClock
from sluice.config import parse_settings
from sluice.console._load_tests import RUNS_DIR_ENV, LoadTests
from sluice.identity import generate_key, hash_key
from tests.conftest import wait_until
from tests.console.browser import chromium_browser
from tests.console.console_server import logged_in, serve_console

ADMIN_KEY = generate_key()
RUN = {"model": "m", "concurrency": 2, "duration_s": 1.0, "input_len": "16", "output_len": "8"}


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def console(runs_dir):
    settings = parse_settings({"auth": {"mode": "open", "admin_key_hash": hash_key(ADMIN_KEY)},
                               "models": [{"name": "m", "sim": {"speed": 200}}]})
    with pytest.MonkeyPatch.context() as env:
        env.setenv(RUNS_DIR_ENV, str(runs_dir))
        with serve_console(settings) as live:
            yield live.url


@pytest.fixture(scope="module")
def session(console):
    client, csrf = logged_in(console, ADMIN_KEY)
    client.headers["x-sluice-csrf"] = csrf
    return client


def run_to_the_end(session: httpx.Client, spec: dict) -> dict:
    started = session.post("/console/api/loadtests", json=spec)
    assert started.status_code == 201, started.text
    number = started.json()["id"]

    def ended() -> dict | None:
        run = next(r for r in session.get("/console/api/loadtests").json()["data"] if r["id"] == number)
        return run if run["state"] != "running" and run["plots"] else None

    assert wait_until(lambda: ended() is not None, timeout_s=30)
    return ended()


@pytest.fixture(scope="module")
def two_runs(session):
    return run_to_the_end(session, RUN), run_to_the_end(session, {**RUN, "concurrency": 4})


def test_an_ended_run_is_written_with_its_summary_results_and_plots(two_runs, runs_dir):
    first, _ = two_runs
    assert first["state"] == "finished"
    run_dir = runs_dir / first["dir"]
    assert run_dir.name.startswith(f"{first['id']}-")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["requests"]["sent"] == first["summary"]["requests"]["sent"] > 0
    assert summary["settings"]["concurrency"] == 2 and "api_key" not in summary["settings"]
    results = (run_dir / "results.jsonl").read_text().splitlines()
    assert len(results) == summary["requests"]["sent"]
    assert sorted(first["plots"]) == ["latency_cdf.png", "timeline.png"]
    for name in first["plots"]:
        assert (run_dir / name).read_bytes().startswith(b"\x89PNG")


def test_a_new_console_over_the_same_directory_lists_the_runs_and_numbers_on(two_runs, runs_dir):
    first, second = two_runs
    again = LoadTests(MonotonicClock(), runs_dir)
    listed = {run["id"]: run for run in again.list()}
    assert set(listed) == {first["id"], second["id"]}
    assert listed[first["id"]]["summary"]["throughput"] == first["summary"]["throughput"]
    assert listed[first["id"]]["progress"] == first["progress"]
    assert listed[second["id"]]["plots"] == second["plots"] and listed[second["id"]]["table"]
    assert next(again._numbers) == max(first["id"], second["id"]) + 1


def test_the_plot_route_serves_the_runs_png_and_nothing_else(session, two_runs):
    first, _ = two_runs
    answer = session.get("/console/api/loadtests/plot", params={"id": first["id"], "name": "timeline.png"})
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
    assert answer.content.startswith(b"\x89PNG")
    for name in ("summary.json", "../summary.json", f"../{first['dir']}/timeline.png", "nope.png", ""):
        refused = session.get("/console/api/loadtests/plot", params={"id": first["id"], "name": name})
        assert refused.status_code == 404, name
        assert set(refused.json()["error"]) == {"message", "type", "param", "code"}
        assert refused.headers["x-sluice-reason"]
    assert session.get("/console/api/loadtests/plot", params={"id": 999, "name": "timeline.png"}).status_code == 404
    assert session.get("/console/api/loadtests/plot", params={"id": "x", "name": "timeline.png"}).status_code == 400
    stranger = httpx.get(session.base_url.join("/console/api/loadtests/plot"),
                         params={"id": first["id"], "name": "timeline.png"})
    assert stranger.status_code == 401


def test_compare_gives_the_figures_side_by_side_with_ratios_to_the_first(session, two_runs):
    first, second = two_runs
    answer = session.get("/console/api/loadtests/compare", params={"ids": f"{first['id']},{second['id']}"})
    assert answer.status_code == 200, answer.text
    doc = answer.json()
    assert doc["base"] == first["id"] and [r["id"] for r in doc["runs"]] == [first["id"], second["id"]]
    base, other = doc["runs"]
    assert base["figures"]["output_tokens_per_s"] == first["summary"]["throughput"]["output_tokens_per_s"]
    assert other["figures"]["ttft_p99_ms"] == second["summary"]["latency_ms"]["ttft"]["p99"]
    assert base["ratios"]["output_tokens_per_s"] == 1.0
    expected = other["figures"]["output_tokens_per_s"] / base["figures"]["output_tokens_per_s"]
    assert other["ratios"]["output_tokens_per_s"] == pytest.approx(expected, rel=1e-3)
    assert {"goodput_requests_per_s", "tpot_p50_ms", "rejected"} <= set(base["figures"])
    assert session.get("/console/api/loadtests/compare", params={"ids": str(first["id"])}).status_code == 400
    assert session.get("/console/api/loadtests/compare", params={"ids": "1,x"}).status_code == 400


def test_the_runs_plot_loads_and_two_runs_compare_in_the_browser(console, two_runs):
    for browser in chromium_browser():
        context = browser.new_context()
        page = context.new_page()
        page.goto(console + "/console")
        page.fill("#key", ADMIN_KEY)
        page.click("button[type=submit]")
        page.click("nav button[data-view=loadtests]")
        image = page.wait_for_selector("#loadtest-plots img[data-plot='timeline.png']", timeout=10_000)
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image, timeout=10_000)
        assert image.evaluate("img => img.naturalWidth") > 0
        for run in two_runs:
            page.check(f"#loadtests input[name=compare][value='{run['id']}']")
        page.click("#compare-loadtests")
        page.wait_for_selector("#loadtest-compare:not([hidden]) tbody tr", timeout=10_000)
        compared = page.inner_text("#loadtest-compare")
        assert f"run {two_runs[1]['id']} (x run {two_runs[0]['id']})" in compared and "output_tokens_per_s" in compared
        context.close()
