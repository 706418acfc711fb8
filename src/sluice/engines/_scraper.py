"""Engine load, read from each replica's Prometheus ``/metrics`` in its own dialect's names.

``parse_load`` turns one exposition into a ``LoadSample`` (requests running and waiting, summed over every
series; KV-cache usage 0..1, the fullest series). ``LoadScraper`` keeps the latest sample of every replica,
scraping each one every ``interval_s`` in a task of its own (a slow or dead replica delays nobody else),
through one aiohttp session. It follows its pool's ``ReplicaSet``: a replica added is scraped from then on, one
that leaves is forgotten. A sample older than ``max_age_s`` is stale: ``fresh()`` answers ``None`` for it,
as for a replica never scraped, and the consumer treats it as unknown (saturated, for admission).

Each sample also carries the engine's preemptions per second (the KV-swapping signal: the increase of the
dialect's preemption counter since the replica's previous sample; ``None`` for the first sample, or where the
dialect has no such counter) and, with a ``GpuSignal``, the replica's GPU reading (``_gpu_signal``): parsed from
the same ``/metrics`` text, fetched from its dcgm-exporter, or read through NVML. A GPU reading that fails leaves
``gpu`` at ``None`` (unknown, never "saturated") and the load sample stands.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from sluice.clock import Clock
from sluice.engines._gpu_signal import GpuPlan, GpuReadError, GpuReading, GpuSignal, nvml_reading, parse_dcgm
from sluice.engines._replica import Replica
from sluice.engines._replica_set import ReplicaSet
from sluice.engines.dialects import MetricNames, dialect_for

log = logging.getLogger("sluice.engines")

DEFAULT_INTERVAL_S = 0.2
DEFAULT_TIMEOUT_S = 1.0
DEFAULT_MAX_AGE_S = 1.0


class ScrapeError(Exception):
    """A replica's metrics could not be read: unreachable, not a 200, or without the dialect's gauges."""


@dataclass(frozen=True)
class LoadSample:
    running: float
    waiting: float
    kv_usage: float  # 0..1
    scraped_at: float  # the clock's now() when the answer arrived
    preemptions_total: float | None = None  # the engine's preemption counter; None where it has none
    preemptions_per_s: float | None = None  # its increase per second since the previous sample
    gpu: GpuReading | None = None  # None: not read, or unreadable (unknown)

    def age_s(self, now: float) -> float:
        return now - self.scraped_at


def parse_load(text: str, names: MetricNames, scraped_at: float) -> LoadSample:
    """The load in one Prometheus text exposition. Raise ``ScrapeError`` when a gauge is missing."""
    counters = (names.preemptions,) if names.preemptions else ()
    wanted = {*names.running, *names.waiting, *names.kv_usage, *counters, *(f"{c}_total" for c in counters)}
    try:
        values = _values(_lines_about(text, wanted), wanted)
    except (ValueError, IndexError) as exc:  # what prometheus_client's parser raises on malformed text
        raise ScrapeError(f"unreadable metrics: {type(exc).__name__}: {exc}") from exc
    if not all(math.isfinite(v) for vs in values.values() for v in vs):
        raise ScrapeError(f"a load gauge is not a finite number: {values}")
    running = _first_present(values, names.running)
    waiting = _first_present(values, names.waiting)
    kv = _first_present(values, names.kv_usage)
    preempted = [v for c in counters for v in values.get(f"{c}_total", values.get(c, []))]
    return LoadSample(
        running=sum(running), waiting=sum(waiting), kv_usage=min(1.0, max(0.0, max(kv))), scraped_at=scraped_at,
        preemptions_total=sum(preempted) if preempted else None,
    )


def with_rate(sample: LoadSample, previous: LoadSample | None) -> LoadSample:
    """``sample`` with its preemptions per second since ``previous`` (a counter that went back: restarted, 0)."""
    if previous is None or sample.preemptions_total is None or previous.preemptions_total is None:
        return sample
    elapsed_s = sample.scraped_at - previous.scraped_at
    if elapsed_s <= 0:
        return dataclasses.replace(sample, preemptions_per_s=previous.preemptions_per_s)
    delta = max(0.0, sample.preemptions_total - previous.preemptions_total)
    return dataclasses.replace(sample, preemptions_per_s=delta / elapsed_s)


def _lines_about(text: str, wanted: set[str]) -> str:
    """Only the lines about ``wanted`` metrics: an engine's full exposition (histograms) is far larger."""
    keep = []
    for line in text.splitlines():
        if line.startswith("#"):
            parts = line.split(None, 3)
            name = parts[2] if len(parts) > 2 else ""
        else:
            name = line.split("{", 1)[0].split(None, 1)[0] if line.strip() else ""
        if name in wanted:
            keep.append(line)
    return "\n".join(keep) + "\n"


