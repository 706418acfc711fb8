"""Repeated log lines, limited: the first of a kind goes through, its repeats within a window are counted, and one
line says how many there were.

A *kind* is a record's logger, level and message template (``record.msg``, before its arguments are filled in), so
"state store unavailable (%s)" is one kind whatever the error says. The first record of a kind passes and opens a
window of ``window_s``; the records of that kind arriving before the window ends are dropped and counted. Once it
ended, the next record that reaches the handler (of any kind) first writes one line for each window that ended with
repeats (``<last message> (repeated N times in the last 60 s)``, at the kind's level and logger), then goes on as
usual: the next record of a kind whose window ended is a first again. ``flush()`` writes the pending lines at once
(at shutdown).

A gateway whose Redis is down thus writes a couple of lines a minute per kind, not one a second per request.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from sluice.clock import Clock

DEFAULT_WINDOW_S = 60.0
MAX_KINDS = 4096  # windows kept at once: messages formatted before logging (f-strings) each make a kind
_SUMMARY = "_sluice_repeat_summary"  # set on the lines this filter writes itself: they always pass

Kind = tuple[str, int, str]


@dataclass
class _Window:
    opened_s: float
    repeats: int = 0
    last: logging.LogRecord | None = None  # the last repeat dropped


class RepeatLimiter(logging.Filter):
    """A handler's filter; ``emit`` is where its "repeated N times" lines go (the handler's ``handle``)."""

    def __init__(self, clock: Clock, emit: Callable[[logging.LogRecord], object], *,
                 window_s: float = DEFAULT_WINDOW_S) -> None:
        super().__init__()
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self._clock = clock
        self._emit = emit
        self.window_s = window_s
        self._windows: OrderedDict[Kind, _Window] = OrderedDict()  # oldest window first
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _SUMMARY, False):
            return True
        kind = (record.name, record.levelno, str(record.msg))
        with self._lock:
            now_s = self._clock.now()
            ended = self._close_ended(now_s)
            window = self._windows.get(kind)
            if window is None:
                self._open(kind, now_s)
                passes = True
            else:
                window.repeats += 1
                window.last = record
                passes = False
        for summary in ended:
            self._emit(summary)
        return passes

    def flush(self) -> None:
        """Write the lines of every window with repeats now, and forget them all."""
        with self._lock:
            ended = [line for w in self._windows.values() if (line := self._summary(w)) is not None]
            self._windows.clear()
        for summary in ended:
            self._emit(summary)

    def _open(self, kind: Kind, now_s: float) -> None:
        if len(self._windows) >= MAX_KINDS:
            self._windows.popitem(last=False)  # the oldest window: its repeats go unreported, memory stays bounded
        self._windows[kind] = _Window(opened_s=now_s)

    def _close_ended(self, now_s: float) -> list[logging.LogRecord]:
        lines = []
        while self._windows:
            kind, window = next(iter(self._windows.items()))
            if now_s - window.opened_s < self.window_s:
                break
            del self._windows[kind]
            if (line := self._summary(window)) is not None:
                lines.append(line)
        return lines

    def _summary(self, window: _Window) -> logging.LogRecord | None:
        last = window.last
        if last is None:
            return None
        line = logging.makeLogRecord({
            "name": last.name, "levelno": last.levelno, "levelname": last.levelname, "pathname": last.pathname,
            "lineno": last.lineno, "msg": "%s (repeated %d times in the last %.0f s)",
            "args": (last.getMessage(), window.repeats, self.window_s), _SUMMARY: True,
        })
        return line


def limit_repeats(handlers: list[logging.Handler], clock: Clock, *,
                  window_s: float = DEFAULT_WINDOW_S) -> list[RepeatLimiter]:
    """Put a ``RepeatLimiter`` on each handler (each counts what it writes); returns them, to ``flush()``."""
    limiters = []
    for handler in handlers:
        limiter = RepeatLimiter(clock, handler.handle, window_s=window_s)
        handler.addFilter(limiter)
        limiters.append(limiter)
    return limiters
