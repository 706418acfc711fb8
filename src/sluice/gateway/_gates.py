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
        def readings() -> list[LoadReading | None]:
            samples = [scraper.latest(r.url) for r in replicas.routable()]
            return [None if s is None else _reading(s) for s in samples]

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
