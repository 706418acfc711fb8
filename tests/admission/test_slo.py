"""SLO-aware admission on an injected clock: the TTFT predictor, and the gate refusing at once a request whose
first token would come after its tier's target, while admitting those that can make it."""

from __future__ import annotations

import asyncio

import pytest

from sluice.admission import FixedLimit, Gate, GateSettings, Outcome, Permit, TtftPredictor, ticket_for
from sluice.admission._ticket import Ticket
from sluice.clock import FakeClock
from sluice.errors import OverloadedError, SloUnattainableError


def gate(clock: FakeClock, limit: int = 2) -> Gate:
    return Gate("pool", FixedLimit(limit), clock, GateSettings(top_priority=10, tick_s=0.05))


def ticket(clock: FakeClock, *, slo_s: float | None, priority: int = 0, prompt: int = 100,
           tenant: str = "t") -> Ticket:
    return ticket_for(priority, tenant, 1.0, prompt, 50, clock.now() + 60.0, slo_s)


async def teach(g: Gate, clock: FakeClock, *, service_s: float, ttft_s: float, prompt: int = 100,
                times: int = 1) -> None:
    """Run ``times`` requests through an idle gate, each holding its place ``service_s`` with a first token
    ``ttft_s`` after dispatch."""
    for _ in range(times):
        permit = await g.admit(ticket(clock, slo_s=None, prompt=prompt))
        clock.advance(service_s)
        g.release(permit, Outcome.SUCCESS, ttft_s, 10)


async def fill(g: Gate, clock: FakeClock, n: int) -> list[Permit]:
    return [await g.admit(ticket(clock, slo_s=None)) for _ in range(n)]


async def refused_or_hung(g: Gate, t: Ticket) -> Permit:
    """Admit ``t``; a refusal comes at once, so one that has not come (it queued) fails the test, not hangs it."""
    task = asyncio.create_task(g.admit(t))
    for _ in range(3):
        await asyncio.sleep(0)
    if not task.done():
        task.cancel()
        pytest.fail("the request queued instead of being refused at once")
    return task.result()


# -- the predictor -------------------------------------------------------------------------------------------


def test_with_no_data_the_predictor_predicts_no_wait():
    p = TtftPredictor()
    prediction = p.predict(places_needed=50, in_flight=4, prompt_tokens=1000)
    assert prediction.queue_s == 0.0 and prediction.engine_s == 0.0


def test_queue_wait_is_places_needed_times_service_time_over_requests_in_flight():
    p = TtftPredictor()
    p.observe_service(2.0)
    assert p.queue_s(places_needed=4, in_flight=2) == pytest.approx(4.0)
    assert p.queue_s(places_needed=4, in_flight=8) == pytest.approx(1.0)
    assert p.queue_s(places_needed=0, in_flight=8) == 0.0


def test_service_time_follows_recent_samples():
    p = TtftPredictor(smoothing=0.5)
    p.observe_service(1.0)
    p.observe_service(3.0)
    assert p.service_s.value == pytest.approx(2.0)
    p.observe_service(float("nan"))  # ignored
    assert p.service_s.value == pytest.approx(2.0)


def test_engine_ttft_learns_prefill_seconds_per_prompt_token():
    p = TtftPredictor(smoothing=0.1)
    for _ in range(200):  # TTFT = 0.05 s + 1 ms per prompt token
        for tokens in (100, 500, 1000):
            p.observe_ttft(tokens, 0.05 + 0.001 * tokens)
    assert p.prefill_s_per_token() == pytest.approx(0.001, rel=0.05)
    assert p.engine_ttft_s(2000) == pytest.approx(2.05, rel=0.05)
    assert p.engine_ttft_s(2000) > p.engine_ttft_s(100)


def test_alike_prompts_give_the_mean_ttft_and_no_slope():
    p = TtftPredictor()
    for _ in range(20):
        p.observe_ttft(256, 0.3)
    assert p.prefill_s_per_token() == 0.0
    assert p.engine_ttft_s(256) == pytest.approx(0.3)


