"""A circuit breaker per replica: after ``failures`` failures in a row it opens (no traffic) for ``open_s``, then
lets one trial request through (half-open): its success closes the circuit, its failure opens it again."""

from __future__ import annotations

import enum

from sluice.clock import Clock


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(self, clock: Clock, *, failures: int = 5, open_s: float = 10.0) -> None:
        self._clock = clock
        self._threshold = failures
        self._open_s = open_s
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_out = False

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock.now() - self._opened_at >= self._open_s:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def allows(self) -> bool:
        """Whether a request may go to this replica now (in half-open, only the one trial)."""
        state = self.state
        return state is BreakerState.CLOSED or (state is BreakerState.HALF_OPEN and not self._trial_out)

    def on_send(self) -> None:
        if self.state is BreakerState.HALF_OPEN:
            self._trial_out = True

    def on_abandon(self) -> None:
        """The request sent was withdrawn before it was answered (its client left, or the gate stopped it): it
        says nothing about the replica, and a half-open circuit may send its trial again."""
        self._trial_out = False

    def on_success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._trial_out = False

    def on_failure(self) -> None:
        self._failures += 1
        if self.state is BreakerState.HALF_OPEN or self._failures >= self._threshold:
            self._opened_at = self._clock.now()
            self._trial_out = False
