"""End to end: the autoscaler starts launched simulator replicas under overload, the gateway routes to them, and
it drains and stops them after, with no request lost on the way down."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from sluice.clock import MonotonicClock
from sluice.config import parse_settings
from sluice.engines import EngineLauncher, GpuPool, ReplicaPlanner, VisibleGpus
from sluice.engines.dialects import LaunchSpec
from sluice.identity import hash_key
from tests.conftest import LiveServer, metric_value, process_alive, serve_gateway, wait_until

MODEL = "m"
ADMIN = "sk-admin-autoscale"
BODY = {"model": MODEL, "max_tokens": 20, "ignore_eos": True, "messages": [{"role": "user", "content": "hi"}]}


class Load:
    """``clients`` threads asking one answer after another; every status counted."""

    def __init__(self, url: str, clients: int) -> None:
        self.url = url
        self.statuses: Counter[str] = Counter()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set():
                try:
                    r = client.post("/v1/chat/completions", json=BODY)
                    self.statuses[f"{r.status_code} {r.headers.get('x-sluice-reason', '')}".strip()] += 1
                except httpx.HTTPError as exc:
                    self.statuses[type(exc).__name__] += 1


def replicas(gateway: LiveServer) -> list[dict[str, Any]]:
    r = httpx.get(gateway.url + f"/admin/replicas?model={MODEL}", headers={"authorization": f"Bearer {ADMIN}"})
    return list(r.json()["data"][0]["replicas"])


def test_autoscaler_launches_replicas_under_overload_and_stops_them_after(tmp_path: Path) -> None:
    # Each simulated engine has two seats and no queue: a third request at once is refused (503 engine_overloaded).
    spec = LaunchSpec(model=MODEL, port=0, served_model_name=MODEL,
                      extra_args=("--max-num-seqs", "2", "--max-waiting", "0"))
    planner = ReplicaPlanner("sim", spec, GpuPool(VisibleGpus((), "sim")))
    launcher = EngineLauncher(planner.plan(1), MonotonicClock(), log_dir=tmp_path, health_timeout_s=60,
                              warmup_model=MODEL, planner=planner)
    settings = parse_settings({
        "auth": {"mode": "open", "admin_key_hash": hash_key(ADMIN)},
        "models": [{"name": MODEL, "engine": {"urls": launcher.urls}, "admission": {"enabled": False},
                    "autoscale": {"actuator": "launcher", "min_replicas": 1, "max_replicas": 3, "check_s": 0.2,
                                  "window_s": 1.5, "min_requests": 5, "cooldown_up_s": 0.5, "cooldown_down_s": 1.0,
                                  "scale_down_window_s": 2.0, "settle_timeout_s": 60}}],
    })
    with serve_gateway(settings, launcher=launcher, start_timeout_s=90) as gateway:
        overload = Load(gateway.url, clients=5)  # five at once on two seats
        try:
            assert wait_until(lambda: len(launcher.urls) == 3, timeout_s=90), f"no scale-up: {overload.statuses}"
            assert wait_until(lambda: len([r for r in replicas(gateway) if r["state"] == "active"]) == 3)
            assert {r["sources"][0] for r in replicas(gateway)} == {"launcher"}
            served = Counter[str]()
            assert wait_until(lambda: served.update(r["url"] for r in replicas(gateway) if r["outstanding"])
                              or len(served) == 3, timeout_s=30), "a launched replica got no traffic"
        finally:
            overload.stop()
        assert overload.statuses["200"] > 0 and set(overload.statuses) <= {"200", "503 engine_overloaded"}, \
            overload.statuses

        calm = Load(gateway.url, clients=1)  # light traffic while replicas drain and stop: none may be lost
        try:
            launched = {c["url"]: c["pid"] for c in launcher.snapshot()}  # the replica removed may be any of them
            assert wait_until(lambda: len(launcher.urls) == 1, timeout_s=90), "no scale-down after the overload"
        finally:
            calm.stop()
        assert set(calm.statuses) == {"200"}, calm.statuses
        assert [r["url"] for r in replicas(gateway)] == launcher.urls
        pids = [pid for url, pid in launched.items() if url not in launcher.urls]
        assert len(pids) == 2 and wait_until(lambda: not any(process_alive(int(pid)) for pid in pids)), \
            "a removed engine still runs"
        ups = metric_value(gateway.url, "sluice_autoscaler_decisions_total", model=MODEL, direction="up",
                           reason="refusals")
        downs = metric_value(gateway.url, "sluice_autoscaler_decisions_total", model=MODEL, direction="down",
                             reason="calm")
        assert ups and ups >= 1 and downs and downs >= 2