def test_bands_above_that_keep_taking_places_stretch_a_lower_bands_wait():
    p = TtftPredictor(rate_tau_s=10.0)
    p.observe_service(1.0)  # 4 in flight: 4 places a second
    for i in range(120):  # the top band took 2 a second over the last minute
        p.observe_dispatch(10, i * 0.5)
    share = p.share_left(0, in_flight=4, now_s=60.0)
    assert 0.45 < share < 0.6  # about half the places are left to band 0
    assert p.share_left(10, in_flight=4, now_s=60.0) == 1.0  # nothing above the top band
    assert p.queue_s(2, 4, share) == pytest.approx(0.5 / share)
    assert p.queue_s(2, 4, 0.01) == float("inf")  # the bands above take every place
    assert p.share_left(0, in_flight=4, now_s=200.0) == pytest.approx(1.0)  # they stopped long ago


# -- the gate ------------------------------------------------------------------------------------------------


async def test_a_request_the_queue_ahead_makes_late_is_refused_at_once():
    clock = FakeClock()
    g = gate(clock, limit=2)
    await teach(g, clock, service_s=1.0, ttft_s=0.1)
    held = await fill(g, clock, 2)
    queued = [asyncio.create_task(g.admit(ticket(clock, slo_s=10.0))) for _ in range(3)]
    await asyncio.sleep(0)
    assert len(g.queue) == 3  # 3 waiting: a 4th needs 4 places at 2 per second: 2 s + 0.1 s
    with pytest.raises(SloUnattainableError) as refused:
        await refused_or_hung(g, ticket(clock, slo_s=1.5))
    err = refused.value
    assert isinstance(err, OverloadedError) and err.status == 503
    assert err.reason == "slo_unattainable" and err.code == "slo_unattainable"
    assert int(err.headers["retry-after-ms"]) == 600  # 2.1 s predicted - 1.5 s target
    assert err.headers["retry-after"] == "1"
    assert len(g.queue) == 3  # it never queued
    for p in held:
        g.release(p, Outcome.SUCCESS, 0.1, 10)
    await g.close()
    await asyncio.gather(*queued, return_exceptions=True)


async def test_a_request_that_can_make_its_target_waits_for_its_place():
    clock = FakeClock()
    g = gate(clock, limit=2)
    await teach(g, clock, service_s=1.0, ttft_s=0.1)
    held = await fill(g, clock, 2)
    waiting = asyncio.create_task(g.admit(ticket(clock, slo_s=1.0)))  # 1 place at 2 per second: 0.6 s
    await asyncio.sleep(0)
    assert len(g.queue) == 1 and not waiting.done()
    g.release(held[0], Outcome.SUCCESS, 0.1, 10)
    permit = await waiting
    assert permit.ticket.ttft_slo_s == 1.0
    await g.close()


async def test_a_waiting_request_leaves_the_queue_once_it_can_no_longer_make_its_target():
    clock = FakeClock()
    g = gate(clock, limit=2)
    await teach(g, clock, service_s=1.0, ttft_s=0.3)
    held = await fill(g, clock, 2)
    waiting = asyncio.create_task(g.admit(ticket(clock, slo_s=1.0)))  # predicted 0.8 s: it may wait until 0.7 s
    await asyncio.sleep(0)
    clock.advance(0.6)
    g.tick()
    await asyncio.sleep(0)
    assert not waiting.done()
    clock.advance(0.2)  # past 0.7 s: its first token would come after 1 s
    g.tick()
    with pytest.raises(OverloadedError) as refused:
        await waiting
    assert refused.value.reason == "queue_timeout"
    for p in held:
        g.release(p, Outcome.SUCCESS, 0.1, 10)
    await g.close()


