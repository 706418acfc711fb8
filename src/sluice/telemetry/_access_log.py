"""The access log: one JSON line per request. Never a key, never a prompt.

Lines go straight to a stream (stderr by default, or a file), not through ``logging``: a log record per request
cost several percent of the proxy's CPU.
"""

from __future__ import annotations

import sys
from typing import TextIO

import orjson

from sluice.telemetry._record import RequestRecord


class AccessLog:
    def __init__(self, stream: TextIO | None = None, *, enabled: bool = True, owned: bool = False) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self._owned = owned  # a file it opened, to close at shutdown

    @classmethod
    def to(cls, path: str | None, *, enabled: bool = True) -> AccessLog:
        """Lines to ``path`` (appended, line-buffered) or, without one, to stderr."""
        if path is None or not enabled:
            return cls(enabled=enabled)
        return cls(open(path, "a", buffering=1, encoding="utf-8"), enabled=enabled, owned=True)

    def write(self, record: RequestRecord) -> None:
        if self.enabled:
            self._stream.write(orjson.dumps(record.as_log(), option=orjson.OPT_APPEND_NEWLINE).decode())

    def close(self) -> None:
        if self._owned:
            self._stream.close()
