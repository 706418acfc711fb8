"""Every Prometheus object of the gateway, defined once, on a registry of its own (no global state).

Labels stay bounded: routes are the fixed API paths, models the configured ones, statuses HTTP codes and
reasons a fixed vocabulary. No label per key, user or request.
"""

from __future__ import annotations

import contextlib
import functools
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from sluice.telemetry._record import RequestRecord
from sluice.telemetry._replica_timings import ReplicaTimings
from sluice.telemetry._shadow_refusal import ShadowRefusal
from sluice.telemetry._tally import Tallies
from sluice.telemetry._traffic import TrafficWindow, met_ttft_slo


class _Member(Protocol):
    url: str
    draining: bool


class WatchedReplicas(Protocol):
    """What the metrics read of a pool's live replica set."""

    def all(self) -> tuple[_Member, ...]: ...

    def subscribe(self, subscriber: Callable[[Any], None]) -> None: ...

# Refusals that more engines would have avoided (client errors and disconnects are not among them).
CAPACITY_REASONS = frozenset({
    "quota_requests", "quota_tokens", "quota_input_tokens", "quota_output_tokens", "quota_concurrent",
    "quota_store_unavailable", "queue_timeout", "queue_full", "displaced", "shed", "engine_overloaded",
    "upstream_saturated", "slo_unattainable",
})
# Of those, the ones more engine replicas would have avoided (quota refusals are budgets, not capacity): the
# autoscaler's signal.
ENGINE_CAPACITY_REASONS = CAPACITY_REASONS - {
    "quota_requests", "quota_tokens", "quota_input_tokens", "quota_output_tokens", "quota_concurrent",
    "quota_store_unavailable"}
MAX_TENANT_LABELS = 200
INFERENCE_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)
TOKEN_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)


class GatewayMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._tallies = Tallies()  # registered first: every read of the registry publishes the tallies before
        r.register(self._tallies)  # it reads a metric (label children are counted per request in ``_tally``)
        self.requests = Counter(
            "sluice_requests", "Requests answered, by route, model, tier and HTTP status.",
            ["route", "model", "tier", "status"], registry=r,
        )
        self.rejections = Counter(
            "sluice_rejections", "Requests refused or failed, by reason (x-sluice-reason) and model.",
            ["reason", "model"], registry=r
        )
        self.in_flight = Gauge("sluice_requests_in_flight", "Requests being served now.", ["route"], registry=r)
        self.latency = Histogram(
            "sluice_request_duration_seconds", "Time from request to the last byte of the answer.",
            ["route", "model"], buckets=LATENCY_BUCKETS_S, registry=r,
        )
        self.ttft = Histogram(
            "sluice_time_to_first_token_seconds", "Time from request to the first streamed token.",
            ["model"], buckets=LATENCY_BUCKETS_S, registry=r,
        )
        self.replica_ttft = Histogram(
            "sluice_replica_time_to_first_token_seconds",
            "Time to first token by replica, from dispatch (the gateway's own view of each engine).",
            ["model", "replica"], buckets=LATENCY_BUCKETS_S, registry=r,
        )
        self.replica_latency = Histogram(
            "sluice_replica_request_duration_seconds", "Time from dispatch to the answer's end, by replica.",
            ["model", "replica"], buckets=LATENCY_BUCKETS_S, registry=r,
        )
        self.tpot = Histogram(
            "sluice_time_per_output_token_seconds",
            "Time per output token after the first, of streamed answers (decode speed as the client sees it).",
            ["model"], buckets=TOKEN_LATENCY_BUCKETS_S, registry=r,
        )
        self.cache = Counter("sluice_cache_requests", "Cacheable requests, by model and result (hit or miss).",
                             ["model", "result"], registry=r)
        self.over_budget = Counter(
            "sluice_over_budget_requests", "Requests admitted though prompt + max_tokens did not fit their token "
            "budget, by tier and what its over_budget policy did: clamp, cut or tag.", ["tier", "policy"], registry=r)
        self.goodput = Counter(
            "sluice_goodput_requests", "Requests of tiers with a TTFT target (ttft_slo_s), by model, tier and "
            "result: met (answered in full, first token within it: goodput), missed (late, failed or cut short), "
            "refused (429/503).",
            ["model", "tier", "result"], registry=r,
        )
        self.tokens = Counter(
            "sluice_tokens", "Tokens served, by model, tenant and direction (input = prompt, output = completion). "
            f"Tenants past the first {MAX_TENANT_LABELS} are counted as 'other'.",
            ["model", "tenant", "direction"], registry=r,
        )

        self.quota_waiting_now = Gauge(
            "sluice_quota_waiting", "Requests waiting for their quota to refill instead of being refused.", registry=r
        )
        self.quota_wait = Histogram(
            "sluice_quota_wait_seconds", "How long admitted requests waited for their quota.",
            buckets=LATENCY_BUCKETS_S, registry=r,
        )
        self.quota_degraded = Gauge(
            "sluice_quota_store_degraded",
            "1 while the shared quota store is unavailable (limits fail open or closed).",
            registry=r,
        )
        self.quota_degraded_events = Counter(
            "sluice_quota_store_degraded_events", "Times the shared quota store became unavailable.", registry=r
        )
        self.admission_in_flight = Gauge("sluice_admission_in_flight", "Requests dispatched to the pool, not done.",
                                         ["model"], registry=r)
        self.admission_limit = Gauge("sluice_admission_limit", "The pool's window: requests allowed in flight.",
                                     ["model"], registry=r)
        self.admission_queued = Gauge("sluice_admission_queued", "Requests waiting in front of the pool, by band.",
                                      ["model", "priority"], registry=r)
        self.saturation = Gauge("sluice_engine_saturation",
                                "max(waiting / threshold, KV use / threshold, GPU use with KV pressure or swapping) "
                                "of the pool's least loaded replica (+Inf when its metrics are stale).", ["model"],
                                registry=r)
        self.protection = Gauge("sluice_protection_engaged", "1 while protection mode is engaged for the pool.",
                                ["model"], registry=r)
        self.protection_transitions = Counter("sluice_protection_transitions", "Protection mode engaged or relaxed.",
                                              ["model", "to"], registry=r)
        self.admission_wait = Histogram("sluice_admission_wait_seconds",
                                        "Time requests waited in the admission queue, by priority band.",
                                        ["model", "priority"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.preemptions = Counter("sluice_admission_preemptions",
                                   "Running requests stopped for a more important one (their streams resume later), "
                                   "by the stopped request's priority band.", ["model", "priority"], registry=r)
        self.connections_refused = Counter(
            "sluice_connections_refused", "Connections the HTTP layer answered and closed before a request existed, "
            "by reason (header_too_large, request_timeout, too_many_connections, invalid_http_request).",
            ["reason"], registry=r,
        )
        self.connections = Gauge("sluice_connections", "Open client connections, by state (busy: a request in "
                                 "progress; waiting: no complete request head yet).", ["state"], registry=r)
        self.upstream = Gauge("sluice_upstream_connections", "Requests holding one of the model pool's upstream "
                              "connections (in_use), and requests waiting for one (waiting).", ["model", "state"],
                              registry=r)
        self.engine_replicas = Gauge("sluice_engine_replicas", "Replicas in the model's pool: active (taking new "
                                     "requests) or draining (finishing theirs).", ["model", "state"], registry=r)
        self.replica_changes = Counter("sluice_engine_replica_changes_total", "Replicas that joined or left a "
                                       "model's pool.", ["model", "change"], registry=r)
        self.upstream_limit = Gauge("sluice_upstream_connections_limit", "The model pool's upstream connections "
                                    "(engine.max_connections).", ["model"], registry=r)
        self._children: dict[tuple[Any, ...], Any] = {}
        self._replica_health: _ReplicaHealth | None = None
        self._engine_gpu = _RowGauge("sluice_engine_gpu_utilization", "GPU use of each replica, 0..1 (the busiest "
                                     "of its GPUs; engine.gpu), where known.", ["model", "replica"])
        self._saturation_inputs = _RowGauge("sluice_engine_saturation_input", "The inputs of sluice_engine_"
                                            "saturation (queue, kv, gpu), of the replica it comes from; 1.0 is "
                                            "at the threshold.", ["model", "input"])
        r.register(self._engine_gpu)
        r.register(self._saturation_inputs)
        self._tenants: set[str] = set()
        self.answered = 0  # plain counts: requests answered, and refused for capacity
        self.refused_for_capacity = 0
        self._engine_counts: dict[str, list[int]] = {}  # model -> [answered, refused for engine capacity]
        self.traffic = TrafficWindow()  # the last minutes per tier and tenant, for the console
        self.replica_timings = ReplicaTimings()  # the last minutes' TTFT and TPOT per replica, for the console
        self.shadow_refusals = Counter(
            "sluice_shadow_refusals", "Requests shadow limits (mode: shadow, a tier's shadow) would have refused, "
            "by tier, scope (key, user, tenant, tier, global) and limit (requests, tokens, ..., concurrent); "
            "never enforced.", ["tier", "scope", "limit"], registry=r)
        self.last_shadow_refusals: deque[ShadowRefusal] = deque(maxlen=50)  # with their request ids, for the console
        self.autoscaler_desired = Gauge("sluice_autoscaler_desired_replicas", "The replicas the autoscaler wants "
                                        "for the model (its current count when no decision is in progress).",
                                        ["model"], registry=r)
        self.autoscaler_max = Gauge("sluice_autoscaler_max_replicas", "The model's autoscale.max_replicas.",
                                    ["model"], registry=r)
        self.autoscaler_decisions = Counter("sluice_autoscaler_decisions", "Scaling decisions, by model, direction "
                                            "(up, down) and reason (refusals, saturation, calm).",
                                            ["model", "direction", "reason"], registry=r)
        self.autoscaler_limits = Counter("sluice_autoscaler_at_limit", "Overload episodes the autoscaler met at "
                                           "max_replicas (limit=max), counted once each.", ["model", "limit"],
                                           registry=r)
        self.autoscaler_failures = Counter("sluice_autoscaler_failures", "Scaling actions that failed (retried "
                                           "after the cooldown).", ["model"], registry=r)

    # AdmissionObserver, for each pool's gate
    def admission_state(self, pool: str, *, in_flight: int, limit: int, queued: Mapping[int, int],
                        saturation: float, protected: bool) -> None:
        self._child(self.admission_in_flight, pool).set(in_flight)
        self._child(self.admission_limit, pool).set(limit)
        for priority, count in queued.items():
            self._child(self.admission_queued, pool, str(priority)).set(count)
        self._child(self.saturation, pool).set(saturation)
        self._child(self.protection, pool).set(1 if protected else 0)

    def watch_replicas(self, health: Callable[[], Iterable[tuple[str, str, bool, str]]]) -> None:
        """Export ``sluice_engine_replica_up{model,replica}`` and ``sluice_engine_replica_breaker{model,replica,
        state}`` from ``health()`` (model, replica, up, breaker state), read at scrape time."""
        if self._replica_health is None:
            self._replica_health = _ReplicaHealth()
            self.registry.register(self._replica_health)
        self._replica_health.sources.append(health)

    def watch_engine_signals(self, gpu: Callable[[], Iterable[tuple[str, str, float]]],
                             inputs: Callable[[], Iterable[tuple[str, str, float]]]) -> None:
        """Export ``sluice_engine_gpu_utilization{model,replica}`` from ``gpu()`` and ``sluice_engine_saturation_
        input{model,input}`` from ``inputs()`` (rows of two labels and a value), read at scrape time."""
        self._engine_gpu.sources.append(gpu)
        self._saturation_inputs.sources.append(inputs)

    def watch_replica_set(self, model: str, replicas: WatchedReplicas) -> None:
        """Export ``sluice_engine_replicas{model,state}`` (read at scrape time) and count the set's changes; a
        replica that leaves takes its ``replica``-labelled series with it (DNS churn must not grow /metrics)."""
        def counting(draining: bool) -> Callable[[], float]:
            return lambda: sum(1 for r in replicas.all() if r.draining is draining)

        self.engine_replicas.labels(model, "active").set_function(counting(False))
        self.engine_replicas.labels(model, "draining").set_function(counting(True))
        known = {r.url for r in replicas.all()}

        def changed(_: object) -> None:
            self._tallies.publish()  # before a leaving replica's children go
            now = {r.url for r in replicas.all()}
            self._child(self.replica_changes, model, "added").inc(len(now - known))
            self._child(self.replica_changes, model, "removed").inc(len(known - now))
            for url in known - now:
                for metric in (self.replica_ttft, self.replica_latency):
                    self._children.pop((id(metric), model, url), None)
                    with contextlib.suppress(KeyError):
                        metric.remove(model, url)
            known.clear()
            known.update(now)

        replicas.subscribe(changed)

    def watch_connections(self, count: Callable[[str], int]) -> None:
        """Export ``sluice_connections{state}`` from ``count(state)`` ("busy" or "waiting"), read at scrape time."""
        for state in ("busy", "waiting"):
            self.connections.labels(state).set_function(functools.partial(count, state))

    def watch_upstream(self, model: str, limit: int, in_use: Callable[[], int], waiting: Callable[[], int]) -> None:
        """Export ``sluice_upstream_connections{model,state}`` from the pool's slots, read at scrape time."""
        self.upstream_limit.labels(model).set(limit)
        self.upstream.labels(model, "in_use").set_function(in_use)
        self.upstream.labels(model, "waiting").set_function(waiting)

    # ConnectionObserver, for the HTTP layer
    def connection_refused(self, reason: str) -> None:
        self._child(self.connections_refused, reason).inc()

    def admission_waited(self, pool: str, priority: int, seconds: float) -> None:
        self._child(self.admission_wait, pool, str(priority)).observe(seconds)

    def admission_preempted(self, pool: str, priority: int) -> None:
        self._child(self.preemptions, pool, str(priority)).inc()

    def protection_changed(self, pool: str, engaged: bool) -> None:
        self._child(self.protection_transitions, pool, "engaged" if engaged else "relaxed").inc()

    def request_done(self, record: RequestRecord) -> None:
        """Count one finished request. Label children are cached: ``labels()`` per request showed in profiles."""
        model = record.model or ""
        status = str(record.status)
        self._child(self.requests, record.route, model, record.tier or "", status).inc()
        self._child(self.latency, record.route, model).observe(record.duration_s or 0.0)
        if record.reason:  # set only when something went wrong, before or after the answer began
            self._child(self.rejections, record.reason, model).inc()
        if record.route in INFERENCE_ROUTES:
            self.traffic.record(record)
            met = met_ttft_slo(record)
            if met is not None:
                result = "met" if met else "refused" if record.status in (429, 503) else "missed"
                self._child(self.goodput, model, record.tier or "", result).inc()
            self.answered += 1
            if record.reason in CAPACITY_REASONS and record.status in (429, 503):
                self.refused_for_capacity += 1
            counts = self._engine_counts.setdefault(model, [0, 0])
            counts[0] += 1
            counts[1] += record.reason in ENGINE_CAPACITY_REASONS and record.status in (429, 503)
        if record.ttft_s is not None:
            self._child(self.ttft, model).observe(record.ttft_s)
        if record.replica is not None:
            waited = record.queue_wait_s or 0.0
            if record.ttft_s is not None:
                self._child(self.replica_ttft, model, record.replica).observe(max(0.0, record.ttft_s - waited))
            upstream_s = max(0.0, (record.duration_s or 0) - waited)
            self._child(self.replica_latency, model, record.replica).observe(upstream_s)
            self.replica_timings.record(model, record.replica, record.started_s + (record.duration_s or 0.0),
                                        None if record.ttft_s is None else max(0.0, record.ttft_s - waited),
                                        _tpot_s(record))
        if record.cache is not None:
            self._child(self.cache, model, record.cache).inc()
        if record.over_budget is not None:
            self._child(self.over_budget, record.tier or "", record.over_budget).inc()
        tenant = self._tenant_label(record.tenant)
        if record.tokens_in:
            self._child(self.tokens, model, tenant, "input").inc(record.tokens_in)
        if record.tokens_out:
            self._child(self.tokens, model, tenant, "output").inc(record.tokens_out)
        tpot_s = _tpot_s(record)
        if tpot_s is not None:
            self._child(self.tpot, model).observe(tpot_s)

    def engine_capacity_counts(self, model: str) -> tuple[int, int]:
        """(requests answered for ``model`` on the inference routes, of which refused for engine capacity), since
        start: the autoscaler's signal."""
        answered, refused = self._engine_counts.get(model, (0, 0))
        return answered, refused

    # AutoscaleObserver, for each model's autoscaler
    def autoscaler_replicas(self, model: str, desired: int, max_replicas: int) -> None:
        self._child(self.autoscaler_desired, model).set(desired)
        self._child(self.autoscaler_max, model).set(max_replicas)

    def autoscaler_decided(self, model: str, direction: str, reason: str) -> None:
        self._child(self.autoscaler_decisions, model, direction, reason).inc()

    def autoscaler_at_limit(self, model: str, limit: str) -> None:
        self._child(self.autoscaler_limits, model, limit).inc()

    def autoscaler_failed(self, model: str) -> None:
        self._child(self.autoscaler_failures, model).inc()

    def in_flight_for(self, route: str) -> Any:
        key = (id(self.in_flight), route)
        gauge = self._children.get(key)
        if gauge is None:
            gauge = self._children[key] = self._tallies.gauge(self.in_flight.labels(route))
        return gauge

    def _tenant_label(self, tenant: str | None) -> str:
        """Tenants as a label, bounded: the first ``MAX_TENANT_LABELS`` seen keep their name."""
        name = tenant or ""
        if name not in self._tenants:
            if len(self._tenants) >= MAX_TENANT_LABELS:
                return "other"
            self._tenants.add(name)
        return name

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._tallies.of(metric, metric.labels(*labels))
        return child

    # QuotaObserver and DegradedObserver, for the quota step
    def quota_waiting(self, delta: int) -> None:
        self.quota_waiting_now.inc(delta)

    def quota_waited(self, seconds: float) -> None:
        self.quota_wait.observe(seconds)

    def shadow_refused(self, refusal: ShadowRefusal) -> None:
        self._child(self.shadow_refusals, refusal.tier, refusal.scope, refusal.limit).inc()
        self.last_shadow_refusals.append(refusal)

    def quota_store_degraded(self, degraded: bool) -> None:
        self.quota_degraded.set(1 if degraded else 0)
        if degraded:
            self.quota_degraded_events.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _RowGauge:
    """A gauge family read at scrape time from its sources' rows (two label values and a value each)."""

    def __init__(self, name: str, doc: str, labels: list[str]) -> None:
        self._name, self._doc, self._labels = name, doc, labels
        self.sources: list[Callable[[], Iterable[tuple[str, str, float]]]] = []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self._name, self._doc, labels=self._labels)
        for first, second, value in (row for source in self.sources for row in source()):
            family.add_metric([first, second], value)
        yield family

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(self._name, self._doc, labels=self._labels)


class _ReplicaHealth:
    def __init__(self) -> None:
        self.sources: list[Callable[[], Iterable[tuple[str, str, bool, str]]]] = []  # one per watched pool

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up_family = GaugeMetricFamily("sluice_engine_replica_up",
                                      "1 when the replica answered its last metrics scrape, else 0.",
                                      labels=["model", "replica"])
        breaker = GaugeMetricFamily("sluice_engine_replica_breaker",
                                    "1 for the state the replica's circuit breaker is in (closed, open, half_open).",
                                    labels=["model", "replica", "state"])
        for model, replica, up, state in (row for source in self.sources for row in source()):
            up_family.add_metric([model, replica], 1.0 if up else 0.0)
            for name in ("closed", "open", "half_open"):
                breaker.add_metric([model, replica, name], 1.0 if name == state else 0.0)
        yield up_family
        yield breaker

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily("sluice_engine_replica_up", "", labels=["model", "replica"])
        yield GaugeMetricFamily("sluice_engine_replica_breaker", "", labels=["model", "replica", "state"])


def _tpot_s(record: RequestRecord) -> float | None:
    """Time per output token after the first, of a streamed answer with more than one token."""
    if not (record.stream and record.ttft_s is not None and record.tokens_out and record.tokens_out > 1):
        return None
    return max(0.0, (record.duration_s or 0.0) - record.ttft_s) / (record.tokens_out - 1)
