"""Configuration reload without a restart: tiers, limits and keys take effect at once; state is kept.

The file is checked every ``interval_s`` (and at once on SIGHUP). Quota state lives in the store, keyed by scope,
so a tier's new rate applies to the buckets it already has. Changes to models or the server need a restart, and
the log says so. A file that no longer parses is refused with its error, and the running configuration stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

from sluice.config import load_settings
from sluice.errors import ConfigError
from sluice.gateway._live import LiveConfig

log = logging.getLogger("sluice")


class ConfigReloader:
    def __init__(self, path: Path, live: LiveConfig, interval_s: float = 1.0) -> None:
        self.path = path
        self._live = live
        self._interval_s = interval_s
        self._stamp = self._read_stamp()
        self._poke = asyncio.Event()

    def check_now(self) -> None:
        self._poke.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals
            loop.add_signal_handler(signal.SIGHUP, self.check_now)
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._poke.wait(), self._interval_s)
            self._poke.clear()
            stamp = self._read_stamp()
            if stamp != self._stamp:
                self._stamp = stamp
                self.reload()

    def reload(self) -> bool:
        try:
            new = load_settings(self.path)
            authenticator = self._live.authenticator(new)  # reads the JWKS file again (keys rotate): a bad one refuses
        except ConfigError as exc:
            log.error("configuration reload refused, keeping the running one: %s", exc)
            return False
        old = self._live.settings
        if new.models != old.models or new.server != old.server or new.state != old.state:
            log.warning("configuration reload: changes to models, server or state need a restart; applying the rest")
        self._live.apply(new, authenticator)
        log.info("configuration reloaded from %s", self.path)
        return True

    def _read_stamp(self) -> tuple[float, int] | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return stat.st_mtime, stat.st_size
