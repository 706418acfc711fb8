"""The live view's per-replica readings: the gateway's TTFT/TPOT of each replica and the engine's own load (running,
waiting, KV use, age of the reading), health as a fault moves it, the remaining budget per tier and tenant, the
replica table and TTFT chart in a real Chromium; and the embedded default's console (`sluice serve`, no config):
a key made for the run, printed once, that logs in."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from sluice.config import SimSettings, parse_settings
from sluice.identity import generate_key, hash_key
from sluice.telemetry import ReplicaTimings
from tests.conftest import LiveSim, wait_until
from tests.console.browser import chromium_browser
from tests.console.console_server import logged_in, serve_console

ADMIN_KEY = generate_key()
ACME_KEY = generate_key()
GLOBEX_KEY = generate_key()
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "img"
STREAM = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 24, "stream": True}
CONSOLE_LINE = re.compile(r"Console: (http://\S+/console) - .*: (sk-\S+)")


def _settings(urls: list[str]) -> object:
    return parse_settings({
        "auth": {"admin_key_hash": hash_key(ADMIN_KEY)},
        "models": [{"name": "m", "engine": {"urls": urls, "health_interval_s": 0.5, "gpu": {}},  # sims' DCGM gauges
                    "admission": {"saturation": {"scrape_interval_s": 0.1, "stale_after_s": 1.0}}}],
        "tiers": {"team": {"requests": "1000/minute",
                           "limits": [{"per": "tier", "requests": "500/minute"},
                                      {"per": "tenant", "tokens": "100000/minute"}]}},
        "keys": [{"id": "acme-key", "hash": hash_key(ACME_KEY), "tenant": "acme", "tier": "team"},
                 {"id": "globex-key", "hash": hash_key(GLOBEX_KEY), "tenant": "globex", "tier": "team"}],
    })


@pytest.fixture(scope="module")
def sims():
    slow = SimSettings(speed=2.0, max_num_seqs=4)  # few seats: requests wait in the engine, as under real load
    with LiveSim(slow, "m") as first, LiveSim(slow, "m") as second:
        yield first, second


@pytest.fixture(scope="module")
def gateway(sims):
    with serve_console(_settings([s.url for s in sims])) as live:
        yield live.url


def stream(url: str, key: str) -> int:
    with httpx.stream("POST", url + "/v1/chat/completions", json=STREAM, timeout=60,
                      headers={"authorization": f"Bearer {key}"}) as answer:
        for _ in answer.iter_bytes():
            pass
        return answer.status_code


def load(url: str, requests: int, workers: int = 12) -> tuple[threading.Thread, list[int]]:
    statuses: list[int] = []
    per_worker = requests // workers
    threads = [threading.Thread(target=lambda i=i: statuses.extend(
        stream(url, ACME_KEY if i % 2 else GLOBEX_KEY) for _ in range(per_worker))) for i in range(workers)]
    runner = threading.Thread(target=lambda: [t.start() for t in threads] and [t.join() for t in threads])
    runner.start()
    return runner, statuses


def console_client(url: str, key: str = ADMIN_KEY) -> httpx.Client:
    """A logged-in client that sends its session's CSRF token, as the page does."""
    client, csrf = logged_in(url, key)
    client.headers["x-sluice-csrf"] = csrf
    return client


def replicas(client: httpx.Client) -> list[dict]:
    return client.get("/console/api/snapshot").json()["pools"][0]["replicas"]


def test_the_snapshot_carries_each_replicas_ttft_and_engine_readings_under_load(gateway, sims):
    client = console_client(gateway)
    runner, statuses = load(gateway, 48)
    busy: list[dict] = []
    # under load, the engines' own readings show requests running, and waiting (4 seats each, 12 streams)
    assert wait_until(lambda: busy.extend(r for r in replicas(client) if (r["engine"] or {}).get("running"))
                      or len(busy) > 0, timeout_s=30)
    runner.join()
    assert statuses == [200] * 48
    answered = replicas(client)
    assert {r["url"] for r in answered} == {s.url for s in sims}
    for replica in answered:
        assert replica["health"] == "up"
        gpu = replica["gpu_use"]  # the simulator's dcgm-exporter gauges, read by the load scraper
        assert 0.0 <= gpu["utilization"] <= 1.0 and gpu["gpus"] == 1
        assert gpu["fb_used_mib"] >= SimSettings().gpu_weights_mib and gpu["fb_free_mib"] > 0
        engine = replica["engine"]
        assert engine["error"] is None and engine["stale"] is False and 0 <= engine["age_s"] <= 1.0
        assert 0.0 <= engine["kv_usage"] <= 1.0
        assert replica["ttft_s"]["count"] >= 1 and 0 < replica["ttft_s"]["p50"] <= replica["ttft_s"]["p95"]
        assert replica["tpot_s"]["p50"] > 0  # streamed answers of 24 tokens
        assert replica["ttft_series"] and all(ago >= 0 and ttft > 0 for ago, ttft in replica["ttft_series"])
    assert sum(r["answers_last_min"] for r in answered) == 48
    assert max(r["engine"]["running"] for r in busy) >= 1


