"""The scale-out hook: when refusals or saturation say the engines are too few, tell the operator's autoscaler.

Every ``check_s`` it looks at the last ``window_s``: the share of requests refused for lack of capacity (quota,
queue or engine overload; not client errors) above ``rejection_ratio``, or a pool whose saturation stayed at or
above ``saturation`` the whole window. Then it POSTs a JSON payload to ``webhook`` or runs ``command`` with the
payload on stdin — at most once per ``interval_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import orjson

from sluice.clock import Clock
from sluice.config import ScaleOutSettings

log = logging.getLogger("sluice")


class ScaleOutHook:
    def __init__(self, settings: ScaleOutSettings, clock: Clock, saturations: Callable[[], Mapping[str, float]],
                 counts: Callable[[], tuple[int, int]]) -> None:
        """``counts()``: (requests answered, requests refused for capacity) since start."""
        self._settings = settings
        self._clock = clock
        self._saturations = saturations
        self._counts = counts
        self._history: deque[tuple[float, int, int, dict[str, float]]] = deque()
        self._last_call_s: float | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def check(self) -> dict[str, Any] | None:
        """Record a sample; call the hook if the condition holds over the window. Returns the payload sent."""
        s = self._settings
        now = self._clock.now()
        total, refused = self._counts()
        self._history.append((now, total, refused, dict(self._saturations())))
        while self._history and self._history[0][0] < now - s.window_s:
            self._history.popleft()
        oldest = self._history[0]
        if now - oldest[0] < s.window_s * 0.9:
            return None  # not a full window of history yet
        answered, rejected = total - oldest[1], refused - oldest[2]
        ratio = rejected / answered if answered else 0.0
        saturated = sorted(model for model in oldest[3]
                           if all(h[3].get(model, 0.0) >= s.saturation for h in self._history))
        if ratio <= s.rejection_ratio and not saturated:
            return None
        if self._last_call_s is not None and now - self._last_call_s < s.interval_s:
            return None
        payload = {"event": "sluice.scale_out", "window_s": s.window_s, "requests": answered,
                   "rejected": rejected, "rejection_ratio": round(ratio, 4), "saturated_models": saturated,
                   "saturation": dict(self._history[-1][3])}
        self._last_call_s = now
        await self._deliver(payload)
        return payload

    async def _deliver(self, payload: dict[str, Any]) -> None:
        body = orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS)
        try:
            if self._settings.webhook:
                timeout = aiohttp.ClientTimeout(total=10)
                async with aiohttp.ClientSession(timeout=timeout) as http:
                    async with http.post(self._settings.webhook, data=body,
                                         headers={"content-type": "application/json"}) as r:
                        log.warning("scale-out hook: webhook answered %d", r.status)
            elif self._settings.command:
                proc = await asyncio.create_subprocess_exec(*self._settings.command, stdin=asyncio.subprocess.PIPE)
                await asyncio.wait_for(proc.communicate(body), timeout=30)
                log.warning("scale-out hook: command exited %s", proc.returncode)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.error("scale-out hook failed: %s", exc)

    async def _run(self) -> None:
        while True:
            await self._clock.sleep(self._settings.check_s)
            await self.check()
