"""The ``plan`` command's arguments, apart from the planner: ``sluice`` builds its parser at every start, and the
planner (simulator, quota, admission, bench statistics) is imported only when ``plan`` runs."""

from __future__ import annotations

import argparse
from typing import Any


def add_plan_parser(sub: Any) -> None:
    """The ``plan`` command, on the ``sluice`` parser's subparsers."""
    plan = sub.add_parser("plan", help="what-if: replay a recorded trace against a config and N simulated replicas")
    plan.add_argument("--trace", required=True, help="an access log (JSON lines) or a sluice bench run (its "
                                                     "directory or results.jsonl)")
    plan.add_argument("--config", required=True, help="the configuration to try")
    plan.add_argument("--replicas", default="1", help="replicas per model: N, a range A-B, or auto (default 1)")
    plan.add_argument("--model", help="replay every request against this model of the config")
    plan.add_argument("--slo-ttft-ms", type=float, help="TTFT target of the tiers without their own ttft_slo_s")
    plan.add_argument("--attainment", type=float,
                      help="share of a tier's requests that must meet its target (default 0.99)")
    calibration = plan.add_mutually_exclusive_group()
    calibration.add_argument("--calibrate-bench", metavar="RUN", help="fit the engine's speed to a bench run")
    calibration.add_argument("--calibrate-metrics", metavar="FILE", help="fit it to a vLLM /metrics scrape")
    plan.add_argument("--batch", type=float, help="with --calibrate-metrics: the batch the engine ran at")
    plan.add_argument("--json", action="store_true", help="the report as JSON on stdout")
    plan.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from sluice.plan._command import run_command

    return run_command(args)
