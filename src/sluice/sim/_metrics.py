"""``/metrics`` in each engine's own names, on a registry of this simulator's own (no global registry), and the
simulated GPU's gauges in NVIDIA dcgm-exporter's names (``sluice.sim._gpu``), as if an exporter shared the port.

Gauges and token counters are read off the engine model at scrape time; latency histograms and the success
counter are fed by the runner (``StepObserver``).

The names are the dialect table's (``sluice.dialects``, where their sources are cited): for the load gauges, the
first of each tuple, the name the engine exports today.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from sluice.config import Dialect
from sluice.dialects import DIALECTS, MetricNames
from sluice.sim._engine import EngineModel
from sluice.sim._gpu import DcgmCollector, GpuActivity

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

TTFT_BUCKETS_S = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                  20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)  # vLLM's
ITL_BUCKETS_S = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                 20.0, 40.0, 80.0)
E2E_BUCKETS_S = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                 240.0, 480.0, 960.0, 1920.0, 7680.0)


@dataclass(frozen=True)
class DialectMetricNames:
    """The names one engine exports (``sluice.dialects.MetricNames``, each load gauge by its current name);
    ``None`` where the engine has no such metric. Counters lack ``_total``."""

    running: str
    waiting: str
    kv_usage: str
    prompt_tokens: str
    generation_tokens: str
    ttft: str
    e2e: str
    itl: str | None = None
    preemptions: str | None = None
    success: str | None = None
    prefix_cache_queries: str | None = None  # tokens looked up in the prefix cache
    prefix_cache_hits: str | None = None  # tokens found there
    cache_hit_rate: str | None = None  # gauge: of the last prefill step
    engine_label: bool = False  # vLLM and LMDeploy add engine="0"

    @classmethod
    def exported(cls, names: MetricNames) -> DialectMetricNames:
        """What an engine of the dialect exports today: the first name of each load gauge, the rest as is."""
        return cls(
            running=names.running[0], waiting=names.waiting[0], kv_usage=names.kv_usage[0],
            prompt_tokens=names.prompt_tokens, generation_tokens=names.generation_tokens, ttft=names.ttft,
            e2e=names.e2e, itl=names.itl, preemptions=names.preemptions, success=names.success,
            prefix_cache_queries=names.prefix_cache_queries, prefix_cache_hits=names.prefix_cache_hits,
            cache_hit_rate=names.cache_hit_rate, engine_label=names.engine_label,
        )


# every dialect's exported names (read by bench.overload to translate them)
METRIC_NAMES: Mapping[str, DialectMetricNames] = MappingProxyType(
    {name: DialectMetricNames.exported(facts.metrics) for name, facts in DIALECTS.items()}
)


class _EngineStateCollector:
    """Gauges and token counters, read from the engine model when scraped."""

    def __init__(self, engine: EngineModel, names: DialectMetricNames, labels: dict[str, str]) -> None:
        self._engine = engine
        self._names = names
        self._labels = labels

    def collect(self) -> Iterator[Metric]:
        e, n = self._engine, self._names
        keys, values = list(self._labels), list(self._labels.values())
        gauges = [
            (n.running, "Number of requests in model execution batches.", e.num_running),
            (n.waiting, "Number of requests waiting to be processed.", e.num_waiting),
            (n.kv_usage, "KV-cache usage. 1 means 100 percent usage.", e.kv_usage),
        ]
        if n.cache_hit_rate:
            gauges.append((n.cache_hit_rate, "The prefix cache hit rate.", e.last_cache_hit_rate))
        for name, doc, value in gauges:
            g = GaugeMetricFamily(name, doc, labels=keys)
            g.add_metric(values, float(value))
            yield g
        counters = [
            (n.prompt_tokens, "Number of prefill tokens processed.", e.prompt_tokens_total),
            (n.generation_tokens, "Number of generation tokens processed.", e.generation_tokens_total),
        ]
        if n.preemptions:
            counters.append((n.preemptions, "Cumulative number of preemption from the engine.", e.num_preemptions))
        if n.prefix_cache_queries and n.prefix_cache_hits:
            counters += [
                (n.prefix_cache_queries, "Prefix cache queries, in terms of number of queried tokens.",
                 e.prefix_cache_queries_total),
                (n.prefix_cache_hits, "Prefix cache hits, in terms of number of cached tokens.",
                 e.prefix_cache_hits_total),
            ]
        for name, doc, value in counters:
            c = CounterMetricFamily(name, doc, labels=keys)
            c.add_metric(values, float(value))
            yield c


class SimMetrics:
    """The simulator's metrics in one dialect; implements the runner's ``StepObserver``. With ``gpu`` (the
    engine loop's activity), dcgm-exporter's GPU gauges too (``sluice.sim._gpu``)."""

    def __init__(self, dialect: Dialect, model_name: str, engine: EngineModel,
                 gpu: GpuActivity | None = None) -> None:
        names = METRIC_NAMES[dialect]
        labels = {"model_name": model_name}
        if names.engine_label:
            labels["engine"] = "0"
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_EngineStateCollector(engine, names, labels))
        if gpu is not None:
            self.registry.register(DcgmCollector(engine, gpu, engine.settings, model_name))
        keys = list(labels)
        self._ttft = Histogram(names.ttft, "Histogram of time to first token in seconds.", keys,
                               buckets=TTFT_BUCKETS_S, registry=self.registry).labels(**labels)
        self._e2e = Histogram(names.e2e, "Histogram of e2e request latency in seconds.", keys,
                              buckets=E2E_BUCKETS_S, registry=self.registry).labels(**labels)
        self._itl = None
        if names.itl:
            self._itl = Histogram(names.itl, "Histogram of inter-token latency in seconds.", keys,
                                  buckets=ITL_BUCKETS_S, registry=self.registry).labels(**labels)
        self._success = None
        self._labels = labels
        if names.success:
            self._success = Counter(names.success, "Count of successfully processed requests.",
                                    [*keys, "finished_reason"], registry=self.registry)

    def on_first_token(self, ttft_s: float) -> None:
        self._ttft.observe(ttft_s)

    def on_next_token(self, itl_s: float) -> None:
        if self._itl is not None:
            self._itl.observe(itl_s)

    def on_finished(self, finish_reason: str, e2e_s: float) -> None:
        self._e2e.observe(e2e_s)
        if self._success is not None:
            self._success.labels(**self._labels, finished_reason=finish_reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
