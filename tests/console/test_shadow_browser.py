"""A tier's shadow in the console, in a real headless Chromium: the tiers view shows it, the live view lists the
refusals it would have made (marked shadow) while every request is served, and its button promotes it live."""

from __future__ import annotations

import httpx
import pytest

from sluice.config import parse_settings
from sluice.identity import generate_key, hash_key
from tests.conftest import wait_until
from tests.console.browser import chromium_browser
from tests.console.console_server import serve_console

ADMIN_KEY = generate_key()
FREE_KEY = generate_key()
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
WAIT_MS = 10_000


@pytest.fixture
def page():
    for browser in chromium_browser():
        context = browser.new_context(viewport={"width": 1366, "height": 900})
        yield context.new_page()
        context.close()


def chat(url: str) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {FREE_KEY}"},
                      timeout=30)


def test_a_shadow_is_shown_its_refusals_listed_and_promoted_from_the_console(page):
    settings = parse_settings({
        "auth": {"admin_key_hash": hash_key(ADMIN_KEY)},
        "models": [{"name": "m", "sim": {"speed": 200}}],
        "tiers": {"free": {"requests": "20/hour", "shadow": {"requests": "1/hour"}}},
        "keys": [{"id": "free-key", "hash": hash_key(FREE_KEY), "tier": "free"}],
    })
    with serve_console(settings) as live:
        assert [chat(live.url).status_code for _ in range(3)] == [200, 200, 200]  # the shadow refuses nobody
        page.goto(live.url + "/console")
        page.fill("#key", ADMIN_KEY)
        page.click("button[type=submit]")
        page.wait_for_selector("#refusals td:has-text('429 shadow')", timeout=WAIT_MS)
        assert page.locator("#refusals td:has-text('429 shadow')").count() == 2
        page.click("nav button[data-view=tiers]")
        form = page.locator("form[data-tier=free]")
        assert "In shadow: requests 1 per 3600 s" in form.locator("p.shadow").inner_text()
        form.locator("button[data-shadow=promoted]").click()
        page.wait_for_selector("#message:has-text('Shadow of tier free promoted.')", timeout=WAIT_MS)
        assert wait_until(lambda: chat(live.url).status_code == 429, timeout_s=5.0)
