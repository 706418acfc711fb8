"""The console under `sluice serve --workers 2` on a real Redis: every worker mounts it; a session opened on one
is good on both (kept in Redis), its CSRF token too, and a logout ends it on both; the snapshot says which worker
answered; a load test started on one worker is listed, read and stopped from either; starting a model at run time
is refused with a 409 that says why."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from sluice.config import SimSettings
from sluice.console._sessions import COOKIE
from sluice.identity import hash_key
from tests.conftest import LiveSim, wait_until
from tests.multiprocess.test_workers import Supervised

ADMIN = "sk-admin-console-workers-0123456789"
CSRF_META = re.compile(r'<meta name="sluice-csrf" content="([^"]+)">')
TRIES = 40  # fresh connections: the kernel spreads them over both workers


@pytest.fixture(scope="module")
def sim() -> Iterator[LiveSim]:
    with LiveSim(SimSettings(speed=20), model_name="m") as live:
        yield live


@pytest.fixture(scope="module")
def gateway(redis_server, sim, tmp_path_factory) -> Iterator[Supervised]:
    redis_server.flush()
    directory = tmp_path_factory.mktemp("console-workers")
    config = directory / "sluice.yaml"
    config.write_text(yaml.safe_dump({
        "state": redis_server.url,
        "auth": {"mode": "open", "admin_key_hash": hash_key(ADMIN)},
        "models": [{"name": "m", "engine": {"urls": [sim.url]}}],
        "console": {"runs_dir": str(directory / "runs")},
    }))
    supervised = Supervised(config, directory / "gateway.log")
    try:
        supervised.wait_listening()
        yield supervised
    finally:
        supervised.stop()


def fresh(gateway: Supervised, method: str, path: str, cookie: str | None = None, csrf: str | None = None,
          headers: dict[str, str] | None = None, **options: Any) -> httpx.Response:
    """One request on a connection of its own (so either worker may take it)."""
    sent = {**({"cookie": f"{COOKIE}={cookie}"} if cookie else {}), **({"x-sluice-csrf": csrf} if csrf else {}),
            **(headers or {})}
    return httpx.request(method, gateway.url + path, headers=sent, timeout=30, **options)


@pytest.fixture(scope="module")
def session(gateway: Supervised) -> tuple[str, str]:
    """A session opened on whichever worker took the login, and its CSRF token (read from the page)."""
    login = fresh(gateway, "POST", "/console/login", data={"key": ADMIN})
    assert login.status_code == 303, login.text
    sid = login.cookies[COOKIE]
    page = fresh(gateway, "GET", "/console", cookie=sid)
    match = CSRF_META.search(page.text)
    assert match is not None, page.text[:300]
    return sid, match.group(1)


def test_a_session_opened_on_one_worker_is_good_on_both(gateway, session):
    sid, csrf = session
    workers = set()
    for _ in range(TRIES):
        answer = fresh(gateway, "GET", "/console/api/snapshot", cookie=sid, csrf=csrf)
        assert answer.status_code == 200, answer.text
        workers.add(answer.json()["served_by"]["worker"])
        assert answer.json()["pools"][0]["model"] == "m"
    assert workers == {0, 1}
    refused = {fresh(gateway, "GET", "/console/api/snapshot", cookie=sid, csrf=csrf[:-1] + "x").status_code
               for _ in range(10)}
    assert refused == {401}


def test_admin_writes_with_the_session_go_through_on_both_workers(gateway, session):
    sid, csrf = session
    for i in range(10):
        created = fresh(gateway, "POST", "/console/admin/keys", cookie=sid, csrf=csrf, json={"id": f"console-w{i}"})
        assert created.status_code == 201, created.text
        assert created.json()["key"].startswith("sk-")
    wanted = {f"console-w{i}" for i in range(10)}

    def listed_by_the_worker_that_answers() -> bool:  # each worker applies the shared directory's news within ~0.25 s
        listed = fresh(gateway, "GET", "/admin/keys", headers={"authorization": f"Bearer {ADMIN}"})
        return wanted <= {k["id"] for k in listed.json()["data"]}

    assert wait_until(lambda: all(listed_by_the_worker_that_answers() for _ in range(4)), timeout_s=10)
    cross_site = fresh(gateway, "POST", "/console/admin/keys", cookie=sid, csrf=csrf, json={"id": "evil"},
                       headers={"origin": "https://evil.example", "sec-fetch-site": "cross-site"})
    assert cross_site.status_code == 401, cross_site.text


def test_starting_a_model_at_run_time_is_refused_with_workers(gateway, session):
    sid, csrf = session
    refused = fresh(gateway, "POST", "/console/admin/engines/models", cookie=sid, csrf=csrf,
                    json={"name": "new", "model": "new", "backend": "sim"})
    assert refused.status_code == 409, refused.text
    assert refused.headers["x-sluice-reason"] == "workers_have_no_launcher"
    assert "--workers 1" in refused.json()["error"]["message"]


def listing(gateway: Supervised, session: tuple[str, str]) -> dict[str, Any]:
    answer = fresh(gateway, "GET", "/console/api/loadtests", cookie=session[0], csrf=session[1])
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_a_load_test_is_seen_read_and_stopped_from_either_worker(gateway, session):
    sid, csrf = session
    spec = {"model": "m", "concurrency": 2, "duration_s": 2.0, "input_len": "8", "output_len": "4"}
    started = fresh(gateway, "POST", "/console/api/loadtests", cookie=sid, csrf=csrf, json=spec)
    assert started.status_code == 201, started.text
    number = started.json()["id"]
    seen_running = set()
    for _ in range(TRIES):
        doc = listing(gateway, session)
        run = next((r for r in doc["data"] if r["id"] == number), None)
        if run is None or run["state"] != "running":
            break
        seen_running.add(doc["served_by"]["worker"])
    assert seen_running == {0, 1}, seen_running  # both listed it while it ran
    def ended_everywhere() -> bool:
        docs = [listing(gateway, session) for _ in range(6)]
        runs = [next((r for r in d["data"] if r["id"] == number), None) for d in docs]
        return all(r is not None and r["state"] == "finished" and r["plots"] for r in runs)
    assert wait_until(ended_everywhere, timeout_s=60)
    plots = {fresh(gateway, "GET", "/console/api/loadtests/plot", cookie=sid,
                   params={"id": number, "name": "timeline.png"}).status_code for _ in range(10)}
    assert plots == {200}

    long_run = fresh(gateway, "POST", "/console/api/loadtests", cookie=sid, csrf=csrf,
                     json={**spec, "duration_s": 120.0})
    assert long_run.status_code == 201, long_run.text
    owner, second = long_run.json()["served_by"]["worker"], long_run.json()["id"]
    assert second > number

    def seen_by_the_other_worker() -> bool:
        doc = listing(gateway, session)
        return doc["served_by"]["worker"] != owner and any(r["id"] == second and r["state"] == "running"
                                                           for r in doc["data"])
    assert wait_until(seen_by_the_other_worker, timeout_s=30)
    for _ in range(6):  # one at a time, whichever worker is asked
        busy = fresh(gateway, "POST", "/console/api/loadtests", cookie=sid, csrf=csrf, json=spec)
        assert busy.status_code == 409, busy.text
    for _ in range(TRIES):
        stop = fresh(gateway, "POST", "/console/api/loadtests/stop", cookie=sid, csrf=csrf, json={"id": second})
        assert stop.status_code == 200, stop.text
        if stop.json()["served_by"]["worker"] != owner:
            break
    assert stop.json()["served_by"]["worker"] != owner, "no stop reached the other worker"

    def stopped() -> bool:
        run = next((r for r in listing(gateway, session)["data"] if r["id"] == second), None)
        return run is not None and run["state"] == "stopped"
    assert wait_until(stopped, timeout_s=30)


def test_a_logout_on_one_worker_ends_the_session_on_both(gateway):
    login = fresh(gateway, "POST", "/console/login", data={"key": ADMIN})
    sid = login.cookies[COOKIE]
    csrf = CSRF_META.search(fresh(gateway, "GET", "/console", cookie=sid).text).group(1)  # type: ignore[union-attr]
    assert fresh(gateway, "POST", "/console/logout", cookie=sid, csrf=csrf).status_code == 200
    after = {fresh(gateway, "GET", "/console/api/snapshot", cookie=sid, csrf=csrf).status_code for _ in range(20)}
    assert after == {401}
    assert "login" in fresh(gateway, "GET", "/console", cookie=sid).text.lower()
