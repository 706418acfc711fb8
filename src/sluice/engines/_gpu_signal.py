"""A replica's GPU use: read from NVIDIA dcgm-exporter's gauges, or from NVML where the gateway shares the host.

    signal = GpuSignal(settings.engine.gpu, engine_urls, nvml=PynvmlReader() if nvml else None)
    plan = signal.plan(replica.url)        # where this replica's GPUs are read, or None (unknown)
    parse_dcgm(text, plan.devices, now)    # GpuReading: the busiest GPU's utilisation, memory summed

A replica may run on several GPUs (tensor/pipeline parallel): its reading is the busiest one's utilisation (they
run in lockstep) and the framebuffer summed over them. A dcgm-exporter lists every GPU of its host: ``devices``
(the series' ``gpu`` index or ``UUID``) picks the replica's; unset, all of them count.

NVML sits behind a small ``Nvml`` protocol: ``PynvmlReader`` is the real one (``nvidia-ml-py``, an optional
dependency, imported when asked for; a missing package or driver is a ``GpuUnavailable`` at start), ``FakeNvml``
the one tests drive.
"""

from __future__ import annotations

import contextlib
import importlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal, Protocol

from prometheus_client.parser import text_string_to_metric_families

from sluice.config import GpuSettings
from sluice.dialects import DCGM
from sluice.errors import ConfigError

MIB = 1024 * 1024


class GpuUnavailable(ConfigError):
    """GPU use was asked for from a source this host cannot offer (no nvidia-ml-py, no NVIDIA driver)."""


class GpuReadError(Exception):
    """One reading failed: the gauges are missing, malformed, or the device is unknown. The reading is unknown."""


@dataclass(frozen=True)
class GpuReading:
    utilization: float  # 0..1: the busiest of the replica's GPUs
    fb_used_mib: float | None  # summed over its GPUs; None where the source gave none
    fb_free_mib: float | None
    gpus: int
    read_at: float  # the clock's now() when it was read

    def describe(self) -> dict[str, object]:
        return {"utilization": round(self.utilization, 4), "fb_used_mib": self.fb_used_mib,
                "fb_free_mib": self.fb_free_mib, "gpus": self.gpus}


def combine(per_gpu: Sequence[tuple[float, float | None, float | None]], read_at: float) -> GpuReading:
    """One reading from (utilisation 0..1, MiB used, MiB free) per GPU."""
    if not per_gpu:
        raise GpuReadError("no GPU series for this replica")
    used = [u for _, u, _ in per_gpu]
    free = [f for _, _, f in per_gpu]
    return GpuReading(
        utilization=min(1.0, max(0.0, max(util for util, _, _ in per_gpu))),
        fb_used_mib=None if None in used else sum(u for u in used if u is not None),
        fb_free_mib=None if None in free else sum(f for f in free if f is not None),
        gpus=len(per_gpu), read_at=read_at,
    )


# -- dcgm-exporter ------------------------------------------------------------------------------------------

def parse_dcgm(text: str, devices: Sequence[str] | None, read_at: float) -> GpuReading:
    """The reading of ``devices`` (``gpu`` index or ``UUID``; None: every GPU listed) in a dcgm-exporter (or
    simulator) exposition. Raise ``GpuReadError`` when a utilisation gauge is missing for one of them."""
    wanted = set(DCGM.gauges())
    lines = [line for line in text.splitlines() if _name_of(line) in wanted]
    series: dict[str, dict[str, float]] = {}  # gpu key -> gauge -> value
    try:
        for family in text_string_to_metric_families("\n".join(lines) + "\n"):
            for sample in family.samples:
                if sample.name in wanted:
                    key = _match(sample.labels, devices)
                    if key is not None:
                        series.setdefault(key, {})[sample.name] = sample.value
    except (ValueError, IndexError) as exc:  # what prometheus_client's parser raises on malformed text
        raise GpuReadError(f"unreadable GPU metrics: {type(exc).__name__}: {exc}") from exc
    missing = [d for d in devices or () if d not in series]
    if missing:
        raise GpuReadError(f"no {DCGM.gpu_util} for GPU(s) {', '.join(missing)}")
    per_gpu = []
    for key, gauges in series.items():
        util = gauges.get(DCGM.gpu_util)
        if util is None or not math.isfinite(util):
            raise GpuReadError(f"no finite {DCGM.gpu_util} for GPU {key}")
        per_gpu.append((util / 100.0, gauges.get(DCGM.fb_used), gauges.get(DCGM.fb_free)))
    return combine(per_gpu, read_at)


def _name_of(line: str) -> str:
    if line.startswith("#"):
        parts = line.split(None, 3)
        return parts[2] if len(parts) > 2 else ""
    return line.split("{", 1)[0].split(None, 1)[0] if line.strip() else ""


