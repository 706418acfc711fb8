"""Metrics counted per request in plain numbers and handed to Prometheus when the registry is read: the
exposition must be the one the Prometheus objects give when updated directly, sample for sample."""

from __future__ import annotations

import math
import random

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from sluice.telemetry import GatewayMetrics, RequestRecord
from sluice.telemetry._metrics import LATENCY_BUCKETS_S
from sluice.telemetry._tally import Tallies


def _without_created(text: bytes) -> list[str]:
    return [line for line in text.decode().splitlines() if "_created" not in line]


def _metrics(registry: CollectorRegistry) -> tuple[Counter, Histogram, Gauge]:
    return (Counter("c", "c", ["a"], registry=registry),
            Histogram("h", "h", ["a"], buckets=LATENCY_BUCKETS_S, registry=registry),
            Gauge("g", "g", ["a"], registry=registry))


def test_tallies_expose_exactly_what_direct_updates_do() -> None:
    direct_registry, tallied_registry = CollectorRegistry(), CollectorRegistry()
    tallies = Tallies()
    tallied_registry.register(tallies)
    direct, tallied = _metrics(direct_registry), _metrics(tallied_registry)
    rng = random.Random(7)
    # Values on the bounds, between them, past the last, zero, negative and NaN.
    values = [*LATENCY_BUCKETS_S, 0.0, -1.0, 1e6, math.nan] + [rng.uniform(0, 200) for _ in range(500)]
    for i, value in enumerate(values):
        label = "xyz"[i % 3]
        direct[0].labels(label).inc(i % 5)
        tallies.of(tallied[0], tallied[0].labels(label)).inc(i % 5)
        direct[1].labels(label).observe(value)
        tallies.of(tallied[1], tallied[1].labels(label)).observe(value)
        direct[2].labels(label).inc(2)
        direct[2].labels(label).dec()
        gauge = tallies.gauge(tallied[2].labels(label))
        gauge.inc(2)
        gauge.dec()
        if i % 97 == 0:  # reads in between publish what was pending, and only that
            assert _without_created(generate_latest(tallied_registry)) == _without_created(
                generate_latest(direct_registry))
    assert _without_created(generate_latest(tallied_registry)) == _without_created(generate_latest(direct_registry))


def test_a_request_updates_plain_numbers_and_a_read_publishes_them() -> None:
    metrics = GatewayMetrics()
    record = RequestRecord("r", "POST", "/v1/chat/completions", 0.0, status=200, tier="pro", model="m",
                           replica="http://e:1", stream=True, ttft_s=0.05, tokens_in=10, tokens_out=5,
                           duration_s=0.3, tenant="acme")
    in_flight = metrics.in_flight_for("/v1/chat/completions")
    in_flight.inc()
    metrics.request_done(record)
    child = metrics.requests.labels("/v1/chat/completions", "m", "pro", "200")
    assert child._value.get() == 0  # not yet handed over: no lock taken on the request's path
    get = metrics.registry.get_sample_value
    assert get("sluice_requests_total", {"route": "/v1/chat/completions", "model": "m", "tier": "pro",
                                         "status": "200"}) == 1
    assert get("sluice_requests_in_flight", {"route": "/v1/chat/completions"}) == 1
    assert get("sluice_request_duration_seconds_bucket", {"route": "/v1/chat/completions", "model": "m",
                                                          "le": "0.25"}) == 0
    assert get("sluice_request_duration_seconds_bucket", {"route": "/v1/chat/completions", "model": "m",
                                                          "le": "0.5"}) == 1
    assert get("sluice_tokens_total", {"model": "m", "tenant": "acme", "direction": "output"}) == 5
    assert get("sluice_time_per_output_token_seconds_count", {"model": "m"}) == 1
    in_flight.dec()
    metrics.request_done(record)
    text = metrics.render().decode()
    assert 'sluice_requests_total{model="m",route="/v1/chat/completions",status="200",tier="pro"} 2.0' in text
    assert 'sluice_requests_in_flight{route="/v1/chat/completions"} 0.0' in text
    assert 'sluice_request_duration_seconds_count{model="m",route="/v1/chat/completions"} 2.0' in text
