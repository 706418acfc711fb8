"""The access log: one JSON line per request. Never a key, never a prompt.

Lines go straight to a stream (stderr by default, or a file), not through ``logging``: a log record per request
cost several percent of the proxy's CPU. Once ``start``ed (in the gateway's lifespan), lines are kept in memory
and written in batches, off the request path: every ``flush_s`` seconds, as soon as ``MAX_BUFFERED_LINES`` are
waiting, and at ``close`` (the end of a graceful shutdown, SIGTERM included), so no line is lost but to a crash
(at most ``flush_s`` seconds of them). Not started, or with ``flush_s`` 0, each line is written as it comes.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import TextIO

import orjson

from sluice.clock import Clock
from sluice.telemetry._record import RequestRecord

log = logging.getLogger("sluice")

DEFAULT_FLUSH_S = 0.2
MAX_BUFFERED_LINES = 512  # a burst is written at once rather than held in memory until the next tick


class AccessLog:
    def __init__(self, stream: TextIO | None = None, *, enabled: bool = True, owned: bool = False,
                 flush_s: float = DEFAULT_FLUSH_S) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self._owned = owned  # a file it opened, to close at shutdown
        self.flush_s = flush_s
        self._lines: list[str] = []  # str: orjson's bytes, kept, cost 3 µs a line more to make (measured)
        self._flusher: asyncio.Task[None] | None = None
        self._failing = False

    @classmethod
    def to(cls, path: str | None, *, enabled: bool = True, flush_s: float = DEFAULT_FLUSH_S) -> AccessLog:
        """Lines to ``path`` (appended) or, without one, to stderr."""
        if path is None or not enabled:
            return cls(enabled=enabled, flush_s=flush_s)
        return cls(open(path, "a", encoding="utf-8"), enabled=enabled, owned=True, flush_s=flush_s)

    @property
    def buffered(self) -> bool:
        return self._flusher is not None

    def start(self, clock: Clock) -> None:
        """Write lines in batches from now on, every ``flush_s`` seconds of ``clock`` (in the running loop)."""
        if self.enabled and self.flush_s > 0 and self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_every(clock))

    def write(self, record: RequestRecord) -> None:
        if not self.enabled:
            return
        line = orjson.dumps(record.as_log(), option=orjson.OPT_APPEND_NEWLINE).decode()
        if self._flusher is None:
            self._stream.write(line)
            self._stream.flush()
            return
        self._lines.append(line)
        if len(self._lines) >= MAX_BUFFERED_LINES:
            self.flush()

    def flush(self) -> None:
        """Write the lines waiting, in one write."""
        if not self._lines:
            return
        lines, self._lines = self._lines, []
        self._stream.write("".join(lines))
        self._stream.flush()

    def close(self) -> None:
        """Stop batching and write what is waiting (then close the file this log opened)."""
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        self.flush()
        if self._owned:
            self._stream.close()

    async def _flush_every(self, clock: Clock) -> None:
        while True:
            await clock.sleep(self.flush_s)
            try:
                self.flush()
            except (OSError, ValueError) as exc:  # a full disk, a closed stream: those lines are lost, not the next
                if not self._failing:
                    log.warning("could not write the access log (%s); lines are being lost", exc)
                self._failing = True
            else:
                self._failing = False
