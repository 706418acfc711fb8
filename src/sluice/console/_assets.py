"""The console's static files, shipped as package data (``sluice/console/static``), read once when the console
is made; pages get their few placeholders (``{{name}}``) filled in, HTML-escaped."""

from __future__ import annotations

import html
from importlib import resources

ASSET_NAMES = ("console.html", "login.html", "disabled.html", "console.js", "console.css")


class ConsoleAssets:
    def __init__(self) -> None:
        folder = resources.files("sluice.console") / "static"
        self._files = {name: (folder / name).read_bytes() for name in ASSET_NAMES}

    def file(self, name: str) -> bytes:
        return self._files[name]

    def page(self, name: str, **values: str) -> str:
        text = self._files[name].decode()
        for key, value in values.items():
            text = text.replace("{{%s}}" % key, html.escape(value, quote=True))
        return text
