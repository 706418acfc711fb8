"""The gate in front of the simulated engine, all on one injected clock: a flood does not starve a quiet tenant,
and protection mode engages on the engine's own saturation and relaxes when it drains."""

from __future__ import annotations

import asyncio
import statistics

import pytest

from sluice.admission import (
    FixedLimit,
    Gate,
    GateSettings,
    LoadReading,
    Outcome,
    ProtectionMode,
    SaturationDetector,
    ticket_for,
)
from sluice.clock import FakeClock
from sluice.config import SimSettings
from sluice.errors import OverloadedError
from sluice.sim import EngineModel, EngineRunner, Sequence

PROMPT, OUTPUT = 100, 50


class Engine:
    """The simulator's engine and its runner, driven by the test's clock."""

    def __init__(self, clock: FakeClock, **settings: object) -> None:
        self.clock = clock
        self.model = EngineModel(SimSettings(**settings))
        self.runner = EngineRunner(self.model, clock)
        self.runner.start()

    async def serve(self) -> float:
        """Run one request through the engine; its time to first token."""
        seq = Sequence(seq_id=self.runner.new_seq_id(), prompt_tokens=PROMPT, output_len=OUTPUT)
        gen = self.runner.submit([seq], ["length"])
        start, first = self.clock.now(), None
        while not gen.done:
            await gen.changed()
            if first is None and seq.generated:
                first = self.clock.now()
        assert first is not None
        return first - start

    def reading(self) -> LoadReading:
        m = self.model
        return LoadReading(m.num_running, m.num_waiting, m.kv_usage, self.clock.now())


async def request(gate: Gate, engine: Engine, clock: FakeClock, tenant: str, priority: int = 0,
                  max_queue_s: float = 60.0) -> dict:
    start = clock.now()
    ticket = ticket_for(priority, tenant, 1.0, PROMPT, OUTPUT, start + max_queue_s)
    try:
        permit = await gate.admit(ticket)
    except OverloadedError as exc:
        return {"tenant": tenant, "refused": exc.reason}
    ttft = await engine.serve()
    gate.release(permit, Outcome.SUCCESS, ttft, OUTPUT)
    return {"tenant": tenant, "wait": permit.waited_s, "latency": clock.now() - start}


async def run_until_done(clock: FakeClock, tasks: list[asyncio.Task], step_s: float = 0.05) -> list[dict]:
    while not all(t.done() for t in tasks):
        await clock.run_for(step_s)
    return [t.result() for t in tasks]


@pytest.mark.parametrize("fair", [True, False])
async def test_a_flooding_tenant_does_not_take_a_quiet_ones_share(fair):
    clock = FakeClock()
    engine = Engine(clock, max_num_seqs=4)
    gate = Gate("m", FixedLimit(4), clock, GateSettings(tick_s=0.05))
    alone = await run_until_done(clock, [asyncio.create_task(request(gate, engine, clock, "quiet"))])
    unloaded = alone[0]["latency"]

    flood = [asyncio.create_task(request(gate, engine, clock, "flood")) for _ in range(40)]
    quiet = []
    for _ in range(5):
        await clock.run_for(0.5)
        # Without fair sharing (the control case) the quiet requests count as the flooding tenant's own.
        quiet.append(asyncio.create_task(request(gate, engine, clock, "quiet" if fair else "flood")))
    results = await run_until_done(clock, flood + quiet)
    quiet_latency = [r["latency"] for r in results[40:]]
    flood_latency = [r["latency"] for r in results[:40]]
    if fair:
        assert max(quiet_latency) < 2.5 * unloaded, (quiet_latency, unloaded)
        assert statistics.mean(flood_latency) > 3 * max(quiet_latency)
    else:
        assert max(quiet_latency) > 2.5 * unloaded  # the control: FIFO behind the flood
    await gate.close()


async def test_requests_past_their_deadline_get_queue_timeout():
    clock = FakeClock()
    engine = Engine(clock, max_num_seqs=2)
    gate = Gate("m", FixedLimit(2), clock, GateSettings(tick_s=0.05))
    tasks = [asyncio.create_task(request(gate, engine, clock, "t", max_queue_s=1.0)) for _ in range(20)]
    results = await run_until_done(clock, tasks)
    refused = [r for r in results if "refused" in r]
    served = [r for r in results if "wait" in r]
    assert refused and all(r["refused"] == "queue_timeout" for r in refused)
    assert served and all(r["wait"] <= 1.0 + 0.05 for r in served)
    assert len(gate.queue) == 0 and gate.in_flight == 0
    await gate.close()


async def test_protection_engages_on_engine_saturation_and_relaxes_when_it_drains():
    clock = FakeClock()
    engine = Engine(clock, max_num_seqs=4)
    detector = SaturationDetector(lambda: [engine.reading()], clock, queue_threshold=4, kv_threshold=0.9,
                                  stale_after_s=1.0)
    protection = ProtectionMode(clock, engage_at=1.0, relax_at=0.5, engage_after_s=0.5, relax_after_s=1.0)
    # A window wider than the engine: the engine's own queue fills, and that is what Sluice watches.
    gate = Gate("m", FixedLimit(32), clock, GateSettings(tick_s=0.05, top_priority=10),
                          saturation=detector, protection=protection)
    gate.start()
    load = [asyncio.create_task(request(gate, engine, clock, "t")) for _ in range(24)]
    await clock.run_for(1.0)
    assert engine.model.num_waiting >= 4 and protection.engaged
    shed = await request(gate, engine, clock, "batch", priority=-1)
    assert shed == {"tenant": "batch", "refused": "shed"}
    await run_until_done(clock, load)
    await clock.run_for(2.0)
    assert not protection.engaged
    (after,) = await run_until_done(clock, [asyncio.create_task(request(gate, engine, clock, "batch", priority=-1))])
    assert "wait" in after, "sheddable traffic is served again once protection relaxed"
    await gate.close()
