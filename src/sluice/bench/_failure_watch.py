"""When a run had better stop than go on: everything it sends fails, so its figures would measure nothing.

Two signs, each after ``limit`` results: no request has succeeded yet (a wrong URL, model or key, a server down),
or ``limit`` failures in a row that are not rejections (429 and 503 are the answers of a server under load, what a
load test is there to measure). ``limit`` 0: never stop.
"""

from __future__ import annotations

from collections import Counter

from sluice.bench._client import RequestResult


class FailureWatch:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.reason: str | None = None  # why the run must stop, once it must
        self._succeeded = 0
        self._failed = 0
        self._in_a_row = 0  # failures since the last success, rejections left out
        self._since_success: Counter[str] = Counter()  # what those failures (rejections too) said

    def observe(self, result: RequestResult) -> str | None:
        """Take one result; the reason to stop when this one makes it (and every one after), else ``None``."""
        if self.reason is not None or not self.limit:
            return self.reason
        if result.ok:
            self._succeeded += 1
            self._in_a_row = 0
            self._since_success.clear()
            return None
        self._failed += 1
        self._in_a_row += not result.rejected
        self._since_success[result.failure()] += 1
        if not self._succeeded and self._failed >= self.limit:
            self.reason = f"the first {self._failed} requests all failed"
        elif self._in_a_row >= self.limit:
            self.reason = f"{self._in_a_row} requests in a row failed (429 and 503 not counted)"
        else:
            return None
        self.reason += f"; most often {self._since_success.most_common(1)[0][0]}"
        return self.reason
