"""Preemption at the gate, on an injected clock: who is stopped for whom, and where the rest of it waits."""

from __future__ import annotations

import asyncio

import pytest

from sluice.admission import FixedLimit, Outcome
from sluice.clock import FakeClock
from sluice.errors import OverloadedError
from tests.admission.test_gate import gate, ticket, waiting


async def settled() -> None:
    """Let woken tasks run (a granted future wakes its task on the next loop turn)."""
    for _ in range(3):
        await asyncio.sleep(0)


class Stops:
    """Stands in for the upstream requests the gate may stop: records which were told to."""

    def __init__(self) -> None:
        self.stopped: list[str] = []

    def arm(self, g, permit, name: str) -> None:
        g.arm(permit, lambda: self.stopped.append(name))


async def running(g, clock, stops, *specs):
    """Admit requests that fit at once, each armed to be preemptible; ``specs`` are (name, priority)."""
    permits = {}
    for name, priority in specs:
        permits[name] = await g.admit(ticket(clock, priority=priority))
        stops.arm(g, permits[name], name)
    return permits


async def test_a_top_request_stops_the_least_important_newest_running_one():
    clock = FakeClock()
    g = gate(clock, limit=3, preempt_gap=5)
    stops = Stops()
    permits = await running(g, clock, stops, ("std-old", 0), ("batch", -1), ("std-new", 0))
    (premium,) = await waiting(g, ticket(clock, priority=10))
    assert stops.stopped == ["batch"]
    assert permits["batch"].stopped and not permits["std-new"].stopped
    assert not premium.done()  # its place comes when the stopped one gives it back
    resumed = asyncio.create_task(g.resume(permits["batch"], extra_prompt_tokens=7, deadline_s=clock.now() + 60))
    await settled()
    assert premium.done() and not resumed.done()
    (rest,) = g.queue  # the rest waits: its prompt now holds what was generated, and it is no longer stopped
    assert rest.resumed and rest.prompt_tokens == permits["batch"].ticket.prompt_tokens + 7
    assert rest.priority == -1 and rest.tokens == permits["batch"].ticket.tokens and not rest.preempted
    (second,) = await waiting(g, ticket(clock, priority=10))
    assert stops.stopped == ["batch", "std-new"]  # then the newest of the next band
    g.release(premium.result(), Outcome.SUCCESS, 0.1, 10)
    await settled()
    assert second.done() and not resumed.done()  # the top band first; the stopped ones wait at their bands' heads


async def test_one_waiting_request_stops_one_running_request():
    clock = FakeClock()
    g = gate(clock, limit=2, preempt_gap=5)
    stops = Stops()
    await running(g, clock, stops, ("a", 0), ("b", 0))
    await waiting(g, ticket(clock, priority=10))
    await clock.run_for(0.2)  # ticks: the stopped one has not given its place back yet
    assert stops.stopped == ["b"]
    await waiting(g, ticket(clock, priority=10))
    assert stops.stopped == ["b", "a"]


async def test_only_requests_far_enough_below_and_resumable_are_stopped():
    clock = FakeClock()
    g = gate(clock, limit=3, preempt_gap=5)
    stops = Stops()
    await running(g, clock, stops, ("near", 6))
    await g.admit(ticket(clock, priority=-1))  # not armed: its stream could not be resumed
    await g.admit(ticket(clock, priority=0))
    (task,) = await waiting(g, ticket(clock, priority=10))
    await clock.run_for(0.2)
    assert stops.stopped == [] and not task.done()


async def test_a_waiting_request_preempts_as_soon_as_a_running_one_becomes_preemptible():
    clock = FakeClock()
    g = gate(clock, limit=1, preempt_gap=5, tick_s=10.0)  # no tick in between: arming itself looks again
    stops = Stops()
    permit = await g.admit(ticket(clock, priority=0))  # admitted, its upstream request not yet answered
    await waiting(g, ticket(clock, priority=10))
    assert stops.stopped == []
    stops.arm(g, permit, "low")
    assert stops.stopped == ["low"]


