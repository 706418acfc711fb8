"""The admin API's engines view over a real launched fleet of simulated engines (``--backend sim`` processes):
listing, scaling up and down under light traffic with no failed request, restarting a replica while serving, the
tail of a replica's log, and the errors (OpenAI-shaped, with their reason)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sluice.clock import MonotonicClock
from sluice.config import parse_settings
from sluice.console import create_console_app
from sluice.engines import EngineLauncher, GpuPool, ReplicaPlanner, VisibleGpus
from sluice.engines.dialects import LaunchSpec
from sluice.identity import hash_key
from tests.conftest import LiveServer, process_alive, wait_until

MODEL = "m"
OTHER = "elsewhere"
ADMIN = "sk-admin-engines"
AUTH = {"authorization": f"Bearer {ADMIN}"}
BODY = {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}


class LightTraffic:
    """Two clients, each asking one answer after another (two at once: both replicas of two get some); every
    status counted."""

    def __init__(self, url: str) -> None:
        self.statuses: Counter[str] = Counter()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(url,), daemon=True) for _ in range(2)]
        for thread in self._threads:
            thread.start()

    def stop(self) -> Counter[str]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        return self.statuses

    def _run(self, url: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            while not self._stop.is_set():
                try:
                    r = client.post("/v1/chat/completions", json=BODY)
                    self.statuses[f"{r.status_code} {r.headers.get('x-sluice-reason', '')}".strip()] += 1
                except httpx.HTTPError as exc:
                    self.statuses[type(exc).__name__] += 1


def launched_sim(log_dir: Path) -> EngineLauncher:
    spec = LaunchSpec(model=MODEL, port=0, served_model_name=MODEL)
    planner = ReplicaPlanner("sim", spec, GpuPool(VisibleGpus((), "sim")))
    return EngineLauncher(planner.plan(1), MonotonicClock(), log_dir=log_dir, health_timeout_s=60,
                          warmup_model=MODEL, planner=planner)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, EngineLauncher]]:
    launcher = launched_sim(tmp_path_factory.mktemp("engine-logs"))
    settings = parse_settings({
        "auth": {"mode": "open", "admin_key_hash": hash_key(ADMIN)},
        "models": [{"name": MODEL, "engine": {"urls": launcher.urls}, "admission": {"enabled": False}},
                   {"name": OTHER, "sim": {"speed": 50}}],
    })
    with LiveServer(create_console_app(settings, launcher=launcher), 90, settings.server) as live:
        yield live, launcher


def engines(gateway: LiveServer) -> dict[str, dict[str, Any]]:
    r = httpx.get(gateway.url + "/admin/engines", headers=AUTH)
    assert r.status_code == 200, r.text
    return {row["model"]: row for row in r.json()["data"]}


def active(gateway: LiveServer) -> list[str]:
    return sorted(r["url"] for r in engines(gateway)[MODEL]["replicas"] if r["state"] == "active")


def post(gateway: LiveServer, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(gateway.url + path, json=body, headers=AUTH, timeout=30)


def settled(gateway: LiveServer, count: int) -> bool:
    row = engines(gateway)[MODEL]
    return (not row["fleet"]["scaling"] and not row["fleet"]["restarting"] and len(row["engines"]) == count
            and all(e["state"] == "healthy" for e in row["engines"]) and len(active(gateway)) == count)


def test_the_list_tells_launched_from_elsewhere_and_shows_each_process(gateway):
    live, launcher = gateway
    rows = engines(live)
    assert rows[OTHER]["launched"] is False and rows[OTHER]["engines"] == [] and rows[OTHER]["fleet"] is None
    mine = rows[MODEL]
    assert mine["launched"] is True and mine["autoscaled"] is False
    [engine] = mine["engines"]
    assert engine["url"] == launcher.urls[0] and engine["state"] == "healthy" and process_alive(engine["pid"])
    assert [r["url"] for r in mine["replicas"]] == launcher.urls
    assert mine["fleet"]["replicas"] == 1


def test_scale_up_then_down_under_light_traffic_loses_no_request(gateway):
    live, launcher = gateway
    first = launcher.urls[0]
    traffic = LightTraffic(live.url)
    try:
        up = post(live, "/admin/engines/scale", {"model": MODEL, "replicas": 2})
        assert up.status_code == 202, up.text
        assert up.json()["target"] == 2
        assert wait_until(lambda: settled(live, 2), timeout_s=60), engines(live)[MODEL]
        added = next(u for u in launcher.urls if u != first)
        pids = {e["pid"] for e in engines(live)[MODEL]["engines"]}
        served = Counter[str]()
        assert wait_until(lambda: served.update(r["url"] for r in engines(live)[MODEL]["replicas"]
                                                if r["outstanding"]) or added in served, timeout_s=30), \
            "the added replica got no traffic"
        down = post(live, "/admin/engines/scale", {"model": MODEL, "replicas": 1})
        assert down.status_code == 202, down.text
        assert wait_until(lambda: settled(live, 1), timeout_s=60), engines(live)[MODEL]
    finally:
        statuses = traffic.stop()
    assert statuses["200"] > 0 and set(statuses) == {"200"}, statuses
    [gone] = pids - {e["pid"] for e in engines(live)[MODEL]["engines"]}
    assert wait_until(lambda: not process_alive(gone)), "the removed engine still runs"


def test_a_restart_replaces_the_process_while_the_model_keeps_serving(gateway):
    live, _ = gateway
    assert post(live, "/admin/engines/scale", {"model": MODEL, "replicas": 2}).status_code == 202
    assert wait_until(lambda: settled(live, 2), timeout_s=60), engines(live)[MODEL]
    before = {e["url"]: e["pid"] for e in engines(live)[MODEL]["engines"]}
    target = sorted(before)[0]
    traffic = LightTraffic(live.url)
    try:
        answer = post(live, "/admin/engines/restart", {"model": MODEL, "url": target})
        assert answer.status_code == 202, answer.text
        assert target in answer.json()["fleet"]["restarting"]
        busy = post(live, "/admin/engines/restart", {"model": MODEL, "url": target})
        assert busy.status_code == 409 and busy.headers["x-sluice-reason"] == "engines_busy", busy.text
        assert wait_until(lambda: settled(live, 2) and before[target] not in
                          {e["pid"] for e in engines(live)[MODEL]["engines"]}, timeout_s=60), engines(live)[MODEL]
    finally:
        statuses = traffic.stop()
    assert statuses["200"] > 0 and set(statuses) == {"200"}, statuses
    assert wait_until(lambda: not process_alive(before[target])), "the restarted engine's old process still runs"
    assert engines(live)[MODEL]["fleet"]["last_error"] is None
    assert post(live, "/admin/engines/scale", {"model": MODEL, "replicas": 1}).status_code == 202
    assert wait_until(lambda: settled(live, 1), timeout_s=60)


def test_the_log_tail_is_the_replica_s_own_log(gateway):
    live, launcher = gateway
    url = launcher.urls[0]
    path = Path(str(launcher.snapshot()[0]["log_path"]))
    written = path.read_text(errors="replace").splitlines()
    assert written, "the simulator wrote nothing to its log"
    r = httpx.get(live.url + "/admin/engines/logs", params={"model": MODEL, "url": url, "lines": 3}, headers=AUTH)
    assert r.status_code == 200, r.text
    tail = r.json()["lines"]
    assert 1 <= len(tail) <= 3 and tail == path.read_text(errors="replace").splitlines()[-len(tail):]
    whole = httpx.get(live.url + "/admin/engines/logs", params={"model": MODEL, "url": url}, headers=AUTH).json()
    assert whole["lines"] == path.read_text(errors="replace").splitlines()[-200:]


def error(r: httpx.Response, status: int, reason: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["x-sluice-reason"] == reason
    body = r.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


def test_bad_requests_are_refused_with_openai_shaped_errors(gateway):
    live, launcher = gateway
    assert error(post(live, "/admin/engines/scale", {"model": "nope", "replicas": 1}), 404, "not_found")["code"] \
        == "model_not_found"
    assert error(post(live, "/admin/engines/scale", {"model": OTHER, "replicas": 2}), 409, "not_launched")
    assert error(post(live, "/admin/engines/scale", {"model": MODEL, "replicas": -1}), 400, "invalid_request")
    assert error(post(live, "/admin/engines/scale", {"model": MODEL, "replicas": 1000}), 400, "invalid_request")
    unknown = post(live, "/admin/engines/restart", {"model": MODEL, "url": "http://127.0.0.1:1"})
    assert error(unknown, 404, "not_found")["code"] == "replica_not_found"
    logs = live.url + "/admin/engines/logs"
    assert error(httpx.get(logs, params={"model": MODEL, "url": "/etc/passwd"}, headers=AUTH), 404, "not_found")
    assert error(httpx.get(logs, params={"model": MODEL, "url": launcher.urls[0], "lines": "x"}, headers=AUTH),
                 400, "invalid_request")["param"] == "lines"
    assert error(httpx.get(logs, params={"model": MODEL}, headers=AUTH), 400, "invalid_request")
    assert error(httpx.get(live.url + "/admin/engines"), 401, "auth")
    assert error(httpx.post(live.url + "/admin/engines/scale", content=b"{", headers=AUTH), 400, "invalid_request")


def test_an_autoscaled_fleet_refuses_a_manual_scale(tmp_path: Path) -> None:
    launcher = launched_sim(tmp_path)
    settings = parse_settings({
        "auth": {"mode": "open", "admin_key_hash": hash_key(ADMIN)},
        "models": [{"name": MODEL, "engine": {"urls": launcher.urls}, "admission": {"enabled": False},
                    "autoscale": {"actuator": "launcher", "min_replicas": 1, "max_replicas": 2}}],
    })
    with LiveServer(create_console_app(settings, launcher=launcher), 90, settings.server) as live:
        assert engines(live)[MODEL]["autoscaled"] is True
        refused = error(post(live, "/admin/engines/scale", {"model": MODEL, "replicas": 2}), 409,
                        "autoscaler_owns_count")
        assert refused["param"] == "replicas" and "autoscale" in refused["message"]
        assert len(launcher.urls) == 1
