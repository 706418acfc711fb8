"""The what-if planner (``sluice plan``): replay a recorded trace through the gateway's own policy (quotas,
priorities, admission, preemption) against simulated engine replicas on virtual time, and report per tier and
tenant what would happen, and how many replicas the TTFT targets need.

``_trace`` reads access logs and bench runs; ``_virtual_time`` is the event loop whose clock jumps to the next
event; ``_replica`` steps the simulator's engine model; ``_pool`` puts the gate in front of the replicas;
``_replay`` walks each request through quota, gate and engine; ``_calibration`` fits the engine's speed;
``_report`` and ``_command`` say what came out; ``_arguments`` is the command line.

    result = replay(settings, read_trace("access.log"), replicas=2)

Only ``add_plan_parser`` is imported with the package (``sluice`` builds its parser at every start); the planner's
names are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sluice.plan._arguments import add_plan_parser

if TYPE_CHECKING:
    from sluice.plan._calibration import calibrated, from_bench, from_vllm_metrics
    from sluice.plan._command import ReplicaRange, plan_replicas, run_command
    from sluice.plan._replay import ReplayResult, RequestOutcome, replay
    from sluice.plan._report import SloPolicy, render_table, report
    from sluice.plan._trace import Trace, TraceRequest, read_trace

_HOMES = {
    "calibrated": "_calibration", "from_bench": "_calibration", "from_vllm_metrics": "_calibration",
    "ReplicaRange": "_command", "plan_replicas": "_command", "run_command": "_command",
    "ReplayResult": "_replay", "RequestOutcome": "_replay", "replay": "_replay",
    "SloPolicy": "_report", "render_table": "_report", "report": "_report",
    "Trace": "_trace", "TraceRequest": "_trace", "read_trace": "_trace",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'sluice.plan' has no attribute {name!r}")
    return getattr(importlib.import_module(f"sluice.plan.{home}"), name)


__all__ = [
    "ReplayResult",
    "ReplicaRange",
    "RequestOutcome",
    "SloPolicy",
    "Trace",
    "TraceRequest",
    "add_plan_parser",
    "calibrated",
    "from_bench",
    "from_vllm_metrics",
    "plan_replicas",
    "read_trace",
    "render_table",
    "replay",
    "report",
    "run_command",
]
