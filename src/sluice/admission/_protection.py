"""Protection mode: the decide half of the loop. Engaged when saturation stays at or above ``engage_at`` for
``engage_after_s``; relaxed when it stays at or below ``relax_at`` for ``relax_after_s``. The gap between the two
thresholds and the two delays is the hysteresis that keeps it from flapping. ``explain`` (the saturation
detector's) says why, when it engages: ``reason`` keeps that until it relaxes (the console and the log show it)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from sluice.clock import Clock

log = logging.getLogger("sluice.admission")


class ProtectionMode:
    def __init__(self, clock: Clock, *, engage_at: float = 1.0, relax_at: float = 0.7, engage_after_s: float = 1.0,
                 relax_after_s: float = 5.0, name: str = "", on_change: Callable[[bool], None] | None = None,
                 explain: Callable[[], str] | None = None) -> None:
        if relax_at > engage_at:
            raise ValueError("relax_at must not exceed engage_at")
        self._clock = clock
        self._engage_at, self._relax_at = engage_at, relax_at
        self._engage_after_s, self._relax_after_s = engage_after_s, relax_after_s
        self._name = name
        self._on_change = on_change
        self._explain = explain
        self.engaged = False
        self.reason = ""  # why it engaged, while it is engaged
        self._since: float | None = None  # when the current crossing began

    def explain(self) -> str:
        """Why saturation is what it is now (the detector's words), or "" when nothing explains it."""
        return self._explain() if self._explain else ""

    def observe(self, saturation: float) -> bool:
        now = self._clock.now()
        crossing = saturation <= self._relax_at if self.engaged else saturation >= self._engage_at
        if not crossing:
            self._since = None
            return self.engaged
        if self._since is None:
            self._since = now
        if now - self._since >= (self._relax_after_s if self.engaged else self._engage_after_s):
            self.engaged = not self.engaged
            self._since = None
            self.reason = self._explain() if self.engaged and self._explain else ""
            log.warning("protection mode %s for %s (saturation %.2f%s)", "ENGAGED" if self.engaged else "relaxed",
                        self._name or "pool", saturation, f": {self.reason}" if self.reason else "")
            if self._on_change:
                self._on_change(self.engaged)
        return self.engaged