def _match(labels: Mapping[str, str], devices: Sequence[str] | None) -> str | None:
    """The device a series belongs to (as ``devices`` names it), or None when it is not one of them."""
    index, gpu_uuid = labels.get("gpu", ""), labels.get("UUID", "")
    if devices is None:
        return gpu_uuid or index
    return next((d for d in devices if d in (index, gpu_uuid)), None)


# -- NVML ---------------------------------------------------------------------------------------------------

class Nvml(Protocol):
    """What the gateway asks of NVML: one device's utilisation (0..1) and framebuffer (MiB used, MiB free)."""

    def read(self, device: str) -> tuple[float, float, float]: ...

    def close(self) -> None: ...


class PynvmlReader:
    """NVML through nvidia-ml-py (module ``pynvml``). ``device``: an index or ``GPU-<uuid>``. Needs the NVIDIA
    driver (``libnvidia-ml.so``): without it, or without the package, construction raises ``GpuUnavailable``."""

    def __init__(self, module: ModuleType | None = None) -> None:
        if module is None:
            try:
                module = importlib.import_module("pynvml")
            except ImportError as exc:
                raise GpuUnavailable("engine.gpu.source nvml needs nvidia-ml-py (the `gpu` extra: pip install "
                                     "nvidia-ml-py)") from exc
        self._nvml: Any = module
        try:
            self._nvml.nvmlInit()
        except self._nvml.NVMLError as exc:
            raise GpuUnavailable(f"engine.gpu.source nvml: NVML did not start ({exc}); is the NVIDIA driver "
                                 "installed and a GPU visible to this process?") from exc

    def read(self, device: str) -> tuple[float, float, float]:
        nvml = self._nvml
        try:
            if device.startswith("GPU-"):
                handle = nvml.nvmlDeviceGetHandleByUUID(device)
            else:
                handle = nvml.nvmlDeviceGetHandleByIndex(int(device))
            rates = nvml.nvmlDeviceGetUtilizationRates(handle)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        except (nvml.NVMLError, ValueError) as exc:
            raise GpuReadError(f"NVML device {device}: {exc}") from exc
        return rates.gpu / 100.0, memory.used / MIB, memory.free / MIB

    def close(self) -> None:
        with contextlib.suppress(self._nvml.NVMLError):  # already shut down: nothing left to release
            self._nvml.nvmlShutdown()


class FakeNvml:
    """NVML for tests: ``devices[device] = (utilisation 0..1, MiB used, MiB free)``; an unknown device fails."""

    def __init__(self, devices: Mapping[str, tuple[float, float, float]] | None = None) -> None:
        self.devices = dict(devices or {})
        self.closed = False

    def read(self, device: str) -> tuple[float, float, float]:
        if device not in self.devices:
            raise GpuReadError(f"NVML device {device}: not found")
        return self.devices[device]

    def close(self) -> None:
        self.closed = True


def nvml_reading(nvml: Nvml, devices: Iterable[str], read_at: float) -> GpuReading:
    return combine([nvml.read(device) for device in devices], read_at)


# -- per replica --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GpuPlan:
    """Where one replica's GPUs are read: on its own ``/metrics`` (``engine``), at a dcgm-exporter ``url``, or
    through NVML on this host."""

    source: Literal["engine", "dcgm", "nvml"]
    devices: tuple[str, ...] | None = None
    url: str | None = None


class GpuSignal:
    """The pool's GPU settings, resolved per replica URL. Replicas not among the configured ``engine_urls`` (DNS
    discovered, added through the admin API) are read on their own ``/metrics`` when no exporter URLs are set,
    and are unknown otherwise."""

    def __init__(self, settings: GpuSettings, engine_urls: Sequence[str], nvml: Nvml | None = None) -> None:
        if settings.source == "nvml" and nvml is None:
            raise ValueError("gpu source nvml needs an Nvml reader")
        self.settings = settings
        self.nvml = nvml
        self._plans: dict[str, GpuPlan] = {}
        for i, url in enumerate(engine_urls):
            devices = tuple(settings.devices[i]) if settings.devices is not None else None
            if settings.source == "nvml":
                self._plans[url] = GpuPlan("nvml", devices)
            elif settings.urls is not None:
                self._plans[url] = GpuPlan("dcgm", devices, settings.urls[i])
            else:
                self._plans[url] = GpuPlan("engine", devices)

    @classmethod
    def open(cls, settings: GpuSettings, engine_urls: Sequence[str]) -> GpuSignal:
        """The pool's signal, with the real NVML when asked for (``GpuUnavailable`` here, at start, if it cannot
        be had); ``close()`` it when the pool closes."""
        return cls(settings, engine_urls, PynvmlReader() if settings.source == "nvml" else None)

    def close(self) -> None:
        if self.nvml is not None:
            self.nvml.close()

    def plan(self, replica_url: str) -> GpuPlan | None:
        plan = self._plans.get(replica_url)
        if plan is None and self.settings.source == "dcgm" and self.settings.urls is None:
            return GpuPlan("engine")
        return plan
