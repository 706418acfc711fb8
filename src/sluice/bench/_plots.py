"""PNG plots of a run: latency CDFs (TTFT, TPOT, ITL, end-to-end) and throughput and rejections over time,
one line per tenant. matplotlib is an optional dependency (``pip install -e '.[bench]'`` from the repository),
imported here only."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sluice.bench._client import RequestResult

LATENCIES = (("ttft", "TTFT"), ("tpot", "time per output token"), ("itl", "inter-token latency"),
             ("e2e", "end-to-end latency"))


def write_plots(results: Sequence[RequestResult], summary: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write latency_cdf.png and timeline.png into ``out_dir``; raises ImportError without matplotlib."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    tenants = list(summary["tenants"])
    paths = [out_dir / "latency_cdf.png", out_dir / "timeline.png"]

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for ax, (key, title) in zip(axes.flat, LATENCIES, strict=True):
        for name in tenants:
            values = sorted(v * 1e3 for v in _values(results, name, key))
            if values:
                ax.plot(values, [(i + 1) / len(values) for i in range(len(values))], label=name, drawstyle="steps-post")
        ax.set_title(title)
        ax.set_xlabel("ms")
        ax.set_ylabel("fraction of requests" if key != "itl" else "fraction of gaps")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(paths[0], dpi=100)
    plt.close(fig)

    tl = summary["timeline"]
    fig, axes = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    panels = (("output_tokens_per_s", "output tokens/s"), ("completed_per_s", "completed requests/s"),
              ("rejected_per_s", "rejections/s (429, 503)"))
    edges = [*tl["t_s"], tl["end_s"]]
    for ax, (key, label) in zip(axes, panels, strict=True):
        for name in tenants:
            values = tl["tenants"][name][key]
            # steps-post draws a value from its edge to the next: the last one needs its bucket's end repeated
            ax.plot(edges, [*values, values[-1]], label=name, drawstyle="steps-post")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    axes[-1].set_xlabel(f"seconds from start (buckets of {tl['bucket_s']:g} s)")
    fig.tight_layout()
    fig.savefig(paths[1], dpi=100)
    plt.close(fig)
    return paths


def _values(results: Sequence[RequestResult], tenant: str, key: str) -> list[float]:
    ok = [r for r in results if r.ok and r.tenant == tenant]
    if key == "itl":
        return [x for r in ok for x in r.itl_s]
    return [v for r in ok if (v := getattr(r, f"{key}_s")) is not None]