def test_the_budgets_count_what_each_tier_and_tenant_spent(gateway):
    client = console_client(gateway)
    before = {(b["per"], b["tenant"], b["kind"]): b for b in client.get("/console/api/snapshot").json()["budgets"]}
    assert [stream(gateway, ACME_KEY) for _ in range(3)] == [200] * 3
    after = {(b["per"], b["tenant"], b["kind"]): b for b in client.get("/console/api/snapshot").json()["budgets"]}
    shared = after[("tier", None, "requests")]
    assert shared["limit"] == 500 and shared["period_s"] == 60
    assert shared["used"] == before[("tier", None, "requests")]["used"] + 3
    assert shared["remaining"] == 500 - shared["used"]
    acme = after[("tenant", "acme", "tokens")]
    assert acme["used"] > before.get(("tenant", "acme", "tokens"), {"used": 0})["used"]
    assert acme["remaining"] == 100000 - acme["used"]
    assert after[("key", None, "requests")]["remaining"] is None  # one bucket per key: not summed here


def test_a_replica_that_stops_answering_shows_unread_then_down(sims):
    doomed = LiveSim(SimSettings(speed=20.0), "m").__enter__()
    running = True
    try:
        with serve_console(_settings([sims[0].url, doomed.url])) as live:
            client = console_client(live.url)

            def health() -> dict[str, str]:
                return {r["url"]: r["health"] for r in replicas(client)}

            assert wait_until(lambda: health().get(doomed.url) == "up", timeout_s=10)
            running = False
            doomed.__exit__(None, None, None)  # the engine is gone: scrapes and health probes fail
            assert wait_until(lambda: health().get(doomed.url) in ("unread", "down"), timeout_s=15)
            gone = next(r for r in replicas(client) if r["url"] == doomed.url)
            assert gone["engine"]["error"] is not None
            assert health()[sims[0].url] == "up"
    finally:
        if running:
            doomed.__exit__(None, None, None)


def test_the_replica_table_and_ttft_chart_show_the_readings(gateway):
    browser_iter = chromium_browser()
    browser = next(browser_iter)
    try:
        runner, statuses = load(gateway, 144)
        context = browser.new_context(viewport={"width": 1366, "height": 1000})
        page = context.new_page()
        page.goto(gateway + "/console")
        page.fill("#key", ADMIN_KEY)
        page.click("button[type=submit]")
        page.wait_for_selector("#status:has-text('live')", timeout=10_000)
        runner.join()
        assert statuses == [200] * 144
        page.wait_for_selector("#replicas tbody tr:nth-child(2)", timeout=10_000)
        page.wait_for_selector("#chart-ttft polyline:nth-of-type(2)", state="attached", timeout=10_000)  # a line each
        rows = page.locator("#replicas tbody tr")
        for i in range(rows.count()):
            cells = rows.nth(i).locator("td").all_inner_texts()
            assert cells[2] == "up"
            assert re.fullmatch(r"\d+(\.\d+)? s", cells[8]), cells  # the reading's age
            assert re.fullmatch(r"\d+\.\d{3} / \d+\.\d{3} s", cells[10]), cells  # TTFT p50 / p95
            assert re.fullmatch(r"\d+ %, \d+\.\d / \d+\.\d GiB", cells[9]), cells  # GPU use, memory
        assert page.locator("#budgets td:text-is('acme')").count() >= 1
        page.screenshot(path=str(SCREENSHOTS / "console-live.png"), full_page=True)
        context.close()
    finally:
        browser_iter.close()


def test_the_embedded_default_prints_a_key_that_opens_the_console(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "SLUICE_CONFIG"}
    err = tmp_path / "stderr.log"
    with open(err, "wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "sluice.cli", "serve", "--port", "0"],
                                stdout=sink, stderr=subprocess.STDOUT, env={**env, "PYTHONUNBUFFERED": "1"})
    try:
        assert wait_until(lambda: CONSOLE_LINE.search(err.read_text()) is not None, timeout_s=30), err.read_text()
        match = CONSOLE_LINE.search(err.read_text())
        assert match is not None
        console_url, key = match.groups()
        base = console_url.removesuffix("/console")
        assert base.startswith("http://127.0.0.1:")
        assert httpx.post(base + "/console/login", data={"key": "sk-wrong"}).status_code == 401
        started = time.perf_counter()
        client = console_client(base, key)
        page = client.get("/console")
        assets = [client.get(f"/console/{name}") for name in ("console.js", "console.css")]
        snapshot = client.get("/console/api/snapshot")
        loaded_s = time.perf_counter() - started
        print(f"embedded console: login, page, assets and first snapshot in {loaded_s * 1000:.0f} ms")
        assert page.status_code == 200 and "view-live" in page.text
        assert all(a.status_code == 200 for a in assets) and snapshot.status_code == 200
        assert snapshot.json()["pools"][0]["model"]
        assert err.read_text().count(key) == 1  # printed once; the login after it logged nothing of it
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def test_replica_timings_keep_the_last_minute_and_forget_the_window_past():
    timings = ReplicaTimings(span_s=300)
    for i in range(100):  # one answer a second, TTFT i ms, until second 1099
        timings.record("m", "http://a", 1000.0 + i, ttft_s=i / 1000, tpot_s=0.01)
    view = timings.view("m", "http://a", now_s=1099.5)
    assert view["answers_last_min"] == 60 and view["ttft_s"]["count"] == 60  # seconds 1040..1099
    assert view["ttft_s"]["p50"] == 0.07 and view["ttft_s"]["p95"] == 0.097
    assert view["ttft_series"][0] == [99, 0.0] and view["ttft_series"][-1] == [0, 0.099]
    timings.record("m", "http://a", 1500.0, ttft_s=0.5, tpot_s=None)  # 400 s later: the old seconds go
    later = timings.view("m", "http://a", now_s=1500.0)
    assert later["ttft_series"] == [[0, 0.5]] and later["tpot_s"] is None
    assert timings.view("m", "http://never", now_s=1500.0)["ttft_s"] is None
