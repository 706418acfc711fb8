"""The console's engines view in a real headless Chromium, over a launched fleet of simulated engines: scale from
the page (1 -> 2 -> 1) and read a replica's log tail. The screenshot goes to docs/img/console-engines.png."""

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
from tests.console.test_engines_api import MODEL, launched_sim

ADMIN_KEY = generate_key()
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "img"
WAIT_MS = 30_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from chromium_browser()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    launcher = launched_sim(tmp_path_factory.mktemp("engine-logs"))
    settings = parse_settings({
        "auth": {"mode": "open", "admin_key_hash": hash_key(ADMIN_KEY)},
        "models": [{"name": MODEL, "engine": {"urls": launcher.urls}, "admission": {"enabled": False}}],
    })
    with LiveServer(create_console_app(settings, launcher=launcher), 90, settings.server) as live:
        yield live.url, launcher


def engines(url: str) -> list[dict[str, Any]]:
    r = httpx.get(url + "/admin/engines", headers={"authorization": f"Bearer {ADMIN_KEY}"})
    return list(r.json()["data"][0]["engines"])


def test_scale_from_the_page_and_read_a_replica_s_log(browser, gateway):
    url, launcher = gateway
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    page = context.new_page()
    try:
        page.goto(url + "/console")
        page.fill("#key", ADMIN_KEY)
        page.click("button[type=submit]")
        page.wait_for_selector("#status:has-text('live')", timeout=WAIT_MS)
        page.click("nav button[data-view=engines]")
        page.wait_for_selector(f"#launched h3:has-text('{MODEL}')", timeout=WAIT_MS)
        first = launcher.urls[0]
        page.wait_for_selector(f"#launched td:text-is('{first}')", timeout=WAIT_MS)

        page.click("#launched button[data-scale=up]")
        assert wait_until(lambda: len(engines(url)) == 2 and all(e["state"] == "healthy" for e in engines(url)),
                          timeout_s=60), engines(url)
        added = next(u for u in launcher.urls if u != first)
        page.wait_for_selector(f"#launched td:text-is('{added}')", timeout=WAIT_MS)
        page.wait_for_selector(f"#launched h3:text-is('{MODEL} (vllm): 2 replicas')", timeout=WAIT_MS)  # done
        page.wait_for_selector(f"#launched tr:has-text('{added}') td:text-is('healthy')", timeout=WAIT_MS)

        page.click(f"#launched button[data-log='{added}']")
        page.wait_for_selector(f"#engine-log-title:has-text('{added}')", timeout=WAIT_MS)
        log_path = Path(str(next(e["log_path"] for e in engines(url) if e["url"] == added)))
        shown = page.text_content("#engine-log") or ""
        last = log_path.read_text(errors="replace").splitlines()[-1]
        assert shown.strip() and last in shown, (shown[-300:], last)
        page.screenshot(path=str(SCREENSHOTS / "console-engines.png"), full_page=True)

        pids = {e["pid"] for e in engines(url)}
        page.click("#launched button[data-scale=down]")
        assert wait_until(lambda: len(engines(url)) == 1 and len(launcher.urls) == 1, timeout_s=60), engines(url)
        page.wait_for_selector(f"#launched h3:text-is('{MODEL} (vllm): 1 replica')", timeout=WAIT_MS)
        [gone] = pids - {e["pid"] for e in engines(url)}
        assert wait_until(lambda: not process_alive(gone)), "the removed engine still runs"
    finally:
        context.close()
