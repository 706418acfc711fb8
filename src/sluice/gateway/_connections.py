"""The connection cap of one server: which connections are open, and which of them are only waiting for a request.

A connection is *waiting* from the moment it is accepted, and again from the end of each answer on a kept-alive
connection, until a complete request head has arrived. Waiting costs the gateway nothing but a socket, and no key
has been checked yet. Past the cap, a new connection takes the place of the connection that has waited longest
(idle kept-alive connections and slow or stalled heads alike), so that slow clients cannot starve healthy ones;
only when every open connection is busy with a request is the new one refused.
"""

from __future__ import annotations

from typing import Protocol


class Sheddable(Protocol):
    def shed(self) -> None:
        """Close, answering first if a request had begun: the server needs the connection's place."""


class ConnectionTable:
    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self.shed_total = 0
        self.refused_total = 0
        self._open: set[Sheddable] = set()
        self._waiting: dict[Sheddable, None] = {}  # insertion order: longest waiting first

    def admit(self, connection: Sheddable) -> bool:
        """Count a new connection in, shedding the longest-waiting one when at the cap. False: refuse it."""
        if len(self._open) >= self.max_connections:
            victim = next(iter(self._waiting), None)
            if victim is None:
                self.refused_total += 1
                return False
            self.remove(victim)
            self.shed_total += 1
            victim.shed()
        self._open.add(connection)
        return True

    def waiting(self, connection: Sheddable) -> None:
        """``connection`` starts waiting for a request head (it goes to the back of the line)."""
        if connection in self._open:
            self._waiting.pop(connection, None)
            self._waiting[connection] = None

    def busy(self, connection: Sheddable) -> None:
        """``connection`` has a complete request head: no longer sheddable."""
        self._waiting.pop(connection, None)

    def remove(self, connection: Sheddable) -> None:
        self._open.discard(connection)
        self._waiting.pop(connection, None)

    def count(self, state: str) -> int:
        """Open connections that are ``"waiting"`` for a request head, or ``"busy"`` with a request."""
        waiting = len(self._waiting)
        return waiting if state == "waiting" else len(self._open) - waiting

    def snapshot(self) -> dict[str, int]:
        return {"open": len(self._open), "waiting": len(self._waiting), "max_connections": self.max_connections,
                "shed_total": self.shed_total, "refused_total": self.refused_total}
