"""The simulated GPU, as NVIDIA's dcgm-exporter would show it: utilisation and framebuffer gauges.

- ``DCGM_FI_DEV_GPU_UTIL`` (percent) is what NVML calls the utilization rate: the share of the last sample period
  in which a kernel ran. Here it is the engine loop's duty cycle over the last ``window_s``: the time covered by
  its forward steps (``GpuActivity.busy``, one interval per burst of steps the runner sleeps through). An engine
  that always has a step to run reads 100%, however small its batch: that is what a real GPU reads too, and why a
  busy GPU alone says little about room left.
- ``DCGM_FI_DEV_FB_USED`` / ``DCGM_FI_DEV_FB_FREE`` (MiB): the weights, plus the KV blocks held by running
  sequences (the KV pool is 90% of the memory less the weights, as vLLM's default ``--gpu-memory-utilization``
  sizes it). A real vLLM or SGLang allocates its whole KV pool at start, so its framebuffer stays flat under load;
  the simulator's follows the blocks in use so that the gauge shows the KV memory. Admission reads KV use from
  the engine's own gauge, not from the framebuffer.

KV "swapping": vLLM V1 and SGLang recompute rather than swap to host memory; the simulator does the same, and a
preempted sequence counts in the dialect's preemption counter (``vllm:num_preemptions_total``), which is the
swapping signal the gateway reads.
"""

from __future__ import annotations

import socket
import uuid
from collections import deque
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric

from sluice.clock import Clock
from sluice.config import SimSettings
from sluice.dialects import DCGM
from sluice.sim._engine import EngineModel

DEFAULT_WINDOW_S = 1.0
KV_MEMORY_FRACTION = 0.9  # vLLM's default --gpu-memory-utilization
GPU_MODEL_NAME = "NVIDIA H100 80GB HBM3"


class GpuActivity:
    """When the simulated GPU was busy: intervals of forward steps, kept for the last ``window_s``."""

    def __init__(self, clock: Clock, window_s: float = DEFAULT_WINDOW_S) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self._clock = clock
        self.window_s = window_s
        self._intervals: deque[tuple[float, float]] = deque()  # (start, end), in order

    def busy(self, start_s: float, duration_s: float) -> None:
        """The GPU runs from ``start_s`` for ``duration_s`` (a step, or a burst of them)."""
        if duration_s > 0:
            self._intervals.append((start_s, start_s + duration_s))
        horizon = start_s - self.window_s
        while self._intervals and self._intervals[0][1] < horizon:
            self._intervals.popleft()

    def utilization(self) -> float:
        """The share of the last ``window_s`` in which a step ran, 0..1 (a step in progress counts up to now)."""
        now = self._clock.now()
        since = now - self.window_s
        busy_s = sum(max(0.0, min(end, now) - max(start, since)) for start, end in self._intervals)
        return min(1.0, busy_s / self.window_s)


class DcgmCollector:
    """dcgm-exporter's three gauges for the simulator's one GPU (index 0), read off the engine at scrape time."""

    def __init__(self, engine: EngineModel, activity: GpuActivity, settings: SimSettings, model_name: str) -> None:
        self._engine = engine
        self._activity = activity
        self._total_mib = settings.gpu_memory_mib
        self._weights_mib = min(settings.gpu_weights_mib, settings.gpu_memory_mib)
        kv_pool_mib = max(0.0, KV_MEMORY_FRACTION * settings.gpu_memory_mib - self._weights_mib)
        self._mib_per_block = kv_pool_mib / settings.num_kv_blocks
        gpu_uuid = uuid.uuid5(uuid.NAMESPACE_URL, f"sluice-sim/{model_name}")
        self._labels = {"gpu": "0", "UUID": f"GPU-{gpu_uuid}", "device": "nvidia0", "modelName": GPU_MODEL_NAME,
                        "Hostname": socket.gethostname()}

    def fb_used_mib(self) -> float:
        return round(self._weights_mib + self._engine.used_blocks * self._mib_per_block)

    def collect(self) -> Iterator[Metric]:
        used = self.fb_used_mib()
        values = (
            (DCGM.gpu_util, "GPU utilization (in %).", round(100.0 * self._activity.utilization())),
            (DCGM.fb_used, "Framebuffer memory used (in MiB).", used),
            (DCGM.fb_free, "Framebuffer memory free (in MiB).", max(0.0, self._total_mib - used)),
        )
        for name, doc, value in values:
            family = GaugeMetricFamily(name, doc, labels=list(self._labels))
            family.add_metric(list(self._labels.values()), float(value))
            yield family
