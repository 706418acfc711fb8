"""The autoscaler's policy: from a window of samples and the current replica count, what should the count be?

Pure (no I/O, no clock of its own): the ``Autoscaler`` samples, keeps the history and applies cooldowns; this
module only weighs the evidence.

- Up, when over the last ``window_s`` either the share of requests refused for engine capacity is above
  ``refusal_ratio`` (over the whole window and over each third of it, so a burst shorter than a third of the
  window is not "sustained"; with at least ``min_requests`` answered), or the pool's saturation stayed at or
  above ``scale_up_saturation`` at every sample. By ``step``, or by more when the refusals say more is
  missing: a pool that refuses a share ``r`` of its requests serves ``1 - r`` of the demand, so it needs
  ``ceil(current / (1 - r))`` replicas at least.
  Saturation is not used to size the step: it is a queue-length and KV-use ratio of the least loaded replica,
  which grows without bound once arrivals exceed service (3x saturated can mean 10% short) and caps at 1 for
  KV use: proportional to it would overshoot on queues and undershoot on KV. Each step is measured again.
- Down by one, when over the last ``scale_down_window_s`` the saturation stayed below
  ``scale_down_saturation`` at every sample and no request was refused for capacity.
- Between the two thresholds nothing happens (hysteresis: the schema keeps down below up).
- A stale saturation (+Inf: the engines' metrics could not be read) is no evidence either way.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from sluice.config import AutoscaleSettings

Direction = Literal["up", "down"]


@dataclass(frozen=True, slots=True)
class Sample:
    at_s: float
    answered: int  # requests answered for the model since start (cumulative)
    refused: int  # of which refused for engine capacity (cumulative)
    saturation: float  # the pool's saturation at that moment (+Inf when stale)
    ready: int  # replicas ready to take requests


@dataclass(frozen=True, slots=True)
class Evidence:
    """What the last window says, whether or not it leads to a change."""

    requests: int = 0
    refused: int = 0
    refusal_ratio: float = 0.0
    saturation: float = 0.0  # the latest sample's
    refusing: bool = False  # refusals above the ratio, sustained
    saturated: bool = False  # saturation above the up threshold at every sample
    calm: bool = False  # below the down threshold at every sample of the down window, no refusal

    @property
    def overloaded(self) -> bool:
        return self.refusing or self.saturated

    @property
    def reason(self) -> str:
        if self.refusing:
            return "refusals"
        if self.saturated:
            return "saturation"
        return "calm" if self.calm else "none"


@dataclass(frozen=True, slots=True)
class Proposal:
    direction: Direction
    to_replicas: int
    evidence: Evidence


@dataclass(frozen=True, slots=True)
class Decision:
    """One scaling decision, as logged, exported and handed to an actuator."""

    model: str
    from_replicas: int
    to_replicas: int
    direction: Direction
    evidence: Evidence
    window_s: float
    at_wall: float

    def describe(self) -> str:
        e = self.evidence
        return (f"model {self.model}: {self.from_replicas} -> {self.to_replicas} replicas ({self.direction}, "
                f"{e.reason}: {e.refused}/{e.requests} refused = {e.refusal_ratio:.1%} over {self.window_s:g} s, "
                f"saturation {e.saturation:.2f})")

    def payload(self) -> dict[str, object]:
        """The JSON body for webhooks and commands. The fields of the former scale_out hook are kept
        (``event``, ``window_s``, ``requests``, ``rejected``, ``rejection_ratio``, ``saturated_models``,
        ``saturation``), so its consumers keep working."""
        e = self.evidence
        return {"event": "sluice.scale_out" if self.direction == "up" else "sluice.scale_in",
                "model": self.model, "direction": self.direction, "reason": e.reason,
                "from_replicas": self.from_replicas, "replicas": self.to_replicas, "at": self.at_wall,
                "window_s": self.window_s, "requests": e.requests, "rejected": e.refused,
                "rejection_ratio": e.refusal_ratio, "saturated_models": [self.model] if e.saturated else [],
                "saturation": {self.model: e.saturation if math.isfinite(e.saturation) else None}}


class ScalePolicy:
    def __init__(self, settings: AutoscaleSettings) -> None:
        self._s = settings

    @property
    def history_s(self) -> float:
        """How far back samples are needed."""
        return max(self._s.window_s, self._s.scale_down_window_s) + self._s.check_s

    def weigh(self, history: Sequence[Sample], now_s: float) -> Evidence:
        s = self._s
        up = _window(history, now_s, s.window_s, s.check_s)
        down = _window(history, now_s, s.scale_down_window_s, s.check_s)
        latest = history[-1].saturation if history else 0.0
        if up is None:
            requests = refused = 0
            refusing = saturated = False
        else:
            requests, refused = up[-1].answered - up[0].answered, up[-1].refused - up[0].refused
            refusing = requests >= s.min_requests and all(_ratio(part) > s.refusal_ratio
                                                           for part in (up, *_thirds(up)))
            saturated = all(math.isfinite(x.saturation) and x.saturation >= s.scale_up_saturation for x in up)
        calm = down is not None and down[-1].refused == down[0].refused and all(
            math.isfinite(x.saturation) and x.saturation < s.scale_down_saturation for x in down)
        return Evidence(requests, refused, round(refused / requests, 4) if requests else 0.0, latest, refusing,
                        saturated, calm)

    def propose(self, evidence: Evidence, current: int) -> Proposal | None:
        """The change the evidence asks for, within [min_replicas, max_replicas]; None when none (or none possible:
        at max under overload, at min when calm)."""
        s = self._s
        if evidence.overloaded:
            wanted = current + s.step
            if evidence.refusing and evidence.refusal_ratio < 1:
                wanted = max(wanted, math.ceil(current / (1 - evidence.refusal_ratio) - 1e-9))
            target = min(max(wanted, s.min_replicas), s.max_replicas)
            return Proposal("up", target, evidence) if target > current else None
        if evidence.calm:
            target = max(min(current - 1, s.max_replicas), s.min_replicas)
            return Proposal("down", target, evidence) if target < current else None
        return None


def _window(history: Sequence[Sample], now_s: float, window_s: float, check_s: float) -> list[Sample] | None:
    """The samples of the last ``window_s``, or None when the history does not reach back that far yet."""
    start_s = now_s - window_s
    inside = [x for x in history if x.at_s >= start_s - check_s / 2]
    if len(inside) < 2 or inside[0].at_s > start_s + check_s / 2:
        return None
    return inside


def _thirds(samples: list[Sample]) -> list[list[Sample]]:
    """The window in three parts (neighbours share their boundary sample: each part has a start and an end)."""
    cuts = [round(i * (len(samples) - 1) / 3) for i in range(4)]
    return [samples[a: b + 1] for a, b in itertools.pairwise(cuts)]


def _ratio(samples: list[Sample]) -> float:
    requests = samples[-1].answered - samples[0].answered
    return (samples[-1].refused - samples[0].refused) / requests if requests else 0.0
