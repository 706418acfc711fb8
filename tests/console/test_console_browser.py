"""The console in a real headless Chromium: log in, watch the live view move under load, create and revoke a key,
edit a tier and see the new limit enforced, drain a replica, and the refusals: no admin key, a cross-site write.
Each view's screenshot goes to docs/img/console-*.png."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest

from sluice.config import parse_settings
from sluice.identity import generate_key, hash_key
from tests.conftest import wait_until
from tests.console.browser import chromium_browser
from tests.console.console_server import serve_console

ADMIN_KEY = generate_key()
BOB_KEY = generate_key()
PRO_KEY = generate_key()
LOAD_KEY = generate_key()
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "img"
WAIT_MS = 10_000


@pytest.fixture(scope="module")
def browser():
    yield from chromium_browser()


@pytest.fixture(scope="module")
def gateway():
    settings = parse_settings({
        "auth": {"admin_key_hash": hash_key(ADMIN_KEY)},
        "models": [{"name": "m", "sim": {"speed": 20}}],
        "tiers": {"free": {"requests": "5/minute"}, "pro": {"priority": 10, "requests": "1000/minute"},
                  "bulk": {}},
        "keys": [{"id": "bob-key", "hash": hash_key(BOB_KEY), "user": "bob", "tenant": "acme", "tier": "free"},
                 {"id": "pro-key", "hash": hash_key(PRO_KEY), "user": "pat", "tenant": "globex", "tier": "pro"},
                 {"id": "load-key", "hash": hash_key(LOAD_KEY), "tenant": "bench", "tier": "bulk"}],
    })
    with serve_console(settings) as live:
        yield live.url


@pytest.fixture
def page(browser, gateway):
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    tab = context.new_page()
    yield tab
    context.close()


def log_in(page, url, key=ADMIN_KEY):
    page.goto(url + "/console")
    page.fill("#key", key)
    page.click("button[type=submit]")


def chat(url, key):
    return httpx.post(url + "/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {key}"}, timeout=30)


def test_without_the_admin_key_the_console_stays_shut(page, gateway):
    log_in(page, gateway, key="sk-wrong")
    page.wait_for_selector("text=Wrong admin key.", timeout=WAIT_MS)
    assert page.locator("#key").count() == 1 and page.locator("nav").count() == 0
    status = page.evaluate("fetch('/console/api/snapshot').then(r => r.status)")
    assert status == 401
    page.screenshot(path=str(SCREENSHOTS / "console-login.png"))


def test_the_live_view_moves_under_load(page, gateway):
    log_in(page, gateway)
    page.wait_for_selector("#status:has-text('live')", timeout=WAIT_MS)
    answers = []
    load = threading.Thread(target=lambda: answers.extend(chat(gateway, PRO_KEY) for _ in range(30)))
    load.start()
    refused = [chat(gateway, BOB_KEY) for _ in range(8)]
    load.join()
    assert all(a.status_code == 200 for a in answers)
    refused_ids = [a.headers["x-request-id"] for a in refused if a.status_code == 429]
    assert refused_ids  # 5 a minute for the free tier
    page.wait_for_selector(f"#refusals td:text-is('{refused_ids[-1]}')", timeout=WAIT_MS)
    page.wait_for_selector("#groups td:text-is('globex')", timeout=WAIT_MS)
    points = page.get_attribute("#chart-requests polyline", "points")
    assert points is not None and any(float(p.split(",")[1]) < 98 for p in points.split())  # the line rose
    assert page.locator("#pools td:text-is('m')").count() == 1
    assert page.locator("#replicas td:text-is('closed')").count() >= 1


def test_create_revoke_and_restore_a_key_and_watch_it_refused(page, gateway):
    log_in(page, gateway)
    page.click("nav button[data-view=keys]")
    page.wait_for_selector("#keys td:text-is('bob-key')", timeout=WAIT_MS)
    page.fill("#new-key input[name=id]", "carol-key")
    page.fill("#new-key input[name=tenant]", "initech")
    page.select_option("#new-key select[name=tier]", "pro")
    page.click("#new-key button[type=submit]")
    page.wait_for_selector("#new-key-shown:not([hidden])", timeout=WAIT_MS)
    carol = page.inner_text("#new-key-shown code")
    assert carol.startswith("sk-")
    assert wait_until(lambda: chat(gateway, carol).status_code == 200)
    page.screenshot(path=str(SCREENSHOTS / "console-keys.png"), full_page=True)
    page.click("#keys button[data-key=carol-key]")
    page.wait_for_selector("#keys tr:has(td:text-is('carol-key')) td:text-is('revoked')", timeout=WAIT_MS)
    assert wait_until(lambda: chat(gateway, carol).status_code == 401)
    page.click("#keys button[data-key=carol-key]")  # now "Restore"
    page.wait_for_selector("#keys tr:has(td:text-is('carol-key')) td:text-is('active')", timeout=WAIT_MS)
    assert wait_until(lambda: chat(gateway, carol).status_code == 200)


def test_edit_a_tier_and_see_the_new_limit_enforced(page, gateway):
    log_in(page, gateway)
    page.wait_for_selector("#status:has-text('live')", timeout=WAIT_MS)
    page.click("nav button[data-view=tiers]")
    form = page.locator("form[data-tier=pro]")
    assert form.locator("input[name=requests]").input_value() == "1000"
    form.locator("input[name=requests]").fill("2")
    form.locator("input[name=requests_period_s]").fill("3600")
    form.locator("button[type=submit]").click()
    page.wait_for_selector("#message:has-text('Tier pro saved.')", timeout=WAIT_MS)
    page.screenshot(path=str(SCREENSHOTS / "console-tiers.png"), full_page=True)
    assert wait_until(lambda: chat(gateway, PRO_KEY).status_code == 429)  # 2 an hour: refused within a few
    refused = chat(gateway, PRO_KEY)
    assert refused.status_code == 429 and refused.headers["x-ratelimit-limit-requests"] == "2"


def test_usage_per_key_per_day(page, gateway):
    assert chat(gateway, BOB_KEY).status_code in (200, 429)
    log_in(page, gateway)
    page.click("nav button[data-view=usage]")
    page.fill("#usage-form input[name=id]", "bob-key")
    page.click("#usage-form button[type=submit]")
    page.wait_for_selector("#usage td:text-is('bob-key')", timeout=WAIT_MS)
    requests = int(page.inner_text("#usage tbody td:nth-child(4)"))
    assert requests >= 1
    page.screenshot(path=str(SCREENSHOTS / "console-usage.png"), full_page=True)


def test_drain_and_undrain_a_replica(page, gateway):
    log_in(page, gateway)
    page.wait_for_selector("#status:has-text('live')", timeout=WAIT_MS)
    page.click("nav button[data-view=engines]")
    page.wait_for_selector("#engine-replicas button:text-is('Drain')", timeout=WAIT_MS)
    page.click("#engine-replicas button:text-is('Drain')")
    page.wait_for_selector("#engine-replicas button:text-is('Undrain')", timeout=WAIT_MS)
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    listed = httpx.get(gateway + "/admin/replicas", headers=admin).json()["data"][0]
    assert listed["cordoned"], listed
    page.screenshot(path=str(SCREENSHOTS / "console-replicas.png"), full_page=True)
    page.click("#engine-replicas button:text-is('Undrain')")
    assert wait_until(lambda: not httpx.get(gateway + "/admin/replicas", headers=admin).json()["data"][0]["cordoned"])
    page.wait_for_selector("#engine-replicas button:text-is('Drain')", timeout=WAIT_MS)


def test_a_cross_site_write_is_refused(page, gateway):
    log_in(page, gateway)
    page.wait_for_selector("#status:has-text('live')", timeout=WAIT_MS)  # this browser holds a session
    evil = "http://evil.example"
    forged = (f"<form id=f method=post action='{gateway}/console/admin/keys/revoke' enctype='text/plain'>"
              "<input name='{\"id\":\"bob-key\",\"x\":\"' value='\"}'></form><script>f.submit()</script>")
    page.route(evil + "/**", lambda route: route.fulfill(status=200, content_type="text/html", body=forged))
    with page.expect_response(lambda r: r.url.endswith("/console/admin/keys/revoke")) as answered:
        page.goto(evil + "/")
    assert answered.value.status == 401
    status = page.evaluate("""url => fetch(url + '/console/admin/keys', {method: 'POST', credentials: 'include',
        headers: {'content-type': 'text/plain'}, body: JSON.stringify({id: 'mallory-key'})})
        .then(r => r.status, () => 'blocked')""", gateway)
    assert status in (401, "blocked")  # opaque to the page either way; the server must not have acted
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    keys = {k["id"]: k for k in httpx.get(gateway + "/admin/keys", headers=admin).json()["data"]}
    assert not keys["bob-key"]["revoked"] and "mallory-key" not in keys


def test_start_and_stop_a_load_test_and_read_its_result(page, gateway):
    log_in(page, gateway)
    page.wait_for_selector("#status:has-text('live')", timeout=WAIT_MS)
    page.click("nav button[data-view=loadtests]")
    form = page.locator("#new-loadtest")
    form.locator("input[name=concurrency]").fill("2")
    form.locator("input[name=duration_s]").fill("600")
    form.locator("input[name=input_len]").fill("16")
    form.locator("input[name=output_len]").fill("8")
    form.locator("input[name=api_key]").fill(LOAD_KEY)
    form.locator("button[type=submit]").click()
    page.wait_for_selector("#loadtests td:text-is('running')", timeout=WAIT_MS)
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    assert wait_until(lambda: httpx.get(gateway + "/admin/usage?scope=key&id=load-key",
                                        headers=admin).json()["requests"] >= 5)  # the run reaches the gateway
    page.click("#loadtests button:text-is('Stop')")
    page.wait_for_selector("#loadtests td:text-is('stopped')", timeout=WAIT_MS)
    result = page.inner_text("#loadtest-table")
    assert "run 1 (stopped)" in result and "requests" in result
    sent = int(page.inner_text("#loadtests tbody tr:first-child td:nth-child(4)").split()[0])
    assert sent >= 5
    form.locator("input[name=duration_s]").fill("2")
    form.locator("button[type=submit]").click()
    page.wait_for_selector("#loadtests td:text-is('finished')", timeout=30_000)
    assert page.locator("#loadtests tbody tr").count() == 2  # kept side by side
    page.screenshot(path=str(SCREENSHOTS / "console-loadtest.png"), full_page=True)
    with httpx.Client(base_url=gateway) as client:
        assert client.post("/console/api/loadtests", json={"model": "m"}).status_code == 401  # no session
