"""The planner against a real run: the same trace through the real gateway and simulator (``sluice serve`` and
``sluice bench`` as processes, bench/plan_check.py), then through the planner. Bounded: 160 requests at 16/s.

Quota refusals depend only on who arrived when: the planner must get them (nearly) exactly. How many wait past
their queue deadline depends on how fast the real engine ran on this shared machine, so only their presence is
checked here; bench/plan_check.py measures how close the counts and the p99 TTFT come (docs/benchmarks.md)."""

from __future__ import annotations

from bench.harness import free_port
from bench.plan_check import check


def test_the_planner_predicts_a_real_run_s_refusals(tmp_path):
    result = check(tmp_path, requests=160, rate=16.0, seed=3, speed=1.0, port=free_port())
    for name in ("configured", "self_calibrated"):
        comparison = result["predictions"][name]["comparison"]
        for tier in ("free", "pro", "all"):
            quota = comparison[tier]["429"]
            assert abs(quota["predicted"] - quota["measured"]) <= 2, (name, tier, quota)
        assert comparison["all"]["429"]["measured"] > 0  # the trace does reach the quota
    queue = result["predictions"]["self_calibrated"]["comparison"]["free"]["503"]
    assert (queue["measured"] > 0) == (queue["predicted"] > 0), queue
