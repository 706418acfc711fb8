"""Engine dialects: what differs between vLLM, SGLang and LMDeploy, as data and pure functions.

    dialect = dialect_for("sglang")
    dialect.ready_path                       # "/health_generate"
    dialect.metrics.kv_usage                 # ("sglang:token_usage",)
    dialect.priority.apply(body, 10, scheduling_enabled=True)   # {"priority": 10, ...}
    dialect.launch_argv(LaunchSpec(model="/models/m", port=30000))
"""

from __future__ import annotations

from sluice.config import Dialect
from sluice.engines.dialects._base import (
    EngineDialect,
    LaunchSpec,
    MetricNames,
    OverloadSignature,
    PriorityConvention,
)
from sluice.engines.dialects.lmdeploy import LMDEPLOY
from sluice.engines.dialects.sglang import SGLANG
from sluice.engines.dialects.vllm import VLLM


def dialect_for(name: Dialect) -> EngineDialect:
    """The dialect called ``name``; ``KeyError`` names the known ones."""
    for dialect in (VLLM, SGLANG, LMDEPLOY):
        if dialect.name == name:
            return dialect
    raise KeyError(f"unknown engine dialect {name!r}: expected one of vllm, sglang, lmdeploy")


__all__ = [
    "LMDEPLOY",
    "SGLANG",
    "VLLM",
    "EngineDialect",
    "LaunchSpec",
    "MetricNames",
    "OverloadSignature",
    "PriorityConvention",
    "dialect_for",
]
