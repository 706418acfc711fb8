"""The autoscaler of one model: samples its signals every ``check_s``, weighs them (``ScalePolicy``) and has an
``Actuator`` carry out the decision, one decision at a time.

A decision is in progress until the replicas reach its target (or ``settle_timeout_s`` passes: logged, given up),
and blocks the next. After it settles, another may come after ``cooldown_up_s`` (up) or ``cooldown_down_s``
(down); a failed action settles at once, so it is retried after the cooldown. The window restarts whenever the
replica count changes: evidence is about the current fleet. Across gateways sharing Redis the ``DecisionLock``
lets one decide per model per cooldown. At max replicas under overload it logs once per episode and counts it.

Signals are callables, so the caller wires them to whatever holds them (metrics counts, the gate's saturation,
the replica set); ``start()`` runs the loop on the injected clock, ``check()`` is one step of it (tests call it),
``snapshot()`` is for the admin API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from sluice.clock import Clock
from sluice.config import AutoscaleSettings
from sluice.errors import ScaleActionError
from sluice.gateway.autoscale._actuators import Actuator
from sluice.gateway.autoscale._lock import DecisionLock, LocalLock
from sluice.gateway.autoscale._policy import Decision, Evidence, Sample, ScalePolicy

log = logging.getLogger("sluice.autoscale")


@dataclass(frozen=True, slots=True)
class Signals:
    counts: Callable[[], tuple[int, int]]  # (requests answered, refused for engine capacity) since start
    saturation: Callable[[], float]  # the pool's saturation now (the gate's last_saturation)
    ready: Callable[[], int]  # replicas ready to take requests now


class AutoscaleObserver(Protocol):
    def autoscaler_replicas(self, model: str, desired: int, max_replicas: int) -> None: ...

    def autoscaler_decided(self, model: str, direction: str, reason: str) -> None: ...

    def autoscaler_at_limit(self, model: str, limit: str) -> None: ...

    def autoscaler_failed(self, model: str) -> None: ...


class Autoscaler:
    def __init__(self, model: str, settings: AutoscaleSettings, signals: Signals, actuator: Actuator, clock: Clock,
                 *, lock: DecisionLock | None = None, observer: AutoscaleObserver | None = None) -> None:
        self.model = model
        self._s = settings
        self._signals = signals
        self._actuator = actuator
        self._clock = clock
        self._lock = lock or LocalLock()
        self._observer = observer
        self._policy = ScalePolicy(settings)
        self._history: deque[Sample] = deque()
        self._pending: Decision | None = None
        self._pending_since_s = 0.0
        self._settled_s: float | None = None  # when the last decision settled: cooldowns count from it
        self._last: Decision | None = None
        self._last_error: str | None = None
        self._evidence = Evidence()
        self._at_max = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._report(self.current())
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def current(self) -> int:
        """The replica count decisions start from: what the actuator manages, else the ready replicas."""
        managed = self._actuator.replicas()
        return self._signals.ready() if managed is None else managed

    async def check(self) -> Decision | None:
        """One step: sample, settle what is in progress, decide, act. Returns the decision acted on, if any."""
        now = self._clock.now()
        answered, refused = self._signals.counts()
        sample = Sample(now, answered, refused, self._signals.saturation(), self._signals.ready())
        if self._history and self._history[-1].ready != sample.ready:
            self._history.clear()  # a new fleet: evidence about the old one no longer counts
        self._history.append(sample)
        while self._history and self._history[0].at_s < now - self._policy.history_s:
            self._history.popleft()
        current = self.current()
        if self._pending is not None and not await self._settle(self._pending, current, now):
            return None
        self._evidence = evidence = self._policy.weigh(self._history, now)
        proposal = self._policy.propose(evidence, current)
        self._watch_limit(evidence, current)
        if proposal is None:
            return None
        cooldown_s = self._s.cooldown_up_s if proposal.direction == "up" else self._s.cooldown_down_s
        if self._settled_s is not None and now - self._settled_s < cooldown_s:
            return None
        if not await self._lock.acquire(self.model, proposal.direction, self._s.settle_timeout_s):
            log.debug("autoscaler: model %s: another gateway decided within the cooldown", self.model)
            return None
        decision = Decision(self.model, current, proposal.to_replicas, proposal.direction, evidence,
                            self._s.window_s if proposal.direction == "up" else self._s.scale_down_window_s,
                            self._clock.wall())
        await self._act(decision, now)
        return decision

    async def _act(self, decision: Decision, now: float) -> None:
        log.warning("autoscaler: %s via %s", decision.describe(), self._actuator.kind)
        self._pending, self._pending_since_s, self._last = decision, now, decision
        if self._observer is not None:
            self._observer.autoscaler_decided(self.model, decision.direction, decision.evidence.reason)
        self._report(decision.to_replicas)
        try:
            await self._actuator.scale_to(decision)
        except ScaleActionError as exc:
            self._last_error = exc.message
            log.error("autoscaler: model %s: scaling to %d failed (%s); retried after the cooldown",
                      self.model, decision.to_replicas, exc.message)
            if self._observer is not None:
                self._observer.autoscaler_failed(self.model)
            await self._finish(self._clock.now())
            return
        self._last_error = None

    async def _settle(self, decision: Decision, current: int, now: float) -> bool:
        """True when the decision in progress is over (reached or given up)."""
        reached = current >= decision.to_replicas if decision.direction == "up" else current <= decision.to_replicas
        if not reached:
            if now - self._pending_since_s < self._s.settle_timeout_s:
                return False
            log.warning("autoscaler: model %s: %d replicas not reached within %g s (%d now); given up",
                        self.model, decision.to_replicas, self._s.settle_timeout_s, current)
        else:
            self._history.clear()  # a new fleet: measured afresh
        await self._finish(now)
        return True

    async def _finish(self, now: float) -> None:
        self._pending = None
        self._settled_s = now
        self._report(self.current())
        await self._lock.settled(self.model, self._s.cooldown_up_s, self._s.cooldown_down_s)

    def _watch_limit(self, evidence: Evidence, current: int) -> None:
        at_max = evidence.overloaded and current >= self._s.max_replicas
        if at_max and not self._at_max:
            log.warning("autoscaler: model %s: at max_replicas (%d) and still overloaded (%s: %d/%d refused, "
                        "saturation %.2f); raise max_replicas or add capacity elsewhere", self.model,
                        self._s.max_replicas, evidence.reason, evidence.refused, evidence.requests,
                        evidence.saturation)
            if self._observer is not None:
                self._observer.autoscaler_at_limit(self.model, "max")
        self._at_max = at_max

    def _report(self, desired: int) -> None:
        if self._observer is not None:
            self._observer.autoscaler_replicas(self.model, desired, self._s.max_replicas)

    def snapshot(self) -> dict[str, Any]:
        now = self._clock.now()
        cooldown_s = {d: max(0.0, self._settled_s + c - now) if self._settled_s is not None else 0.0
                      for d, c in (("up", self._s.cooldown_up_s), ("down", self._s.cooldown_down_s))}
        e = self._evidence
        return {
            "model": self.model, "actuator": self._actuator.kind, "current": self.current(),
            "ready": self._signals.ready(), "min_replicas": self._s.min_replicas,
            "max_replicas": self._s.max_replicas,
            "desired": self._pending.to_replicas if self._pending else self.current(),
            "in_progress": self._pending.payload() if self._pending else None,
            "last_decision": self._last.payload() if self._last else None, "last_error": self._last_error,
            "cooldown_left_s": cooldown_s, "at_max": self._at_max,
            "evidence": {"reason": e.reason, "requests": e.requests, "refused": e.refused,
                         "refusal_ratio": e.refusal_ratio,
                         "saturation": e.saturation if math.isfinite(e.saturation) else None},
        }

    async def _run(self) -> None:
        while True:
            await self._clock.sleep(self._s.check_s)
            try:
                await self.check()
            except Exception:  # noqa: BLE001 - a bug in one step must not stop autoscaling for good
                log.exception("autoscaler: model %s: check failed", self.model)
