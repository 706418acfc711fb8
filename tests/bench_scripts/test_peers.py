"""bench.peers and bench.profile_gateway: the configs they hand each proxy, how they count CPU and fold a profile."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bench import harness, profile_gateway
from bench.peers import proxies, report
from sluice.config.loader import load_settings


def _upstream(tmp_path: Path) -> proxies.Upstream:
    return proxies.Upstream("http://127.0.0.1:18001", 18001, "sk-test-key-0123456789abcdef", "redis://127.0.0.1:6399/0",
                            tmp_path)


@pytest.mark.parametrize("full", [False, True])
def test_sluice_configs_are_valid_settings(tmp_path: Path, full: bool) -> None:
    config = tmp_path / "sluice.yaml"
    config.write_text(proxies.sluice_yaml(18002, _upstream(tmp_path), full=full))
    settings = load_settings(config)
    model = settings.models[0]
    assert settings.server.access_log is full
    assert model.admission.enabled is full
    assert (settings.state == "memory://") is not full
    if full:
        assert settings.auth.mode == "api_key" and settings.keys[0].tier == "pro"
        assert settings.tiers["pro"].concurrent is not None and settings.tiers["pro"].concurrent >= 256


@pytest.mark.parametrize("part", proxies.KNOCKOUTS)
def test_a_knockout_is_everything_on_but_its_part(tmp_path: Path, part: str) -> None:
    full, without = (tmp_path / "full.yaml"), (tmp_path / "without.yaml")
    full.write_text(proxies.sluice_yaml(18002, _upstream(tmp_path), full=True))
    without.write_text(proxies.sluice_yaml(18002, _upstream(tmp_path), full=True, without=part))
    a, b = load_settings(full), load_settings(without)
    differs = {
        "quota": (a.tiers["pro"].rules() != [], b.tiers["pro"].rules() != []),
        "redis": (a.state, b.state),
        "admission": (a.models[0].admission.enabled, b.models[0].admission.enabled),
        "access_log": (a.server.access_log, b.server.access_log),
    }
    assert [name for name, (x, y) in differs.items() if x != y] == [part]
    assert b.auth.mode == "api_key" and b.keys[0].tier == "pro"


def test_nginx_and_envoy_configs_name_one_worker_the_upstream_and_no_buffering(tmp_path: Path) -> None:
    up = _upstream(tmp_path)
    nginx = proxies.nginx_conf(18003, up, tmp_path)
    assert "worker_processes 1;" in nginx and "proxy_buffering off;" in nginx
    assert "server 127.0.0.1:18001; keepalive" in nginx and "listen 127.0.0.1:18003;" in nginx
    envoy = proxies.envoy_yaml(18004, up)
    assert "port_value: 18004" in envoy and "port_value: 18001" in envoy and "timeout: 0s" in envoy


def _frame(func: str, path: str) -> str:
    return f"{func} ({path}:1)"


def test_profile_samples_go_to_the_innermost_known_frame() -> None:
    src = "/work/src/sluice/"
    main = _frame("_serve_one", src + "cli.py")
    raw = "\n".join([
        # quota code calling orjson-like helpers: the quota step
        ";".join([main, _frame("proxy", src + "gateway/service.py"), _frame("reserve", src + "quota/_limiter.py"),
                  _frame("dumps", "/lib/json/__init__.py")]) + " 7",
        # a Sluice frame below which aiohttp runs: the upstream client
        ";".join([main, _frame("_send", src + "engines/_pool.py"), _frame("send", "/site/aiohttp/client.py")]) + " 5",
        # the library decides when it is innermost, even under Sluice's relay
        ";".join([main, _frame("take", src + "gateway/_relay.py"), _frame("write", "/site/uvicorn/h.py")]) + " 3",
        # the main and the clock are no step: the caller is; nothing known: the event loop
        ";".join([main, _frame("_admit", src + "admission/_gate.py"), _frame("now", src + "clock.py")]) + " 2",
        main + " 4",
        "not a sample line",
    ])
    folded = profile_gateway.fold(raw)
    assert folded["samples"] == 21
    steps = folded["steps"]
    assert steps["quota (limiter, Redis store, batching, headers)"] == 7
    assert steps["upstream client (engine call and its answer)"] == 5
    assert steps["HTTP parse and server (uvicorn, httptools, Sluice's protocol)"] == 3
    assert steps["admission"] == 2
    assert steps[profile_gateway.EVENT_LOOP] == 4
    assert folded["top_sluice_functions"]["reserve (quota/_limiter.py)"] == 7


def _round(requests: int, proxy_cpu_s: float | None, p50_us: int = 1000, p99_us: int = 2000,
           bytes_: int = 0) -> dict[str, Any]:
    r: dict[str, Any] = {"rps": requests / 5, "p50_us": p50_us, "p99_us": p99_us, "requests": requests, "errors": 0,
                         "bytes": bytes_, "sim_cpu_s": 1.0, "elapsed_s": 5.0}
    if proxy_cpu_s is not None:
        r["proxy_cpu_s"] = proxy_cpu_s
    return r


def test_report_ratios_to_the_bare_proxy_and_the_best_peer() -> None:
    def target(cpu_s: float | None, p50_us: int, chunk_cpu_s: float | None) -> dict[str, list[dict[str, Any]]]:
        return {**{s: [_round(1000, cpu_s, p50_us)] * 2 for s in ("c1/full", "c1/stream", "c64/full", "c64/stream")},
                "long": [_round(100, chunk_cpu_s, bytes_=200_000)]}

    runs = {"direct": target(None, 1000, None), "bare_proxy": target(0.4, 1500, 0.004),
            "sluice_full": target(0.8, 1800, 0.006), "nginx": target(0.05, 1100, 0.001),
            "envoy": target(0.2, 1300, 0.002)}
    summary = report.summarise(runs, frame_bytes=200.0)  # 1000 frames relayed in the long run
    sc, d = summary["scenarios"], summary["derived"]
    assert sc["bare_proxy"]["c64/full"]["cpu_us_per_request"] == pytest.approx(400)
    assert sc["sluice_full"]["long"]["cpu_us_per_chunk"] == pytest.approx(6)
    assert d["best_peer"]["c64/full"]["peer"] == "nginx"
    assert d["sluice_full"]["cpu_x_bare/c64/full"] == pytest.approx(2.0)
    assert d["sluice_full"]["cpu_x_best_peer/c64/full"] == pytest.approx(16.0)
    assert d["sluice_full"]["added_p50_ms/c1/full"] == pytest.approx(0.8)
    checks = d["targets"]
    assert not checks["sluice_full CPU/request x bare proxy (c64)"]["met"]
    assert checks["sluice_full added p50 at c1 (ms)"]["met"]
    table = report.markdown(summary, {"vllm_router": "pip install failed: no such version"}, {})
    assert "skipped: pip install failed: no such version" in table
    assert "| 800 / 800 | 2.00 / 2.00 | 16.00 / 16.00 |" in table


def test_tree_cpu_counts_descendants_and_start_passes_env(tmp_path: Path) -> None:
    procs = harness.Processes(tmp_path)
    burn = "x = 0\nfor i in range(3_000_000): x += i\nprint('burnt', flush=True)\nimport time; time.sleep(60)"
    parent = procs.start("parent", harness.ANY_CPU, [sys.executable, "-c", (
        "import os, subprocess, sys, time; "
        "print(os.environ['PEERS_TEST'], file=sys.stderr, flush=True); "
        f"subprocess.Popen([sys.executable, '-c', {burn!r}], stdout=sys.stderr); time.sleep(60)")],
        env={"PEERS_TEST": "handed-down"})
    tree = [parent.pid]
    try:
        deadline = time.monotonic() + 30
        while "burnt" not in parent.log_tail() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert parent.log_tail().splitlines()[:2] == ["handed-down", "burnt"]
        tree = harness.process_tree(parent.pid)
        assert len(tree) == 2 and tree[0] == parent.pid
        assert parent.tree_cpu_s() > parent.cpu_s()
        with pytest.raises(FileNotFoundError):
            harness.process_cpu_s(2**22 + 7)  # a pid that is not there
    finally:
        for pid in tree[1:]:  # the grandchild, by its pid (stop_all stops the parent)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        procs.stop_all()
