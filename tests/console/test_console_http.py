"""The console over HTTP: login, the session cookie, CSRF-safe writes through the admin API, the snapshot."""

from __future__ import annotations

import httpx
import pytest

from sluice.config import parse_settings
from sluice.identity import generate_key, hash_key
from tests.conftest import wait_until
from tests.console.console_server import CSRF_META, logged_in, serve_console

ADMIN_KEY = generate_key()
KEY = generate_key()
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def access_log_path(tmp_path_factory):
    return tmp_path_factory.mktemp("logs") / "access.jsonl"


@pytest.fixture(scope="module")
def console(access_log_path):
    settings = parse_settings({
        "server": {"access_log_path": str(access_log_path)},
        "auth": {"admin_key_hash": hash_key(ADMIN_KEY)},
        "models": [{"name": "m", "sim": {"speed": 50}}],
        "tiers": {"free": {"requests": "2/minute"}},
        "keys": [{"id": "bob-key", "hash": hash_key(KEY), "user": "bob", "tenant": "acme", "tier": "free"}],
    })
    with serve_console(settings) as live:
        yield live.url


def test_without_a_session_the_console_is_the_login_form(console):
    page = httpx.get(console + "/console")
    assert page.status_code == 200
    assert 'name="key"' in page.text and 'type="password"' in page.text
    assert CSRF_META.search(page.text) is None
    snapshot = httpx.get(console + "/console/api/snapshot")
    assert snapshot.status_code == 401
    assert snapshot.headers["x-sluice-reason"] == "auth"
    assert set(snapshot.json()["error"]) == {"message", "type", "param", "code"}


def test_a_wrong_key_is_refused_with_a_message_and_no_cookie(console):
    answer = httpx.post(console + "/console/login", data={"key": "sk-not-the-admin-key"})
    assert answer.status_code == 401
    assert "Wrong admin key." in answer.text
    assert answer.headers["x-sluice-reason"] == "auth"
    assert "set-cookie" not in answer.headers


def test_the_admin_key_opens_a_session_in_a_strict_cookie(console):
    answer = httpx.post(console + "/console/login", data={"key": ADMIN_KEY})
    assert answer.status_code == 303 and answer.headers["location"] == "/console"
    cookie = answer.headers["set-cookie"]
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "path", "samesite"} <= attributes
    assert "Path=/console" in cookie and "samesite=strict" in cookie.lower()
    assert "secure" not in attributes  # plain http: a Secure cookie would never come back
    assert ADMIN_KEY not in cookie


def test_the_cookie_is_secure_when_the_request_came_over_https(console):
    # uvicorn takes the scheme from X-Forwarded-Proto sent by a trusted proxy (127.0.0.1 here)
    answer = httpx.post(console + "/console/login", data={"key": ADMIN_KEY}, headers={"x-forwarded-proto": "https"})
    assert answer.status_code == 303
    assert "secure" in {p.strip().lower() for p in answer.headers["set-cookie"].split(";")}


def test_the_admin_key_never_reaches_the_access_log(console, access_log_path):
    client, _ = logged_in(console, ADMIN_KEY)
    httpx.post(console + "/console/login", data={"key": ADMIN_KEY + "x"})
    assert wait_until(lambda: "/console/login" in access_log_path.read_text())
    logged = access_log_path.read_text()
    assert ADMIN_KEY not in logged
    assert client.cookies["sluice_console"] not in logged


def test_console_writes_need_the_session_csrf_token_and_the_same_origin(console):
    client, csrf = logged_in(console, ADMIN_KEY)
    body = {"id": "csrf-probe", "tier": "free"}
    host = console.removeprefix("http://")
    refused = [
        {},  # the cookie alone: what a forged cross-site form would carry
        {"x-sluice-csrf": "not-the-token"},
        {"x-sluice-csrf": csrf, "origin": "http://evil.example"},
        {"x-sluice-csrf": csrf, "sec-fetch-site": "cross-site"},
    ]
    for headers in refused:
        answer = client.post("/console/admin/keys", json=body, headers=headers)
        assert answer.status_code == 401, (headers, answer.text)
        assert answer.headers["x-sluice-reason"] == "auth"
    keys = client.get("/console/admin/keys", headers={"x-sluice-csrf": csrf}).json()["data"]
    assert "csrf-probe" not in {k["id"] for k in keys}
    made = client.post("/console/admin/keys", json=body,
                       headers={"x-sluice-csrf": csrf, "origin": f"http://{host}", "sec-fetch-site": "same-origin"})
    assert made.status_code == 201, made.text
    assert made.json()["key"].startswith("sk-")


