"""LMDeploy's OpenAI server (``lmdeploy serve api_server``).

Sources (InternLM/lmdeploy):
- probes: lmdeploy/serve/openai/api_server.py, ``GET /health`` (no separate readiness route).
- metrics (need ``--enable-metrics``): lmdeploy/metrics/loggers.py, gauges ``lmdeploy:num_requests_running``,
  ``lmdeploy:num_requests_waiting``, ``lmdeploy:gpu_cache_usage_perc`` (0..1); labels ``model_name``,
  ``engine``.
- priority: the OpenAI routes take no priority field, so Sluice strips it.
- flags: lmdeploy/cli/serve.py and cli/utils.py (the model is positional; ``--server-name``, ``--server-port``,
  ``--tp``, ``--cache-max-entry-count`` = the fraction of free memory the KV cache takes, ``--session-len``,
  ``--model-name`` = the served name).
- overload: refusals are HTTP 429/503 with ``{"object": "error", "message"}`` (create_error_response).
"""

from __future__ import annotations

from pathlib import Path

from sluice.engines.dialects._base import (
    EngineDialect,
    LaunchSpec,
    MetricNames,
    OverloadSignature,
    PriorityConvention,
    optional,
)


def launch_argv(spec: LaunchSpec) -> list[str]:
    # The `lmdeploy` console script of the interpreter's environment (LMDeploy has no `python -m` entry point).
    script = str(Path(spec.python).with_name("lmdeploy")) if "/" in spec.python else "lmdeploy"
    return [
        script, "serve", "api_server", spec.model,
        "--server-name", spec.host,
        "--server-port", str(spec.port),
        "--tp", str(spec.tp),
        *optional("--cache-max-entry-count", spec.gpu_memory_utilization),
        *optional("--session-len", spec.max_model_len),
        *optional("--model-name", spec.served_model_name),
        "--enable-metrics",
        *spec.extra_args,
    ]


LMDEPLOY = EngineDialect(
    name="lmdeploy",
    health_path="/health",
    ready_path="/health",
    metrics=MetricNames(
        running=("lmdeploy:num_requests_running",),
        waiting=("lmdeploy:num_requests_waiting",),
        kv_usage=("lmdeploy:gpu_cache_usage_perc",),
    ),
    priority=PriorityConvention(higher_first=None),
    overload=OverloadSignature(statuses=frozenset({429, 503})),
    _argv=launch_argv,
)
