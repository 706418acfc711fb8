"""A probe loaded into a benchmarked gateway (``PYTHONPATH``) by ``python -m bench.ab --quota-wait``: the time
each request spends in the quota step (``QuotaLimiter._reserve_live``: its decision, with the wait for its batch
and its round trip), kept for the last 30000 requests and written as JSON to ``$SLUICE_PROBE_QUOTA_WAIT`` on
SIGUSR1. Not part of Sluice: a benchmark's instrument."""

from __future__ import annotations

import os

if os.environ.get("SLUICE_PROBE_QUOTA_WAIT"):
    import collections
    import json
    import signal
    import time
    from typing import Any

    from sluice.quota import _limiter

    _out = os.environ["SLUICE_PROBE_QUOTA_WAIT"]
    _waits: collections.deque[float] = collections.deque(maxlen=30000)
    _live = _limiter.QuotaLimiter._reserve_live

    async def _timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await _live(self, *args, **kwargs)
        finally:
            _waits.append(time.perf_counter() - started)

    def _write(*_: object) -> None:
        with open(_out + ".part", "w") as f:
            json.dump(list(_waits), f)
        os.replace(_out + ".part", _out)  # whole when it appears
        _waits.clear()

    _limiter.QuotaLimiter._reserve_live = _timed  # type: ignore[method-assign]
    signal.signal(signal.SIGUSR1, _write)
