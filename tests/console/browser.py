"""A real headless Chromium (Debian's ``chromium``) driven by Playwright with its ``executable_path``: Playwright
cannot download its own browser here. Missing: the tests skip locally and fail in CI, like redis-server."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest


def required() -> bool:
    """In CI a missing browser is a failure, not a skip."""
    return bool(os.environ.get("CI"))


def chromium_browser() -> Iterator[Any]:
    executable = shutil.which("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        executable = None
    if executable is None:
        if required():
            pytest.fail("chromium and playwright are required in CI (.ci/run installs them)")
        pytest.skip("no chromium or no playwright: apt-get install chromium; pip install playwright")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()
