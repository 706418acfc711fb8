"""Which GPUs the launched replicas get: each replica its own ``tp * pp`` of the visible ones.

    visible = visible_gpus(explicit="0,1,2,3", env=os.environ)   # --gpus, else CUDA_VISIBLE_DEVICES, else nvidia-smi
    pool = GpuPool(visible.ids)
    pool.take(2)          # ("0", "1"): the replica's CUDA_VISIBLE_DEVICES
    pool.give_back(("0", "1"))

GPU ids are kept as the strings they were given (indices or ``GPU-<uuid>``), so a replica's
``CUDA_VISIBLE_DEVICES`` names the same devices the gateway was told about. With no GPU visible (CPU engines,
the simulator) nothing is taken and nothing is set.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from sluice.errors import ConfigError

NVIDIA_SMI_TIMEOUT_S = 10.0


class NotEnoughGpus(ConfigError):
    """The replicas asked for need more GPUs than are visible (or than are left free)."""


@dataclass(frozen=True)
class VisibleGpus:
    ids: tuple[str, ...]
    source: str  # where they were read: "--gpus", "CUDA_VISIBLE_DEVICES" or "nvidia-smi"

    def describe(self) -> str:
        return f"{len(self.ids)} visible ({self.source}: {','.join(self.ids) or 'none'})"


def parse_gpu_list(text: str) -> tuple[str, ...]:
    """``"0, 1,2"`` -> ``("0", "1", "2")``; blanks ignored."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def nvidia_smi_gpus(run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run) -> tuple[str, ...]:
    """The GPU indices ``nvidia-smi`` lists; none where the tool is absent or fails (no driver, no GPU)."""
    try:
        done = run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True,
                   timeout=NVIDIA_SMI_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return ()
    if done.returncode != 0:
        return ()
    return tuple(line.strip() for line in done.stdout.splitlines() if line.strip())


def visible_gpus(explicit: str | None, env: Mapping[str, str],
                 query: Callable[[], tuple[str, ...]] = nvidia_smi_gpus) -> VisibleGpus:
    """The GPUs replicas may use: ``explicit`` (``--gpus``) if given, else ``CUDA_VISIBLE_DEVICES`` if set (empty
    or ``-1``: none), else what ``nvidia-smi`` lists."""
    if explicit is not None:
        return VisibleGpus(parse_gpu_list(explicit), "--gpus")
    if "CUDA_VISIBLE_DEVICES" in env:
        ids = parse_gpu_list(env["CUDA_VISIBLE_DEVICES"])
        return VisibleGpus(() if ids[:1] == ("-1",) else ids, "CUDA_VISIBLE_DEVICES")
    return VisibleGpus(query(), "nvidia-smi")


def launch_gpus(backend: str, explicit: str | None, env: Mapping[str, str]) -> VisibleGpus:
    """The GPUs a launch of ``backend`` may use (``visible_gpus``); the simulator needs none, and takes some (a
    rehearsal of the layout) only when ``explicit`` names them."""
    if backend == "sim" and explicit is None:
        return VisibleGpus((), "sim")
    return visible_gpus(explicit, env)


class GpuPool:
    """The visible GPUs, handed out ``count`` at a time in order and given back when a replica is removed."""

    def __init__(self, visible: VisibleGpus) -> None:
        self._visible = visible
        self._free = list(visible.ids)

    @property
    def enabled(self) -> bool:
        """False on a machine without GPUs: replicas get none and share what the engine runs on."""
        return bool(self._visible.ids)

    @property
    def free(self) -> tuple[str, ...]:
        return tuple(self._free)

    def check_fits(self, replicas: int, per_replica: int) -> None:
        """Refuse up front when ``replicas`` replicas of ``per_replica`` GPUs each cannot all have their own."""
        need = replicas * per_replica
        if self.enabled and need > len(self._visible.ids):
            raise NotEnoughGpus(f"{replicas} replica(s) x {per_replica} GPU(s) each (tp * pp) need {need} GPUs; "
                                f"{self._visible.describe()}. Use fewer replicas, a smaller --tp, or --gpus")

    def take(self, count: int) -> tuple[str, ...]:
        """The next ``count`` free GPUs (lowest first), now this replica's; nothing on a GPU-less machine."""
        if not self.enabled:
            return ()
        if count > len(self._free):
            raise NotEnoughGpus(f"a replica needs {count} GPU(s) and {len(self._free)} of "
                                f"{self._visible.describe()} are free ({','.join(self._free) or 'none'})")
        taken, self._free = self._free[:count], self._free[count:]
        return tuple(taken)

    def give_back(self, gpus: Sequence[str]) -> None:
        """A removed replica's GPUs, free again (unknown or already free ids are ignored)."""
        self._free += [gpu for gpu in dict.fromkeys(gpus) if gpu in self._visible.ids and gpu not in self._free]
        self._free.sort(key=self._visible.ids.index)  # lowest first, as the visible list orders them
