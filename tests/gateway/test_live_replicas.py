"""Replicas added, removed and drained through the admin API while streams run: no error, no stream lost."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sluice.config import SimSettings, parse_settings
from sluice.identity import hash_key
from tests.conftest import LiveServer, LiveSim, metric_value, serve_gateway, wait_until

ADMIN = "sk-admin-replicas"
MODEL = "m"
TOKENS = 60  # at ~8 ms a token, a stream lasts about half a second


@pytest.fixture
def sims() -> Iterator[list[LiveSim]]:
    with LiveSim(SimSettings(), model_name=MODEL) as a, LiveSim(SimSettings(), model_name=MODEL) as b, \
            LiveSim(SimSettings(), model_name=MODEL) as c:
        yield [a, b, c]


@pytest.fixture
def gateway(sims: list[LiveSim]) -> Iterator[LiveServer]:
    settings = parse_settings({"auth": {"mode": "open", "admin_key_hash": hash_key(ADMIN)},
                               "models": [{"name": MODEL, "engine": {"urls": [sims[0].url]}}]})
    with serve_gateway(settings) as live:
        yield live


def admin(gateway: LiveServer, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {ADMIN}"}
    if body is None:
        return httpx.get(gateway.url + path, headers=headers, timeout=10)
    return httpx.post(gateway.url + path, json=body, headers=headers, timeout=10)


def replicas(gateway: LiveServer) -> dict[str, dict[str, Any]]:
    doc = admin(gateway, f"/admin/replicas?model={MODEL}").json()["data"][0]
    return {r["url"]: r for r in doc["replicas"]}


class StreamLoad:
    """Clients streaming one answer after another until stopped; every stream checked to its end."""

    def __init__(self, url: str, clients: int) -> None:
        self.url = url
        self.completed = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def __enter__(self) -> StreamLoad:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def _run(self) -> None:
        body = {"model": MODEL, "stream": True, "max_tokens": TOKENS, "ignore_eos": True,
                "stream_options": {"include_usage": True}, "messages": [{"role": "user", "content": "count"}]}
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set():
                try:
                    self._one(client, body)
                except httpx.HTTPError as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")

    def _one(self, client: httpx.Client, body: dict[str, Any]) -> None:
        with client.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                self.failures.append(f"{r.status_code}: {r.read()[:200]!r}")
                return
            lines = [line for line in r.iter_lines() if line.startswith("data: ")]
        usage = [json.loads(line[6:])["usage"] for line in lines[:-1] if '"usage":{' in line]
        if lines[-1] != "data: [DONE]" or not usage or usage[-1]["completion_tokens"] != TOKENS:
            self.failures.append(f"a stream ended early: {lines[-2:]}")
        else:
            self.completed += 1


def test_replicas_added_drained_and_removed_under_streaming_load(gateway: LiveServer, sims: list[LiveSim]) -> None:
    a, b, c = sims
    with StreamLoad(gateway.url, clients=8) as load:
        assert wait_until(lambda: load.completed >= 8)
        assert admin(gateway, "/admin/replicas", {"model": MODEL, "url": b.url}).status_code == 200
        assert admin(gateway, "/admin/replicas", {"model": MODEL, "url": c.url, "weight": 2}).status_code == 200
        assert set(replicas(gateway)) == {a.url, b.url, c.url}
        assert wait_until(lambda: b.engine.generation_tokens_total > 0 and c.engine.generation_tokens_total > 0), \
            "new replicas got no traffic"

        drained = admin(gateway, "/admin/replicas/drain", {"model": MODEL, "url": a.url})
        assert drained.status_code == 200
        assert wait_until(lambda: a.url not in replicas(gateway)), "a drained replica stayed after its streams ended"
        served_by_a = a.engine.generation_tokens_total
        assert replicas(gateway)[b.url]["sources"] == ["admin"]

        removed = admin(gateway, "/admin/replicas/remove", {"model": MODEL, "url": b.url})
        assert removed.status_code == 200
        assert wait_until(lambda: set(replicas(gateway)) == {c.url})
        served_by_b = b.engine.generation_tokens_total
        done_before = load.completed
        assert wait_until(lambda: load.completed >= done_before + 16)
    assert load.failures == []
    assert a.engine.generation_tokens_total == served_by_a, "a drained replica got new requests"
    assert b.engine.generation_tokens_total == served_by_b, "a removed replica got new requests"
    assert wait_until(lambda: all(s.engine.num_running == 0 for s in sims))
    assert metric_value(gateway.url, "sluice_engine_replica_changes_total", model=MODEL, change="removed") == 2
    assert metric_value(gateway.url, "sluice_engine_replicas", model=MODEL, state="active") == 1


def test_a_drained_replica_stays_out_until_undrained(gateway: LiveServer, sims: list[LiveSim]) -> None:
    a = sims[0]
    assert admin(gateway, "/admin/replicas/drain", {"model": MODEL, "url": a.url}).status_code == 200
    assert wait_until(lambda: a.url not in replicas(gateway))
    r = httpx.post(gateway.url + "/v1/chat/completions", timeout=10, json={
        "model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable"
    assert "no engine replica" in r.json()["error"]["message"]
    assert admin(gateway, "/admin/replicas/undrain", {"model": MODEL, "url": a.url}).status_code == 200
    assert replicas(gateway)[a.url]["sources"] == ["static"]  # back from the configuration it never left


def test_admin_replica_errors(gateway: LiveServer, sims: list[LiveSim]) -> None:
    a = sims[0]
    assert admin(gateway, "/admin/replicas/remove", {"model": MODEL, "url": a.url}).json()["error"]["code"] == \
        "replica_not_added_here"
    assert admin(gateway, "/admin/replicas", {"model": "nope", "url": a.url}).status_code == 404
    bad = admin(gateway, "/admin/replicas", {"model": MODEL, "url": "http://h:1/v1"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "url"
    assert admin(gateway, "/admin/replicas/drain", {"model": MODEL, "url": "http://10.9.9.9:1"}).status_code == 404
    anonymous = httpx.get(gateway.url + "/admin/replicas", timeout=10)
    assert anonymous.status_code == 401


def test_a_model_with_no_replica_serves_once_one_is_added(sims: list[LiveSim]) -> None:
    settings = parse_settings({"auth": {"mode": "open", "admin_key_hash": hash_key(ADMIN)},
                               "models": [{"name": MODEL, "engine": {}}]})
    body = {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    with serve_gateway(settings) as gateway:
        refused = httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=10)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "engine_unavailable"
        assert admin(gateway, "/admin/replicas", {"model": MODEL, "url": sims[1].url}).status_code == 200
        assert httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=10).status_code == 200
