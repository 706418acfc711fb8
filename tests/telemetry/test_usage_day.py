"""Usage is counted per UTC day of the clock's wall time; the day is worked out once a day, not once a request,
so the day must still turn at midnight exactly."""

from __future__ import annotations

import datetime as dt

from sluice.clock import FakeClock
from sluice.telemetry import MemoryUsage, UsageLedger


async def test_usage_goes_to_the_day_it_happened_on_across_midnight() -> None:
    midnight = dt.datetime(2026, 3, 1, tzinfo=dt.UTC).timestamp()
    clock = FakeClock(wall_start=midnight - 1.5)
    ledger = UsageLedger(MemoryUsage(), clock)
    ledger.add("k", "u", "t", 10, 1)
    clock.advance(1.0)  # 0.5 s before midnight
    ledger.add("k", "u", "t", 20, 2)
    clock.advance(0.5)  # midnight itself belongs to the new day
    ledger.add("k", "u", "t", 30, 3)
    clock.advance(86_400)
    ledger.add("k", "u", "t", 40, 4)
    assert ledger.today() == "2026-03-02"
    feb = await ledger.read("key", "k", "2026-02-28")
    march_1 = await ledger.read("tenant", "t", "2026-03-01")
    march_2 = await ledger.read("user", "u", "2026-03-02")
    assert (feb.requests, feb.tokens_in, feb.tokens_out) == (2, 30, 3)
    assert (march_1.requests, march_1.tokens_in) == (1, 30)
    assert (march_2.requests, march_2.tokens_in) == (1, 40)