async def test_when_the_window_shrank_below_what_runs_enough_are_stopped_to_seat_the_waiting():
    clock = FakeClock()
    g = gate(clock, limit=3, preempt_gap=5)
    stops = Stops()
    await running(g, clock, stops, ("a", 0), ("b", 0), ("c", 0))
    g.limit = FixedLimit(2)  # an adaptive window came down by one
    await waiting(g, ticket(clock, priority=10))
    assert stops.stopped == ["c", "b"]  # one place to give back, one for the waiting request


async def test_without_a_gap_nothing_is_preempted():
    clock = FakeClock()
    g = gate(clock, limit=1)
    stops = Stops()
    await running(g, clock, stops, ("low", -1))
    await waiting(g, ticket(clock, priority=10))
    await clock.run_for(0.2)
    assert stops.stopped == []


async def test_the_rest_of_a_stopped_request_goes_before_its_band_but_after_more_important_ones():
    clock = FakeClock()
    g = gate(clock, limit=1, preempt_gap=5)
    stops = Stops()
    permits = await running(g, clock, stops, ("low", 0))
    band = await waiting(g, ticket(clock, priority=0, tenant="other"))
    (premium,) = await waiting(g, ticket(clock, priority=10))
    assert stops.stopped == ["low"]
    resumed = asyncio.create_task(g.resume(permits["low"], extra_prompt_tokens=3, deadline_s=clock.now() + 60))
    await settled()
    assert premium.done() and not resumed.done()
    (rest,) = [t for t in g.queue if t.resumed]
    g.release(premium.result(), Outcome.SUCCESS, 0.1, 10)
    await settled()
    assert resumed.done() and not band[0].done()
    permit = resumed.result()
    assert permit.ticket is rest and g.in_flight == 1
    g.release(permit, Outcome.SUCCESS, 0.1, 10)
    await settled()
    assert band[0].done()


async def test_a_stopped_request_is_never_the_one_displaced_from_a_full_queue():
    clock = FakeClock()
    g = gate(clock, limit=1, preempt_gap=5, queue_max_requests=2)
    stops = Stops()
    permits = await running(g, clock, stops, ("low", -1))
    (_premium,) = await waiting(g, ticket(clock, priority=10))
    resumed = asyncio.create_task(g.resume(permits["low"], extra_prompt_tokens=3, deadline_s=clock.now() + 60))
    await settled()
    newer = await waiting(g, ticket(clock, priority=-1))
    await waiting(g, ticket(clock, priority=0))  # the queue is full: the newest sheddable one gives way
    await settled()
    assert newer[0].done() and not resumed.done()
    assert [t.priority for t in g.queue if t.resumed] == [-1]  # the rest of "low" still waits


async def test_a_disarmed_request_is_no_longer_stopped():
    clock = FakeClock()
    g = gate(clock, limit=1, preempt_gap=5)
    stops = Stops()
    permits = await running(g, clock, stops, ("low", 0))
    g.disarm(permits["low"])  # its stream could no longer be resumed
    (premium,) = await waiting(g, ticket(clock, priority=10))
    await clock.run_for(0.2)
    assert stops.stopped == [] and not permits["low"].stopped and not premium.done()


async def test_the_rest_of_a_stopped_request_waits_until_the_deadline_it_was_given():
    clock = FakeClock()
    g = gate(clock, limit=1, preempt_gap=5)
    stops = Stops()
    permits = await running(g, clock, stops, ("low", 0))
    (premium,) = await waiting(g, ticket(clock, priority=10))
    resumed = asyncio.create_task(g.resume(permits["low"], extra_prompt_tokens=3, deadline_s=clock.now() + 0.5))
    await settled()
    assert premium.done() and not resumed.done()
    await clock.run_for(0.3)
    assert not resumed.done()
    await clock.run_for(0.4)
    with pytest.raises(OverloadedError) as refused:
        await resumed
    assert refused.value.reason == "queue_timeout"
