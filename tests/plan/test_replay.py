"""The replay: the gateway's quota, gate and preemption on simulated engines, on virtual time."""

from __future__ import annotations

import random

from sluice.plan import SloPolicy, replay, report
from tests.plan.conftest import settings_with, trace_of


def by_key(result, key):
    return [o for o in result.outcomes if o.principal.key_id == key]


def statuses(outcomes):
    return [(o.status, o.reason) for o in outcomes]


def test_request_rate_refusals_are_exactly_the_gcra_s():
    """5 a minute, a bucket of 5: of one a second for 12 s, the first 5 pass; a unit drips back every 12 s, so one
    at 12.5 s passes too. Another key of the same tier has its own bucket."""
    settings = settings_with({"free": {"requests": "5/minute"}}, {"a": ("t1", "free"), "b": ("t2", "free")})
    trace = trace_of(*[(float(t), "a") for t in range(12)], (12.5, "a"), (0.5, "b"), (1.5, "b"))
    result = replay(settings, trace, replicas=1)
    assert statuses(by_key(result, "a")) == [(200, None)] * 5 + [(429, "quota_requests")] * 7 + [(200, None)]
    assert statuses(by_key(result, "b")) == [(200, None)] * 2


def test_concurrency_refusals_free_up_when_requests_end():
    settings = settings_with({"pro": {"concurrent": 2}}, {"c": ("t", "pro")})
    result = replay(settings, trace_of((0.0, "c"), (0.0, "c"), (0.0, "c"), (0.0, "c"), (60.0, "c"), output=200),
                    replicas=1)
    assert statuses(result.outcomes) == [(200, None)] * 2 + [(429, "quota_concurrent")] * 2 + [(200, None)]


def test_token_budgets_are_reconciled_with_what_was_generated():
    """2000 tokens a minute (one back every 30 ms); each request, one every 2 s, reserves 128 + 400 = 528. Generating
    all 400, four pass (2000, 1472 + 67, 1011 + 67, 549 + 67: then less than 528 is left); generating 20, each gives
    380 back when it ends, and all eight pass."""
    settings = settings_with({"t": {"tokens": "2000/minute"}}, {"a": ("acme", "t")})
    arrivals = [(2.0 * i, "a") for i in range(8)]

    def served(output):
        trace = trace_of(*arrivals, output=400)
        trace = type(trace)(tuple(type(r)(r.at_s, r.key_id, None, None, None, 128, 400, output, True)
                                  for r in trace.requests), 0, "test")
        return sum(o.status == 200 for o in replay(settings, trace, replicas=1).outcomes)

    assert served(400) == 4
    assert served(20) == 8


def test_the_same_trace_and_config_give_the_same_report():
    settings = settings_with({"free": {"priority": 0, "requests": {"rate": "60/minute", "burst": 10}, "max_queue_s": 1},
                              "pro": {"priority": 10, "ttft_slo_s": 0.5}},
                             {"a": ("t1", "free"), "b": ("t2", "pro"), "c": ("t3", "free")})
    rng = random.Random(7)
    t, arrivals = 0.0, []
    for _ in range(400):
        t += rng.expovariate(20)
        arrivals.append((t, rng.choice("abc")))
    trace = trace_of(*arrivals, prompt=256, output=64)
    slo = SloPolicy(settings, default_ttft_s=None)
    first, second = (replay(settings, trace, replicas=1) for _ in range(2))
    assert first.outcomes == second.outcomes
    assert report(first, span_s=trace.span_s, slo=slo) == report(second, span_s=trace.span_s, slo=slo)
    doc = report(first, span_s=trace.span_s, slo=slo)
    assert doc["tiers"]["free"]["429"] > 0 and doc["tiers"]["free"]["503"] > 0  # the load does reach the policy
    assert doc["tiers"]["pro"]["ttft_target_s"] == 0.5 and doc["tiers"]["free"]["meets_slo"] is None


def dispatch_order(result):
    served = [o for o in result.outcomes if o.status == 200]
    return [o.principal.tier for o in sorted(served, key=lambda o: (o.at_s + o.queue_wait_s, o.at_s))]