async def test_a_generous_top_tier_is_not_refused_where_a_strict_one_is():
    clock = FakeClock()
    g = gate(clock, limit=2)
    await teach(g, clock, service_s=1.0, ttft_s=0.2)
    await fill(g, clock, 2)
    backlog = [asyncio.create_task(g.admit(ticket(clock, slo_s=None, priority=0))) for _ in range(10)]
    await asyncio.sleep(0)
    with pytest.raises(SloUnattainableError):  # behind all 10 of its band: 5.5 s + 0.2 s
        await refused_or_hung(g, ticket(clock, slo_s=2.0, priority=0))
    # the top band goes before the backlog: one place (0.5 s) + 0.2 s, within its 2 s
    top = asyncio.create_task(g.admit(ticket(clock, slo_s=2.0, priority=10)))
    await asyncio.sleep(0)
    assert not top.done() and g.queue.waiting_at(10) == 1
    # and a tier whose target is generous waits behind the backlog rather than being refused
    generous = asyncio.create_task(g.admit(ticket(clock, slo_s=30.0, priority=0)))
    await asyncio.sleep(0)
    assert not generous.done() and g.queue.waiting_at(0) == 11
    await g.close()
    await asyncio.gather(*backlog, top, generous, return_exceptions=True)


async def test_a_lower_band_is_refused_when_the_top_band_keeps_taking_the_places_it_waits_for():
    clock = FakeClock()
    g = gate(clock, limit=2)
    await teach(g, clock, service_s=1.0, ttft_s=0.1)
    for _ in range(20):  # the top band takes every place as it frees up: 2 a second
        permits = [await g.admit(ticket(clock, slo_s=None, priority=10)) for _ in range(2)]
        clock.advance(1.0)
        for permit in permits:
            g.release(permit, Outcome.SUCCESS, 0.1, 10)
    await fill(g, clock, 2)
    # nothing ahead in the queue: one place at 2 a second (0.5 s) would make 2 s, but the top band takes most
    with pytest.raises(SloUnattainableError) as refused:
        await refused_or_hung(g, ticket(clock, slo_s=2.0, priority=0))
    assert int(refused.value.headers["retry-after-ms"]) >= 1
    top = asyncio.create_task(g.admit(ticket(clock, slo_s=2.0, priority=10)))  # the top band still queues
    await asyncio.sleep(0)
    assert not top.done()
    await g.close()
    await asyncio.gather(top, return_exceptions=True)


async def test_without_data_or_target_nothing_is_refused():
    clock = FakeClock()
    g = gate(clock, limit=1)
    await fill(g, clock, 1)
    blind = asyncio.create_task(g.admit(ticket(clock, slo_s=0.001)))  # nothing learnt yet: no guess
    no_target = asyncio.create_task(g.admit(ticket(clock, slo_s=None)))
    await asyncio.sleep(0)
    assert len(g.queue) == 2
    await g.close()
    await asyncio.gather(blind, no_target, return_exceptions=True)


async def test_a_request_dispatched_at_once_is_never_refused_even_with_a_slow_engine():
    clock = FakeClock()
    g = gate(clock, limit=2)
    await teach(g, clock, service_s=5.0, ttft_s=3.0)  # the engine alone misses a 1 s target
    permit = await g.admit(ticket(clock, slo_s=1.0))
    assert permit.waited_s == 0.0


async def test_the_gate_learns_service_time_from_releases_and_ttft_from_successes_only():
    clock = FakeClock()
    g = gate(clock, limit=1)
    await teach(g, clock, service_s=2.0, ttft_s=0.5)
    assert g.predictor.service_s.value == pytest.approx(2.0)
    assert g.predictor.engine_ttft_s(100) == pytest.approx(0.5)
    permit = await g.admit(ticket(clock, slo_s=None))
    clock.advance(2.0)
    g.release(permit, Outcome.DROPPED, 9.0, 0)  # a failed request's latency is not a TTFT
    assert g.predictor.engine_ttft_s(100) == pytest.approx(0.5)
