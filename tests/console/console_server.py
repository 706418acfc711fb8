"""A gateway with its console on a real socket, and a logged-in client, for the console's tests."""

from __future__ import annotations

import re
from typing import Any

import httpx

from sluice.config import Settings
from sluice.console import create_console_app
from tests.conftest import LiveServer

CSRF_META = re.compile(r'<meta name="sluice-csrf" content="([^"]+)">')


def serve_console(settings: Settings, **options: Any) -> LiveServer:
    return LiveServer(create_console_app(settings, **options), server=settings.server)


def logged_in(url: str, admin_key: str) -> tuple[httpx.Client, str]:
    """A client holding a console session, and that session's CSRF token (read from the page, as its script does)."""
    client = httpx.Client(base_url=url)
    answer = client.post("/console/login", data={"key": admin_key})
    assert answer.status_code == 303, answer.text
    page = client.get("/console")
    match = CSRF_META.search(page.text)
    assert match is not None, page.text[:200]
    return client, match.group(1)
