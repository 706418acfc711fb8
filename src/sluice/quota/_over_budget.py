"""A request that would cross its token budget, handled the way its tier says (``over_budget``).

``refuse`` (the default) answers 429. The others admit it, and how much it is charged is decided by the store in
the same atomic step that checks every limit (a ``Stretch``: no read of the budget before charging it). The price
is split in two: a floor (the prompt and ``over_budget_min_tokens`` per answer), which must fit as any price does,
and the rest of the output, charged

- as far as every token bucket has room (``clamp``: the engine is told to stop there; ``cut``: the stream is cut
  there, and a request that is not streamed is clamped), or
- whole, whatever is left (``tag``: the buckets go into debt, as a settle of a real overrun would take them, and
  the next requests wait until it is repaid).

A request whose whole price fits is charged it all and none of this shows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from sluice.config import TierSettings
from sluice.quota._model import Bucket, Decision, Stretch, flexible
from sluice.quota._pricing import Price

OverBudget = Literal["clamp", "cut", "tag"]


@dataclass(frozen=True, slots=True)
class BudgetAsk:
    """What a request of a tier with an over-budget policy asks the store for: at least ``floor``, up to ``price``."""

    policy: OverBudget
    price: Price
    floor: Price

    @classmethod
    def of(cls, tier: TierSettings | None, price: Price) -> BudgetAsk | None:
        """None when its tier refuses over-budget requests, or when its floor is its whole price."""
        if tier is None or tier.over_budget == "refuse":
            return None
        floor_tokens = tier.over_budget_min_tokens * price.sequences
        if price.max_output_tokens <= floor_tokens:
            return None
        return cls(tier.over_budget, price, dataclasses.replace(price, max_output_tokens=floor_tokens))

    @property
    def stretch(self) -> Stretch:
        return Stretch(self.price.max_output_tokens - self.floor.max_output_tokens, overrun=self.policy == "tag")

    def granted(self, buckets: Sequence[Bucket], decision: Decision) -> tuple[tuple[Bucket, ...], Price, bool]:
        """The store granted the floor ``buckets`` and ``decision.extra`` more: the buckets as charged, the price
        reserved, and whether the policy acted (the output was cut short, or the buckets went into debt)."""
        extra = decision.extra or 0
        charged = tuple(dataclasses.replace(b, cost=b.cost + extra) if flexible(b) else b for b in buckets)
        price = dataclasses.replace(self.price, max_output_tokens=self.floor.max_output_tokens + extra)
        if self.policy == "tag":
            # In debt: its theoretical arrival time lies past a full bucket, by half a unit or more (a store
            # reports durations rounded to the microsecond).
            acted = any(flexible(b) and state.reset_s > (b.capacity + 0.5) * b.interval_s
                        for b, state in zip(charged, decision.states, strict=True))
        else:
            acted = extra < self.stretch.extra
        return charged, price, acted
