"""Unique ids, cheaply: a random prefix per process and a counter (``uuid4`` per request cost measurable CPU).

Unique across processes and restarts (64 random bits of prefix), not secret: they name requests and permits,
they authorise nothing.
"""

from __future__ import annotations

import itertools
import secrets


class IdSource:
    def __init__(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"