def test_a_more_important_tier_goes_ahead_of_those_waiting():
    """A window of 2; ten low requests at 0 fill it and queue; five high ones at 0.1 s go before the eight still
    waiting. With equal priorities (one tenant: no fair share between them) they wait their turn."""
    admission = {"window": {"initial": 2}}
    arrivals = [*[(0.0, "a")] * 10, *[(0.1, "b")] * 5]
    ranked = settings_with({"low": {"priority": 0, "max_queue_s": 60}, "high": {"priority": 10, "max_queue_s": 60}},
                           {"a": ("acme", "low"), "b": ("acme", "high")}, admission=admission)
    order = dispatch_order(replay(ranked, trace_of(*arrivals), replicas=1))
    assert order == ["low"] * 2 + ["high"] * 5 + ["low"] * 8
    equal = settings_with({"low": {"priority": 0, "max_queue_s": 60}, "high": {"priority": 0, "max_queue_s": 60}},
                          {"a": ("acme", "low"), "b": ("acme", "high")}, admission=admission)
    assert dispatch_order(replay(equal, trace_of(*arrivals), replicas=1)) == ["low"] * 10 + ["high"] * 5


def test_preemption_stops_a_running_stream_for_a_more_important_one_which_then_resumes():
    tiers = {"low": {"priority": 0, "max_queue_s": 60}, "high": {"priority": 10, "max_queue_s": 60}}
    keys = {"a": ("t1", "low"), "b": ("t2", "high")}
    trace = trace_of((0.0, "a"), (0.0, "a"), (1.0, "b"), output=400)
    preempting = settings_with(tiers, keys, admission={"window": {"initial": 2},
                                                       "preemption": {"enabled": True, "priority_gap": 5}})
    result = replay(preempting, trace, replicas=1)
    low, high = by_key(result, "a"), by_key(result, "b")
    assert sum(o.preempted for o in low) == 1 and high[0].queue_wait_s == 0.0
    assert all(o.status == 200 and o.output_tokens == 400 for o in result.outcomes)  # the stopped one resumed whole
    waiting = replay(settings_with(tiers, keys, admission={"window": {"initial": 2}}), trace, replicas=1)
    assert sum(o.preempted for o in waiting.outcomes) == 0 and by_key(waiting, "b")[0].queue_wait_s > 1.0


def test_requests_that_wait_past_their_tier_s_queue_deadline_are_503():
    settings = settings_with({"t": {"max_queue_s": 1}}, {"a": ("acme", "t")}, admission={"window": {"initial": 1}})
    result = replay(settings, trace_of(*[(0.0, "a")] * 5, output=300), replicas=1)
    assert statuses(result.outcomes) == [(200, None)] + [(503, "queue_timeout")] * 4
    assert all(1.0 <= o.queue_wait_s <= 1.05 for o in result.outcomes[1:])  # found out at the gate's next tick


def test_more_replicas_serve_what_one_cannot():
    settings = settings_with({"t": {"max_queue_s": 2}}, {"a": ("acme", "t")})
    trace = trace_of(*[(i / 40, "a") for i in range(400)], prompt=256, output=64)
    one, three = (replay(settings, trace, replicas=n) for n in (1, 3))
    refused = [sum(o.status == 503 for o in r.outcomes) for r in (one, three)]
    assert refused[0] > 0 and refused[1] == 0
    assert {o.principal.tenant for o in three.outcomes} == {"acme"}


def test_a_request_larger_than_the_engine_is_refused_not_stuck():
    settings = settings_with({"t": {}}, {"a": ("acme", "t")}, sim={"max_model_len": 1024})
    result = replay(settings, trace_of((0.0, "a"), prompt=1000, output=100), replicas=1)
    assert statuses(result.outcomes) == [(400, "context_length_exceeded")]


def test_a_model_the_config_lacks_is_404():
    settings = settings_with({"t": {}}, {"a": ("acme", "t")})
    trace = trace_of((0.0, "a"))
    trace = type(trace)(tuple(type(r)(r.at_s, r.key_id, None, None, "other", 10, 10, 10, True)
                              for r in trace.requests), 0, "test")
    assert statuses(replay(settings, trace, replicas=1).outcomes) == [(404, "not_found")]
    assert statuses(replay(settings, trace, replicas=1, model="m").outcomes) == [(200, None)]


def test_a_tier_that_clamps_over_budget_requests_runs_them_shorter():
    """700 tokens a minute; the first request takes 500. The second asks for 100 + 400: refused by default; under
    ``over_budget: clamp`` it runs with what is left (200, and what dripped back in 0.1 s) as its answer."""
    outputs = {}
    for policy in ("refuse", "clamp"):
        settings = settings_with({"t": {"tokens": "700/minute", "over_budget": policy}}, {"a": ("acme", "t")})
        result = replay(settings, trace_of((0.0, "a"), (0.1, "a"), prompt=100, output=400), replicas=1)
        outputs[policy] = [(o.status, o.output_tokens) for o in result.outcomes]
    assert outputs["refuse"] == [(200, 400), (429, 0)]
    assert outputs["clamp"][0] == (200, 400) and outputs["clamp"][1][0] == 200
    assert 100 <= outputs["clamp"][1][1] < 110
