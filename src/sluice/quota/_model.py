"""What the limiter asks a store to do, and what the store answers: plain data, shared by every store."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["requests", "tokens", "input_tokens", "output_tokens"]


@dataclass(frozen=True, slots=True)
class LimitInfo:
    """Where a bucket comes from, for messages and headers: ``kind`` of ``rate`` on ``scope`` (e.g. 'tier pro')."""

    kind: Kind
    scope: str
    amount: int
    period_s: float
    on_store_error: Literal["open", "closed"] = "open"
    per: str = "key"  # the rule's scope kind (key, user, tenant, tier, global): a bounded metric label


@dataclass(slots=True)  # made per request: not frozen (a frozen __init__ costs 3x), never changed
class Bucket:
    """One GCRA bucket to charge: ``capacity`` units, one unit dripping back every ``interval_s``."""

    key: str
    interval_s: float
    capacity: int
    cost: int
    info: LimitInfo


@dataclass(frozen=True, slots=True)
class Lease:
    """One concurrency permit to take in the set ``key`` holding at most ``limit`` (expires after ``ttl_s``)."""

    key: str
    limit: int
    ttl_s: float
    scope: str
    on_store_error: Literal["open", "closed"] = "open"
    per: str = "key"


@dataclass(slots=True)  # made per request: not frozen (a frozen __init__ costs 3x), never changed
class BucketState:
    remaining: int  # units left (after the charge, if it was allowed)
    reset_s: float  # until the bucket is full again
    retry_after_s: float  # until this charge would fit (0 when it did; inf when it never can)


@dataclass(slots=True)  # made per request: not frozen (a frozen __init__ costs 3x), never changed
class Decision:
    allowed: bool
    states: list[BucketState] = field(default_factory=list)  # one per bucket, in order
    refused_bucket: int | None = None  # the bucket that refused (the one needing the longest wait)
    refused_lease: int | None = None  # or the lease that found its set full
    retry_after_s: float = 0.0
    voided: bool = False  # its id was voided before it ran (its caller had stopped waiting): refused, took nothing
    extra: int | None = None  # granted with a ``Stretch``: the units charged past the floor on flexible buckets

    @property
    def never(self) -> bool:
        return math.isinf(self.retry_after_s)


@dataclass(frozen=True, slots=True)
class Stretch:
    """An acquire whose buckets' costs are a floor: once every floor fits, each flexible bucket (tokens, output
    tokens: ``flexible``) is charged up to ``extra`` units more, as many as fit in all of them, or, with
    ``overrun``, all ``extra`` units whatever is left (the buckets go into debt, as an overrun's settle would)."""

    extra: int
    overrun: bool = False


def flexible(bucket: Bucket) -> int:
    """How many units a bucket is charged per unit of a stretch's extra: 1 for the output-bearing kinds."""
    return 1 if bucket.info.kind in ("tokens", "output_tokens") else 0