def _values(text: str, wanted: set[str]) -> dict[str, list[float]]:
    values: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted:
                values.setdefault(sample.name, []).append(sample.value)
    return values


def _first_present(values: dict[str, list[float]], candidates: tuple[str, ...]) -> list[float]:
    for name in candidates:
        if values.get(name):
            return values[name]
    raise ScrapeError(f"no {' or '.join(candidates)} in the metrics (is it that engine, with metrics enabled?)")


class LoadScraper:
    """The latest load of every replica, kept fresh in the background.

        async with LoadScraper(pool.replicas, clock) as scraper:
            sample = scraper.fresh(replica.url)   # None: unknown or stale
    """

    def __init__(
        self,
        replicas: Sequence[Replica] | ReplicaSet,
        clock: Clock,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        session: aiohttp.ClientSession | None = None,
        gpu: GpuSignal | None = None,
    ) -> None:
        if interval_s <= 0 or timeout_s <= 0 or max_age_s <= 0:
            raise ValueError("interval_s, timeout_s and max_age_s must be positive")
        self._replicas = replicas if isinstance(replicas, ReplicaSet) else ReplicaSet.of(replicas)
        self._clock = clock
        self.interval_s = interval_s
        self.max_age_s = max_age_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session = session
        self._owns_session = session is None
        self._gpu = gpu
        self._latest: dict[str, LoadSample] = {}
        self._errors: dict[str, str] = {}
        self._gpu_errors: dict[str, str] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._running = False

    # -- read API -------------------------------------------------------------------------------------------

    def latest(self, replica_url: str) -> LoadSample | None:
        """The last sample read from this replica, however old; ``None`` if none was ever read."""
        return self._latest.get(replica_url)

    def is_stale(self, replica_url: str) -> bool:
        """True when there is no sample, or the latest is older than ``max_age_s``."""
        sample = self._latest.get(replica_url)
        return sample is None or sample.age_s(self._clock.now()) > self.max_age_s

    def fresh(self, replica_url: str) -> LoadSample | None:
        """The latest sample if it is recent enough to act on, else ``None`` (unknown)."""
        return None if self.is_stale(replica_url) else self._latest.get(replica_url)

    def last_error(self, replica_url: str) -> str | None:
        """Why the last scrape of this replica failed; ``None`` when it succeeded."""
        return self._errors.get(replica_url)

    def readings(self) -> dict[str, dict[str, object]]:
        """Per replica URL, its latest reading as the console shows it (``ReplicaSet.describe("load", ...)``):
        requests running and waiting, KV-cache use 0..1, the reading's age, whether it is stale, the last error."""
        now = self._clock.now()
        shown: dict[str, dict[str, object]] = {}
        for replica in self._replicas.all():
            sample = self._latest.get(replica.url)
            shown[replica.url] = {
                "running": None if sample is None else sample.running,
                "waiting": None if sample is None else sample.waiting,
                "kv_usage": None if sample is None else round(sample.kv_usage, 4),
                "age_s": None if sample is None else round(sample.age_s(now), 3),
                "stale": self.is_stale(replica.url), "error": self._errors.get(replica.url),
                "preemptions_per_s": None if sample is None or sample.preemptions_per_s is None
                else round(sample.preemptions_per_s, 3),
                "gpu": None if sample is None or sample.gpu is None else sample.gpu.describe(),
                "gpu_error": self._gpu_errors.get(replica.url)}
        return shown

    # -- scraping --------------------------------------------------------------------------------------------

    async def scrape(self, replica: Replica) -> LoadSample:
        """Read one replica's load now. Raise ``ScrapeError`` if it cannot be read."""
        names = dialect_for(replica.dialect).metrics
        try:
            async with self._http().get(replica.url + "/metrics", timeout=self._timeout) as resp:
                if resp.status != 200:
                    raise ScrapeError(f"{replica.url}/metrics answered {resp.status}")
                text = await resp.text(errors="replace")
        except (TimeoutError, aiohttp.ClientError) as exc:
            exc.__traceback__ = None  # aiohttp's connect failures sit in cycles through their tracebacks
            raise ScrapeError(f"{replica.url}/metrics: {type(exc).__name__}: {exc}") from exc
        sample = parse_load(text, names, self._clock.now())
        plan = self._gpu.plan(replica.url) if self._gpu is not None else None
        if plan is None:
            return sample
        try:
            gpu = await self._read_gpu(plan, text)
        except GpuReadError as exc:
            if replica.url not in self._gpu_errors:
                log.warning("GPU use of %s: %s", replica.url, exc)
            self._gpu_errors[replica.url] = str(exc)
            return sample
        self._gpu_errors.pop(replica.url, None)
        return dataclasses.replace(sample, gpu=gpu)

    async def _read_gpu(self, plan: GpuPlan, engine_text: str) -> GpuReading:
        if plan.source == "nvml":
            assert self._gpu is not None and self._gpu.nvml is not None  # GpuSignal refuses nvml without a reader
            return nvml_reading(self._gpu.nvml, plan.devices or (), self._clock.now())
        text = engine_text
        if plan.source == "dcgm":
            assert plan.url is not None
            try:
                async with self._http().get(plan.url, timeout=self._timeout) as resp:
                    if resp.status != 200:
                        raise GpuReadError(f"{plan.url} answered {resp.status}")
                    text = await resp.text(errors="replace")
            except (TimeoutError, aiohttp.ClientError) as exc:
                exc.__traceback__ = None
                raise GpuReadError(f"{plan.url}: {type(exc).__name__}: {exc}") from exc
        return parse_dcgm(text, plan.devices, self._clock.now())

    async def scrape_once(self, replicas: Iterable[Replica] | None = None) -> None:
        """Scrape every replica (or those given) once, concurrently; failures are recorded, not raised."""
        await asyncio.gather(*(self._refresh(r) for r in (self._replicas.all() if replicas is None else replicas)))

    async def _refresh(self, replica: Replica) -> None:
        try:
            sample = await self.scrape(replica)
        except ScrapeError as exc:
            if replica.url not in self._errors:
                log.warning("engine metrics: %s", exc)
            self._errors[replica.url] = str(exc)
            return
        if self._errors.pop(replica.url, None) is not None:
            log.info("engine metrics: %s readable again", replica.url)
        self._latest[replica.url] = with_rate(sample, self._latest.get(replica.url))

    async def _run(self, replica: Replica) -> None:
        while True:
            started = self._clock.now()
            await self._refresh(replica)
            await self._clock.sleep(self.interval_s - (self._clock.now() - started))

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start one scraping task per replica, in the running event loop, and follow the set's changes."""
        if self._running:
            raise RuntimeError("the scraper is already running")
        self._running = True
        self._replicas.subscribe(self._follow)
        self._follow(self._replicas)

    def _follow(self, replicas: ReplicaSet) -> None:
        """Scrape the replicas in the set now; forget those that left (their samples too)."""
        if not self._running:
            return
        current = {r.url: r for r in replicas.all()}
        for url in [u for u in self._tasks if u not in current]:
            self._tasks.pop(url).cancel()
            self._latest.pop(url, None)
            self._errors.pop(url, None)
            self._gpu_errors.pop(url, None)
        loop = asyncio.get_running_loop()
        for url, replica in current.items():
            if url not in self._tasks:
                self._tasks[url] = loop.create_task(self._run(replica), name=f"scrape {url}")

    async def stop(self) -> None:
        self._running = False
        tasks, self._tasks = list(self._tasks.values()), {}
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> LoadScraper:
        self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, skip_auto_headers=("User-Agent",))
        return self._session
