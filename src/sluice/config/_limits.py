"""Rates and limit rules: what a tier, or everyone, may spend (``tiers.<name>``, ``quota.limits``), and a tier's
shadow (candidate limits counted, never enforced: quota/_shadow.py)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


_PERIODS_S = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600, "d": 86400,
              "day": 86400}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([a-z]+)\s*$")


class Rate(_Frozen):
    """``amount`` units per ``period_s`` seconds, with a bucket of ``burst`` units (default: one period's worth).

    Written ``"60/minute"``, ``"1000/10s"``, ``"5/hour"``, or ``{rate: "60/minute", burst: 10}``."""

    amount: int = Field(ge=1)
    period_s: float = Field(gt=0)
    burst: int | None = Field(None, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if isinstance(value, str):
            return _parse_rate(value)
        if isinstance(value, dict) and "rate" in value:
            extra = set(value) - {"rate", "burst"}
            if extra:
                raise ValueError(f"unknown field(s) {sorted(extra)}: a rate takes 'rate' and 'burst'")
            return {**_parse_rate(str(value["rate"])), "burst": value.get("burst")}
        return value

    @property
    def capacity(self) -> int:
        return self.burst if self.burst is not None else self.amount

    @property
    def interval_s(self) -> float:
        """Seconds for one unit to drip back into the bucket (GCRA's emission interval)."""
        return self.period_s / self.amount

    def __str__(self) -> str:
        return f"{self.amount}/{_period_name(self.period_s)}"


def _parse_rate(text: str) -> dict[str, Any]:
    m = _RATE.match(text.lower())
    if not m or (m.group(3) not in _PERIODS_S and m.group(3).rstrip("s") not in _PERIODS_S):
        raise ValueError(f"{text!r} is not a rate like '60/minute', '1000/10s' or '5/hour'")
    unit = m.group(3) if m.group(3) in _PERIODS_S else m.group(3).rstrip("s")
    return {"amount": int(m.group(1)), "period_s": int(m.group(2) or 1) * _PERIODS_S[unit]}


def _period_name(period_s: float) -> str:
    for name, seconds in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if period_s == seconds:
            return name
    return f"{period_s:g}s"


Scope = Literal["key", "user", "tenant", "tier", "global"]


class LimitRule(_Frozen):
    """Bounds on what one scope may spend. ``per`` picks the scope: each key, each user, each tenant, the whole
    tier, or everyone. ``model``: absent = all models together; a name = that model only; ``each`` = every
    model separately."""

    per: Scope = "key"
    model: str | None = None
    requests: Rate | None = None
    tokens: Rate | None = None
    input_tokens: Rate | None = None
    output_tokens: Rate | None = None
    concurrent: int | None = Field(None, ge=1)
    on_store_error: Literal["open", "closed"] = "open"
    mode: Literal["enforce", "shadow"] = "enforce"  # shadow: counted and reported, never enforced

    @model_validator(mode="after")
    def _bounds_something(self) -> LimitRule:
        if not any((self.requests, self.tokens, self.input_tokens, self.output_tokens, self.concurrent)):
            raise ValueError("a limit needs at least one of requests, tokens, input_tokens, output_tokens, concurrent")
        return self


class ShadowTier(_Frozen):
    """A tier's candidate limits, run in shadow: what is given here replaces the tier's own field on promotion."""

    requests: Rate | None = None
    tokens: Rate | None = None
    concurrent: int | None = Field(None, ge=1)
    limits: list[LimitRule] | None = None

    @model_validator(mode="after")
    def _changes_something(self) -> ShadowTier:
        if not self.model_fields_set & {"requests", "tokens", "concurrent", "limits"}:
            raise ValueError("a shadow needs at least one of requests, tokens, concurrent, limits")
        return self
