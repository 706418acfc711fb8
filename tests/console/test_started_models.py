"""A NEW model started while the gateway runs (``POST /admin/engines/models``, backend sim: real simulator
processes): served under its name once its engines are healthy, listed as started at run time, scaled like a
launched one; stopped with a request in flight, which finishes while new ones are refused, then its processes end
and it leaves the list. Bad requests get OpenAI-shaped errors."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sluice.config import parse_settings
from sluice.console import create_console_app
from sluice.identity import hash_key
from tests.conftest import LiveServer, process_alive, wait_until

CONFIGURED = "configured"
NEW = "fresh-sim"
ADMIN = "sk-admin-started-models"
AUTH = {"authorization": f"Bearer {ADMIN}"}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    settings = parse_settings({
        "auth": {"mode": "open", "admin_key_hash": hash_key(ADMIN)},
        "models": [{"name": CONFIGURED, "sim": {"speed": 50}}],
        "console": {"engine_log_dir": str(tmp_path_factory.mktemp("engine-logs")), "engine_timeout_s": 60},
    })
    with LiveServer(create_console_app(settings), 90, settings.server) as server:
        yield server


def engines(live: LiveServer) -> dict[str, dict[str, Any]]:
    r = httpx.get(live.url + "/admin/engines", headers=AUTH)
    assert r.status_code == 200, r.text
    return {row["model"]: row for row in r.json()["data"]}


def post(live: LiveServer, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(live.url + path, json=body, headers=AUTH, timeout=30)


def chat(live: LiveServer, model: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": "hello there"}], **extra}
    return httpx.post(live.url + "/v1/chat/completions", json=body, timeout=60)


def error(r: httpx.Response, status: int, reason: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["x-sluice-reason"] == reason
    body = r.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


def serving(live: LiveServer, name: str, replicas: int = 1) -> bool:
    row = engines(live).get(name)
    return (row is not None and row.get("state") == "serving" and len(row["engines"]) == replicas
            and all(e["state"] == "healthy" for e in row["engines"])
            and len([r for r in row["replicas"] if r["state"] == "active"]) == replicas
            and not row["fleet"]["scaling"])


def test_a_model_started_at_run_time_is_served_scaled_then_stopped_after_its_requests(live):
    assert chat(live, NEW).status_code == 404  # not there yet
    started = post(live, "/admin/engines/models", {"name": NEW, "model": NEW, "backend": "sim", "replicas": 1,
                                                   "max_model_len": 4096})
    assert started.status_code == 202, started.text
    assert started.json()["state"] == "starting" and started.json()["backend"] == "sim"
    again = post(live, "/admin/engines/models", {"name": NEW, "model": NEW, "backend": "sim"})
    assert error(again, 409, "model_exists")["param"] == "name"
    assert wait_until(lambda: serving(live, NEW), timeout_s=60), engines(live).get(NEW)

    answer = chat(live, NEW)
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == NEW and answer.json()["usage"]["completion_tokens"] > 0
    assert NEW in [m["id"] for m in httpx.get(live.url + "/v1/models").json()["data"]]
    rows = engines(live)
    assert rows[NEW]["started_at_runtime"] is True and rows[NEW]["launched"] is True
    assert rows[CONFIGURED]["started_at_runtime"] is False and rows[CONFIGURED]["launched"] is False
    [engine] = rows[NEW]["engines"]
    assert process_alive(engine["pid"]) and Path(engine["log_path"]).is_file()
    tail = httpx.get(live.url + "/admin/engines/logs", params={"model": NEW, "url": engine["url"]}, headers=AUTH)
    assert tail.status_code == 200 and tail.json()["lines"], tail.text
    snapshot_pools = [p["model"] for p in _snapshot(live)["pools"]]
    assert NEW in snapshot_pools

    assert post(live, "/admin/engines/scale", {"model": NEW, "replicas": 2}).status_code == 202
    assert wait_until(lambda: serving(live, NEW, 2), timeout_s=60), engines(live)[NEW]
    pids = [e["pid"] for e in engines(live)[NEW]["engines"]]

    # a long stream in flight when the stop comes: it finishes; a new request is refused at once
    outcome: dict[str, Any] = {}
    streaming = threading.Thread(target=_stream, args=(live, outcome), daemon=True)
    streaming.start()
    assert wait_until(lambda: "first_chunk" in outcome, timeout_s=30), outcome
    stopped = post(live, "/admin/engines/stop", {"model": NEW, "drain_timeout_s": 60})
    assert stopped.status_code == 202, stopped.text
    assert error(chat(live, NEW), 404, "not_found")
    streaming.join(timeout=60)
    assert outcome.get("status") == 200 and outcome.get("done") is True, outcome
    assert outcome["chunks"] >= 150  # the whole answer: ignore_eos with max_tokens 200
    assert wait_until(lambda: NEW not in engines(live), timeout_s=60), engines(live).get(NEW)
    assert wait_until(lambda: not any(process_alive(pid) for pid in pids), timeout_s=30)
    assert chat(live, CONFIGURED).status_code == 200  # the configured model never noticed


def _stream(live: LiveServer, outcome: dict[str, Any]) -> None:
    body = {"model": NEW, "max_tokens": 200, "ignore_eos": True, "stream": True,
            "messages": [{"role": "user", "content": "tell me a long story"}]}
    chunks = 0
    with httpx.stream("POST", live.url + "/v1/chat/completions", json=body, timeout=60) as r:
        outcome["status"] = r.status_code
        for line in r.iter_lines():
            if line.startswith("data: {"):
                chunks += 1
                outcome["first_chunk"] = True
            if line == "data: [DONE]":
                outcome["done"] = True
    outcome["chunks"] = chunks


def _snapshot(live: LiveServer) -> dict[str, Any]:
    from tests.console.console_server import logged_in

    client, csrf = logged_in(live.url, ADMIN)
    r = client.get("/console/api/snapshot", headers={"x-sluice-csrf": csrf})
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_bad_starts_and_stops_are_refused_with_openai_shaped_errors(live):
    models = "/admin/engines/models"
    assert error(post(live, models, {"name": CONFIGURED, "model": "x", "backend": "sim"}), 409, "model_exists")
    for bad in ({"name": "a b", "model": "x", "backend": "sim"}, {"name": "x", "model": "x", "backend": "tgi"},
                {"name": "x", "model": "x", "backend": "sim", "replicas": 0},
                {"name": "x", "model": "x", "backend": "sim", "args": ["--trust-remote-code"]},
                {"name": "x", "model": "x", "backend": "sim", "gpus": "0;rm -rf /"}, {"model": "x"}):
        assert error(post(live, models, bad), 400, "invalid_request"), bad
    assert error(post(live, models, {"name": "x", "model": "x", "backend": "sim", "replicas": 2, "gpus": "0"}),
                 409, "not_enough_gpus")
    assert error(post(live, "/admin/engines/stop", {"model": CONFIGURED}), 409, "model_in_config")
    assert error(post(live, "/admin/engines/stop", {"model": "nope"}), 404, "not_found")["code"] == "model_not_found"
    assert error(httpx.post(live.url + models, json={"name": "y", "model": "y", "backend": "sim"}), 401, "auth")
    assert set(engines(live)) == {CONFIGURED}


def test_a_start_that_fails_is_said_in_the_list_frees_the_name_and_can_be_removed(tmp_path: Path) -> None:
    settings = parse_settings({
        "auth": {"mode": "open", "admin_key_hash": hash_key(ADMIN)},
        "models": [{"name": CONFIGURED, "sim": {"speed": 50}}],
        "console": {"engine_log_dir": str(tmp_path), "engine_python": str(tmp_path / "no-such-python")},
    })
    with LiveServer(create_console_app(settings), 90, settings.server) as server:
        assert post(server, "/admin/engines/models", {"name": NEW, "model": NEW, "backend": "sim"}).status_code == 202
        assert wait_until(lambda: engines(server)[NEW]["state"] == "failed", timeout_s=30), engines(server)
        row = engines(server)[NEW]
        assert "no-such-python" in row["error"] and row["started_at_runtime"] is True
        assert chat(server, NEW).status_code == 404
        retried = post(server, "/admin/engines/models", {"name": NEW, "model": NEW, "backend": "sim"})
        assert retried.status_code == 202, retried.text
        assert wait_until(lambda: engines(server)[NEW]["state"] == "failed", timeout_s=30), engines(server)
        assert post(server, "/admin/engines/stop", {"model": NEW}).status_code == 202  # "Remove" on the page
        assert wait_until(lambda: NEW not in engines(server), timeout_s=30), engines(server)
