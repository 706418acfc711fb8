"""SGLang's server (``sglang.launch_server``).

Sources (sgl-project/sglang):
- probes: python/sglang/srt/entrypoints/http_server.py, ``GET /health`` (the process is up) and
  ``GET /health_generate`` (runs a one-token generation: the engine really serves).
- metrics (need ``--enable-metrics``): python/sglang/srt/metrics/collector.py, gauges
  ``sglang:num_running_reqs``, ``sglang:num_queue_reqs``, ``sglang:token_usage`` (KV-pool tokens in use,
  0..1); label ``model_name`` (recent versions add more labels, e.g. ``priority``: series are summed).
- priority: the request field ``priority``, read only under ``--enable-priority-scheduling``; higher values
  run first unless the server runs with ``--schedule-low-priority-values-first``
  (python/sglang/srt/server_args.py). Without the flag the field is ignored, or the request aborted under
  ``--abort-on-priority-when-disabled``, so Sluice strips it there.
- flags: python/sglang/srt/server_args.py (``--model-path``, ``--tp-size``, ``--mem-fraction-static``,
  ``--context-length``, ``--served-model-name``, ``--enable-metrics``).
- overload: with ``--max-queued-requests`` the scheduler refuses at admission, "The request queue is full."
  (or, with priority scheduling, "The request is aborted by a higher priority request."): HTTP 503 for
  plain requests, and for streams an error event carrying code 503 inside an HTTP 200.
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
        spec.python, "-m", "sglang.launch_server",
        "--model-path", spec.model,
        "--host", spec.host,
        "--port", str(spec.port),
        "--tp-size", str(spec.tp),
        *optional("--mem-fraction-static", spec.gpu_memory_utilization),
        *optional("--context-length", spec.max_model_len),
        *optional("--served-model-name", spec.served_model_name),
        "--enable-metrics",
        *spec.extra_args,
    ]


SGLANG = EngineDialect(
    name="sglang",
    health_path="/health",
    ready_path="/health_generate",
    metrics=MetricNames(
        running=("sglang:num_running_reqs",),
        waiting=("sglang:num_queue_reqs",),
        kv_usage=("sglang:token_usage",),
    ),
    priority=PriorityConvention(higher_first=True, needs_flag="--enable-priority-scheduling"),
    overload=OverloadSignature(
        statuses=frozenset({429, 503}),
        messages=("The request queue is full", "aborted by a higher priority request"),
    ),
    _argv=launch_argv,
)
