"""Where an engine pool's GPU use is read (``engine.gpu`` in the configuration; docs/configuration.md, "GPU use")."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator


class GpuSettings(BaseModel):
    """``dcgm``: NVIDIA dcgm-exporter's gauges, at ``urls`` (one per engine url, in the same order; typically
    ``http://HOST:9400/metrics``) or, unset, on the engine's own ``/metrics`` (the simulator exports them there);
    ``nvml``: NVML on this host, for a gateway that shares the GPU host (needs ``nvidia-ml-py`` and the driver)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: Literal["dcgm", "nvml"] = "dcgm"
    urls: list[str] | None = None
    # per engine url, its GPUs: NVML indices or "GPU-<uuid>" (dcgm: the series' gpu or UUID label); required for
    # nvml; dcgm unset: every GPU the exporter lists counts for the replica
    devices: list[list[str]] | None = None

    def per_url_lengths(self) -> set[int]:
        """The lengths of the lists given per engine url (``urls``, ``devices``)."""
        return {len(given) for given in (self.urls, self.devices) if given is not None}

    @model_validator(mode="after")
    def _consistent(self) -> GpuSettings:
        if self.source == "nvml" and (self.devices is None or self.urls is not None):
            raise ValueError("gpu.source nvml reads this host's GPUs: give devices (one list per engine url), not urls")
        bad = [url for url in self.urls or () if not url.startswith(("http://", "https://"))]
        if bad:
            raise ValueError(f"gpu.urls: {bad[0]!r} is not an http:// or https:// URL")
        return self
