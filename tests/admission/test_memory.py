"""The gate's memory per request is constant at steady state: nothing it keeps grows with the requests it served.

Each case runs requests through a ``Gate`` on a fake clock (100 requests a simulated second, a few in
flight at a time), then measures, with tracemalloc, what the admission package still holds after many more
requests than the warm-up: it must not grow with their number (a leak of ~100 bytes a request, as ``_recent`` had
when the engines' KV capacity was unknown, is ~2 MB here).
"""

from __future__ import annotations

import tracemalloc

import pytest

from sluice.admission import FixedLimit, Gate, GateSettings, LoadReading, Outcome, SaturationDetector, ticket_for
from sluice.clock import FakeClock

WARMUP = 2_000
MEASURED = 20_000
IN_FLIGHT = 4
TENANTS = 10
STEP_S = IN_FLIGHT / 100  # 100 requests a simulated second
BOUND_BYTES = 64 * 1024  # what may move between two snapshots (block reuse, a deque's last block), not growth


def _gate(clock: FakeClock, readings: str, kv_capacity: int | None) -> Gate:
    detector = None
    if readings != "none":
        def source() -> list[LoadReading | None]:
            read_at = clock.now() - STEP_S if readings == "fresh" else -1_000.0
            return [LoadReading(running=1, waiting=0, kv_usage=0.1, read_at_s=read_at)]

        detector = SaturationDetector(source, clock, queue_threshold=4, kv_threshold=0.8, stale_after_s=1.0,
                                      kv_capacity_tokens=kv_capacity)
    return Gate("pool", FixedLimit(64), clock, GateSettings(top_priority=0), saturation=detector)


async def _serve(gate: Gate, clock: FakeClock, requests: int, first: int) -> None:
    for n in range(first, first + requests, IN_FLIGHT):
        permits = [await gate.admit(ticket_for(0, f"tenant-{(n + i) % TENANTS}", 1.0, 100, 50, clock.now() + 10))
                   for i in range(IN_FLIGHT)]
        for permit in permits:
            gate.release(permit, Outcome.SUCCESS, 0.05, 50)
        clock.advance(STEP_S)


def _admission_bytes(snapshot: tracemalloc.Snapshot) -> int:
    held = snapshot.filter_traces([tracemalloc.Filter(True, "*/sluice/admission/*")])
    return sum(stat.size for stat in held.statistics("filename"))


@pytest.mark.parametrize(("readings", "kv_capacity"), [
    ("none", None),  # watch_load off: no saturation detector
    ("fresh", None),  # engines given by URL: their load is read, their KV capacity is not known
    ("stale", 100_000),  # KV capacity known, but the engines' metrics stopped coming
    ("fresh", 100_000),  # KV capacity known and read
], ids=["no-detector", "kv-capacity-unknown", "kv-readings-stale", "kv-room-checked"])
async def test_memory_per_request_is_constant_at_steady_state(readings: str, kv_capacity: int | None) -> None:
    clock = FakeClock()
    gate = _gate(clock, readings, kv_capacity)
    tracemalloc.start()
    try:
        await _serve(gate, clock, WARMUP, 0)
        before = _admission_bytes(tracemalloc.take_snapshot())
        await _serve(gate, clock, MEASURED, WARMUP)
        after = _admission_bytes(tracemalloc.take_snapshot())
    finally:
        tracemalloc.stop()
    assert gate.in_flight == 0 and not gate.queue
    growth = after - before
    assert growth < BOUND_BYTES, f"the gate kept {growth} more bytes after {MEASURED} more requests " \
                                 f"({growth / MEASURED:.1f} bytes a request)"
