"""The access log: one JSON line per request, on the ``sluice.access`` logger. Never a key, never a prompt."""

from __future__ import annotations

import logging

import orjson

from sluice.telemetry._record import RequestRecord

ACCESS_LOGGER = "sluice.access"


class AccessLog:
    def __init__(self, logger: logging.Logger | None = None, *, enabled: bool = True) -> None:
        self._logger = logger or logging.getLogger(ACCESS_LOGGER)
        self.enabled = enabled

    def write(self, record: RequestRecord) -> None:
        if self.enabled and self._logger.isEnabledFor(logging.INFO):
            self._logger.info(orjson.dumps(record.as_log()).decode())