def test_a_cross_site_login_is_refused(console):
    answer = httpx.post(console + "/console/login", data={"key": ADMIN_KEY}, headers={"origin": "http://evil.example"})
    assert answer.status_code == 403
    assert "set-cookie" not in answer.headers


def test_the_admin_api_under_the_console_still_takes_the_admin_key(console):
    assert httpx.get(console + "/console/admin/keys").status_code == 401
    answer = httpx.get(console + "/console/admin/keys", headers={"authorization": f"Bearer {ADMIN_KEY}"})
    assert answer.status_code == 200
    assert "bob-key" in {k["id"] for k in answer.json()["data"]}


def test_logout_ends_the_session(console):
    client, csrf = logged_in(console, ADMIN_KEY)
    assert client.get("/console/api/snapshot", headers={"x-sluice-csrf": csrf}).status_code == 200
    assert client.post("/console/logout").status_code == 403  # no CSRF token: not from the page
    assert client.post("/console/logout", headers={"x-sluice-csrf": csrf}).status_code == 200
    assert client.get("/console/api/snapshot", headers={"x-sluice-csrf": csrf}).status_code == 401
    assert 'name="key"' in client.get("/console").text


def test_the_snapshot_shows_requests_and_refusals_with_their_ids(console):
    client, csrf = logged_in(console, ADMIN_KEY)
    auth = {"authorization": f"Bearer {KEY}"}
    answers = [httpx.post(console + "/v1/chat/completions", json=CHAT, headers=auth, timeout=30) for _ in range(4)]
    refused = [a for a in answers if a.status_code == 429]
    assert refused and len(refused) < len(answers)  # 2 a minute: some pass, the rest are refused
    snapshot = client.get("/console/api/snapshot", headers={"x-sluice-csrf": csrf}).json()
    refusals = {r["request_id"]: r for r in snapshot["traffic"]["refusals"]}
    for answer in refused:
        row = refusals[answer.headers["x-request-id"]]
        assert (row["status"], row["reason"], row["key_id"], row["tier"]) == (429, "quota_requests", "bob-key", "free")
    series = snapshot["traffic"]["series"]
    assert sum(p["requests"] for p in series) >= len(answers)
    assert sum(p["refused_429"] for p in series) >= len(refused)
    group = next(g for g in snapshot["traffic"]["groups"] if (g["tier"], g["tenant"]) == ("free", "acme"))
    assert group["refused"]["429 quota_requests"] >= len(refused)
    pool = snapshot["pools"][0]
    assert pool["model"] == "m" and pool["admission"]["window"] >= 1
    assert pool["replicas"][0]["breaker"] == "closed"
    assert snapshot["tiers"]["free"]["requests"]["amount"] == 2


def test_a_console_without_an_admin_key_says_it_is_disabled():
    settings = parse_settings({"auth": {"mode": "open"}, "models": [{"name": "m", "sim": {"speed": 50}}]})
    with serve_console(settings) as live:
        page = httpx.get(live.url + "/console")
        assert page.status_code == 403 and "disabled" in page.text
        assert httpx.post(live.url + "/console/login", data={"key": "anything"}).status_code == 403
        assert httpx.get(live.url + "/console/api/snapshot").status_code == 403


def test_load_tests_one_at_a_time_stopped_on_demand_bad_input_refused(console):
    client, csrf = logged_in(console, ADMIN_KEY)
    token = {"x-sluice-csrf": csrf}
    bad = client.post("/console/api/loadtests", json={"model": "m", "concurrency": 0}, headers=token)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "concurrency", bad.text
    assert client.post("/console/api/loadtests", json={"model": "m", "input_len": "lots"},
                       headers=token).status_code == 400
    assert client.post("/console/api/loadtests", json={"model": "m"}).status_code == 401  # no CSRF token
    started = client.post("/console/api/loadtests", headers=token, json={
        "model": "m", "concurrency": 1, "duration_s": 600, "input_len": "8", "output_len": "4", "api_key": KEY})
    assert started.status_code == 201, started.text
    run = started.json()
    assert run["state"] == "running" and run["settings"]["has_key"] and "api_key" not in run["settings"]
    again = client.post("/console/api/loadtests", json={"model": "m", "concurrency": 1}, headers=token)
    assert again.status_code == 409 and again.json()["error"]["code"] == "load_test_running"
    stopped = client.post("/console/api/loadtests/stop", json={"id": run["id"]}, headers=token).json()
    assert stopped["state"] == "stopped" and stopped["summary"]["requests"]["sent"] == stopped["progress"]["done"]
    assert KEY not in client.get("/console/api/loadtests", headers=token).text
    missing = client.post("/console/api/loadtests/stop", json={"id": 999}, headers=token)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "load_test_not_found"
