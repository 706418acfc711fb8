"""The bucket against a reference model, on a fake clock: Python's GCRA (the memory store) and the Lua script.

The reference is the textbook token bucket in exact rational arithmetic: a level that refills continuously up
to the capacity; a charge fits when the level covers it; reconciliation moves the level either way.
"""

from __future__ import annotations

from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.clock import FakeClock
from sluice.quota import Bucket, LimitInfo, MemoryStore, _wire
from tests.quota.lua_harness import LuaRedis


class ReferenceBucket:
    def __init__(self, capacity: int, interval: Fraction) -> None:
        self.capacity, self.interval = capacity, interval
        self.level, self.t = Fraction(capacity), Fraction(0)

    def _refill(self, t: Fraction) -> None:
        self.level = min(Fraction(self.capacity), self.level + (t - self.t) / self.interval)
        self.t = t

    def charge(self, t: Fraction, cost: int) -> bool:
        self._refill(t)
        if cost <= self.level:
            self.level -= cost
            return True
        return False

    def adjust(self, t: Fraction, delta: int) -> None:
        self._refill(t)
        self.level = min(Fraction(self.capacity), self.level - delta)


OPS = st.lists(
    st.tuples(st.sampled_from(["charge", "adjust"]), st.integers(0, 3000), st.integers(-30, 30)),
    min_size=1, max_size=60,
)


def run_reference(capacity, interval_ms, ops):
    ref, t, out = ReferenceBucket(capacity, Fraction(interval_ms, 1000)), Fraction(0), []
    for op, dt_ms, n in ops:
        t += Fraction(dt_ms, 1000)
        if op == "charge":
            out.append(ref.charge(t, abs(n)))
        else:
            ref.adjust(t, n)
    return out


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 20), st.integers(1, 500), OPS)
async def test_memory_store_matches_the_reference(capacity, interval_ms, ops):
    clock = FakeClock()
    store = MemoryStore(clock)
    info = LimitInfo("tokens", "t", capacity, capacity * interval_ms / 1000)
    got = []
    for i, (op, dt_ms, n) in enumerate(ops):  # each operation its own decision (an id is fenced once used)
        clock.advance(dt_ms / 1000)
        bucket = Bucket("k", interval_ms / 1000, capacity, abs(n), info)
        if op == "charge":
            got.append((await store.acquire([bucket], [], f"r{i}")).allowed)
        else:
            await store.settle([bucket], [n], [], f"r{i}")
    assert got == run_reference(capacity, interval_ms, ops)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 20), st.integers(1, 500), OPS)
def test_lua_script_matches_the_reference(capacity, interval_ms, ops):
    clock = FakeClock()
    redis = LuaRedis(clock)
    info = LimitInfo("tokens", "t", capacity, capacity * interval_ms / 1000)
    got = []
    for i, (op, dt_ms, n) in enumerate(ops):  # each operation its own decision (an id is fenced once used)
        clock.advance(dt_ms / 1000)
        bucket = Bucket("k", interval_ms / 1000, capacity, abs(n), info)
        marker = _wire.marker_key(["k"], f"r{i}")
        if op == "charge":
            reply = redis.run([_wire.acquire([bucket], [], f"r{i}", marker, 60_000)], ["k", marker])
            got.append(bool(reply[0][0]))
        else:
            redis.run([_wire.settle([bucket], [n], [], f"r{i}", marker, 60_000)], ["k", marker])
    assert got == run_reference(capacity, interval_ms, ops)
