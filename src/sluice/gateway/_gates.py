"""Admission for one model's pool: the gate assembled from its settings (``admission.assemble_gate``) over the
live replica set, its load read from the scraper, its state and engine signals exported as metrics."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AsyncExitStack

from sluice.admission import Gate, LoadReading, PoolView, SaturationDetector, assemble_gate
from sluice.clock import Clock
from sluice.config import ModelSettings, Settings
from sluice.engines import LoadSample, LoadScraper, ReplicaSet
from sluice.telemetry import GatewayMetrics


async def open_gate(model: ModelSettings, replicas: ReplicaSet, scraper: LoadScraper | None,
                    settings: Settings, clock: Clock, metrics: GatewayMetrics,
                    stack: AsyncExitStack, max_connections: int) -> Gate | None:
    """The pool's gate; ``scraper`` (the replicas' load, when watched) feeds saturation and KV room;
    ``max_connections`` (the pool's) caps the window."""
    readings = None
    if scraper is not None:
        readings = _ReadingsOf(replicas, scraper)

    pool = PoolView(count=lambda: len(replicas), readings=readings, max_connections=max_connections,
                    kv_capacity_tokens=_kv_capacity(model))
    gate = assemble_gate(model, settings, clock, pool, observer=metrics,
                         on_protection_change=lambda engaged: metrics.protection_changed(model.name, engaged))
    if gate is None:
        return None
    if gate.saturation is not None and scraper is not None:
        metrics.watch_engine_signals(_gpu_rows(model.name, replicas, scraper),
                                     _input_rows(model.name, gate.saturation))
    gate.start()
    stack.push_async_callback(gate.close)
    return gate


class _ReadingsOf:
    """The routable replicas' load as the gate reads it (asked at every admission under load): a sample is
    converted once, when the scraper has a new one, not per request."""

    def __init__(self, replicas: ReplicaSet, scraper: LoadScraper) -> None:
        self._replicas = replicas
        self._scraper = scraper
        self._converted: dict[str, tuple[LoadSample, LoadReading]] = {}  # replica URL -> its sample, converted

    def __call__(self) -> list[LoadReading | None]:
        converted = self._converted
        readings: list[LoadReading | None] = []
        routable = self._replicas.routable()
        if len(converted) > 2 * len(routable) + 8:  # replicas came and went: forget the ones gone
            converted.clear()
        for replica in routable:
            sample = self._scraper.latest(replica.url)
            if sample is None:
                readings.append(None)
                continue
            held = converted.get(replica.url)
            if held is None or held[0] is not sample:
                held = converted[replica.url] = (sample, _reading(sample))
            readings.append(held[1])
        return readings


def _reading(sample: LoadSample) -> LoadReading:
    gpu = sample.gpu
    return LoadReading(sample.running, sample.waiting, sample.kv_usage, sample.scraped_at,
                       gpu_util=None if gpu is None else gpu.utilization,
                       gpu_read_at_s=None if gpu is None else gpu.read_at, preemptions_per_s=sample.preemptions_per_s)


def _gpu_rows(model: str, replicas: ReplicaSet, scraper: LoadScraper) -> Callable[[], list[tuple[str, str, float]]]:
    def rows() -> list[tuple[str, str, float]]:
        samples = ((r.url, scraper.fresh(r.url)) for r in replicas.all())
        return [(model, url, s.gpu.utilization) for url, s in samples if s is not None and s.gpu is not None]

    return rows


def _input_rows(model: str, detector: SaturationDetector) -> Callable[[], list[tuple[str, str, float]]]:
    def rows() -> list[tuple[str, str, float]]:
        inputs = detector.last_inputs
        if inputs is None:
            return []
        named = {"queue": inputs.queue, "kv": inputs.kv, "gpu": inputs.gpu}
        return [(model, name, value) for name, value in named.items() if value is not None]

    return rows


def _kv_capacity(model: ModelSettings) -> int | None:
    if model.admission.kv_capacity_tokens is not None:
        return model.admission.kv_capacity_tokens
    if model.sim is not None:
        return model.sim.num_kv_blocks * model.sim.block_size
    return None
