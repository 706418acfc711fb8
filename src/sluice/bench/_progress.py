"""A one-line progress bar on stderr: done/total (or elapsed/duration), ok, errors, request rate.

Plain text, no dependency; redrawn at most ``fps`` times a second, and only when the stream is a terminal
(or when forced), so logs and pipes get the final line alone.
"""

from __future__ import annotations

import sys
from typing import TextIO

from sluice.bench._client import RequestResult
from sluice.clock import Clock


class Progress:
    def __init__(self, clock: Clock, *, total: int | None, duration_s: float | None, stream: TextIO | None = None,
                 enabled: bool | None = None, fps: float = 10.0, width: int = 30) -> None:
        self.clock = clock
        self.total = total
        self.duration_s = duration_s
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.min_gap_s = 1 / fps
        self.width = width
        self.done = self.ok = 0
        self.t0 = clock.now()
        self._last_draw = float("-inf")

    def update(self, result: RequestResult) -> None:
        self.done += 1
        self.ok += result.ok
        now = self.clock.now()
        if self.enabled and now - self._last_draw >= self.min_gap_s:
            self._last_draw = now
            self.stream.write("\r" + self.line(now) + "\x1b[K")
            self.stream.flush()

    def line(self, now: float) -> str:
        elapsed = now - self.t0
        fractions = []
        if self.total:
            fractions.append(self.done / self.total)
        if self.duration_s:
            fractions.append(elapsed / self.duration_s)
        fraction = min(1.0, max(fractions)) if fractions else 0.0
        filled = int(fraction * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        of = f"/{self.total}" if self.total else ""
        rate = self.done / elapsed if elapsed > 0 else 0.0
        return (f"[{bar}] {self.done}{of} done, {self.ok} ok, {self.done - self.ok} failed, "
                f"{rate:.1f} req/s, {elapsed:.1f}s")

    def note(self, message: str) -> None:
        """A line of its own (always shown), the bar redrawn below it."""
        start = "\r\x1b[K" if self.enabled else ""
        self.stream.write(f"{start}{message}\n")
        self.stream.flush()

    def close(self) -> None:
        start, clear = ("\r", "\x1b[K") if self.enabled else ("", "")
        self.stream.write(start + self.line(self.clock.now()) + clear + "\n")
        self.stream.flush()
