"""The engines view's "Start a model" form in a real headless Chromium: start a NEW model (backend sim: a real
simulator process), send it a request, stop it from the page. Screenshot: docs/img/console-start-model.png."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sluice.config import parse_settings
from sluice.console import create_console_app
from sluice.identity import generate_key, hash_key
from tests.conftest import LiveServer, process_alive, wait_until
from tests.console.browser import chromium_browser

ADMIN_KEY = generate_key()
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "img"
WAIT_MS = 60_000
NEW = "from-the-page"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from chromium_browser()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = parse_settings({
        "auth": {"mode": "open", "admin_key_hash": hash_key(ADMIN_KEY)},
        "models": [{"name": "configured", "sim": {"speed": 50}}],
        "console": {"engine_log_dir": str(tmp_path_factory.mktemp("engine-logs")), "engine_timeout_s": 60},
    })
    with LiveServer(create_console_app(settings), 90, settings.server) as live:
        yield live.url


def chat(url: str) -> httpx.Response:
    body = {"model": NEW, "max_tokens": 4, "messages": [{"role": "user", "content": "hello from the test"}]}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=30)


def launched(url: str) -> dict[str, Any] | None:
    r = httpx.get(url + "/admin/engines", headers={"authorization": f"Bearer {ADMIN_KEY}"})
    return next((row for row in r.json()["data"] if row["model"] == NEW), None)


def test_start_a_model_from_the_page_use_it_then_stop_it(browser, gateway):
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    page = context.new_page()
    try:
        page.goto(gateway + "/console")
        page.fill("#key", ADMIN_KEY)
        page.click("button[type=submit]")
        page.wait_for_selector("#status:has-text('live')", timeout=WAIT_MS)
        page.click("nav button[data-view=engines]")
        assert chat(gateway).status_code == 404
        page.fill("#new-model input[name=name]", NEW)
        page.fill("#new-model input[name=model]", NEW)
        page.select_option("#new-model select[name=backend]", "sim")
        page.fill("#new-model input[name=max_model_len]", "2048")
        page.click("#new-model button[type=submit]")
        page.wait_for_selector(f"#launched h3:text-is('{NEW} (vllm): 1 replica')", timeout=WAIT_MS)
        answer = chat(gateway)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"] == NEW
        row = launched(gateway)
        assert row is not None and row["started_at_runtime"] is True and row["state"] == "serving"
        [engine] = row["engines"]
        page.wait_for_selector(f"#launched td:text-is('{engine['url']}')", timeout=WAIT_MS)
        page.screenshot(path=str(SCREENSHOTS / "console-start-model.png"), full_page=True)

        page.click(f"#launched button[data-stop='{NEW}']")
        assert wait_until(lambda: launched(gateway) is None, timeout_s=60), launched(gateway)
        page.wait_for_selector(f"#launched h3:has-text('{NEW}')", state="detached", timeout=WAIT_MS)
        assert chat(gateway).status_code == 404
        assert wait_until(lambda: not process_alive(engine["pid"]), timeout_s=30)
        assert (page.text_content("#message") or "") == ""
    finally:
        context.close()
