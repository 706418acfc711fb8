"""Engine dialects as the gateway uses them: the facts of ``sluice.dialects`` plus each engine's launch argv.

    dialect = dialect_for("sglang")
    dialect.ready_path                       # "/health_generate"
    dialect.metrics.kv_usage                 # ("sglang:token_usage",)
    dialect.priority.apply(body, 10, scheduling_enabled=True)   # {"priority": 10, ...}
    dialect.launch_argv(LaunchSpec(model="/models/m", port=30000))
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from sluice.config import Dialect
from sluice.dialects import DIALECTS, MetricNames, OverloadSignature, PriorityConvention, facts_for
from sluice.engines.dialects._base import EngineDialect, LaunchSpec, sim_argv

ENGINE_DIALECTS: Mapping[Dialect, EngineDialect] = MappingProxyType(
    {name: EngineDialect.of(facts) for name, facts in DIALECTS.items()}
)
VLLM = ENGINE_DIALECTS["vllm"]
SGLANG = ENGINE_DIALECTS["sglang"]
LMDEPLOY = ENGINE_DIALECTS["lmdeploy"]


def dialect_for(name: Dialect) -> EngineDialect:
    """The dialect called ``name``; ``KeyError`` names the known ones."""
    return ENGINE_DIALECTS[facts_for(name).name]


__all__ = [
    "ENGINE_DIALECTS",
    "LMDEPLOY",
    "SGLANG",
    "VLLM",
    "EngineDialect",
    "LaunchSpec",
    "MetricNames",
    "OverloadSignature",
    "PriorityConvention",
    "dialect_for",
    "sim_argv",
]
