"""Overload's configurations, tiers and tenants, and where its results go."""

from __future__ import annotations

from bench.harness import RESULTS_DIR, ROOT
from sluice.sim import METRIC_NAMES

RESULTS = RESULTS_DIR / "overload.json"
PLOTS = RESULTS_DIR / "overload"
DOC_IMG = ROOT / "docs" / "img"
MODEL = "sluice-sim"
SIM_CPU, GATEWAY_CPU, LOAD_CPU = "0", "1", "0"
SIM_FIFO_PRIORITY, FIFO_PRIORITY = 2, 1  # the simulator preempts the load generator on their CPU
CONFIGS = ("direct", "fixed", "adaptive", "engine-priority", "engine-preempt", "fixed-preempt", "adaptive-preempt")
# configurations where the gateway preempts (admission.preemption) in front of the vLLM-dialect simulator
GATEWAY_PREEMPT = {"fixed-preempt": "fixed", "adaptive-preempt": "adaptive"}
# the simulator's scheduling policy per configuration (the others: fcfs)
SIM_POLICY = {"engine-priority": "priority", "engine-preempt": "priority"}
# the simulator's dialect per configuration, also the gateway's engine dialect (the others: vllm)
SIM_DIALECT = {"engine-preempt": "sglang"}
# what this script reads of the simulator, named as in its vLLM dialect (counters with their "_total")
SIM_READ_GAUGES, SIM_READ_COUNTERS = ("running", "waiting", "kv_usage"), ("generation_tokens", "preemptions")


def sim_metric_aliases(dialect: str) -> dict[str, str]:
    """The simulator's metric names in ``dialect`` -> its names in the vLLM dialect, which this script reads."""
    theirs, ours = METRIC_NAMES[dialect], METRIC_NAMES["vllm"]
    pairs = [(getattr(theirs, f), getattr(ours, f)) for f in SIM_READ_GAUGES]
    pairs += [(f"{getattr(theirs, f)}_total", f"{getattr(ours, f)}_total") for f in SIM_READ_COUNTERS
              if getattr(theirs, f) is not None]
    return {a: b for a, b in pairs if a != b}

# tier -> settings (no quota limits at all); tenants -> (tier, share of the arrivals)
TIERS: dict[str, dict[str, float]] = {
    "premium": {"priority": 10, "max_queue_s": 5.0},
    "standard": {"priority": 0, "max_queue_s": 0.5},
    "batch": {"priority": -1, "max_queue_s": 2.0},
}
TENANTS: dict[str, tuple[str, float]] = {
    "premium": ("premium", 0.15),
    "std-a": ("standard", 0.30),
    "std-b": ("standard", 0.30),
    "batch": ("batch", 0.25),
}
EQUAL_TENANTS = ("std-a", "std-b")
UNLOADED_LOAD = 0.1
SAMPLE_EVERY_S = 0.5
