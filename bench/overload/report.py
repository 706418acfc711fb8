"""Overload's report: the markdown tables, the verdicts against the targets, and the plots."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench.overload.settings import EQUAL_TENANTS, TIERS

# ---------------------------------------------------------------------------------------------- report


def fmt(v: float | None, digits: int = 0) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def markdown(result: dict[str, Any]) -> str:
    runs, cap = result["runs"], result["capacity"]
    lines = [
        f"Engine maximum {cap['max_tokens_per_s']:.0f} tokens/s = {cap['max_requests_per_s']:.2f} requests/s (closed "
        f"loop of {cap['closed_loop_users']} users: {cap['before']['tokens_per_s']:.0f} tokens/s before the runs, "
        f"{cap['after']['tokens_per_s']:.0f} after; the simulator's parameters predict "
        f"{cap['model_requests_per_s']:.2f} requests/s). Offered loads are multiples of "
        f"{cap['before']['requests_per_s']:.2f} requests/s. Goodput SLOs: TTFT ≤ {1e3 * result['slo']['ttft_s']:.0f} ms, "
        f"TPOT ≤ {1e3 * result['slo']['tpot_s']:.1f} ms.",
        "",
        "| config | load | offered req/s | engine tokens/s (% of max) | goodput req/s (% of sent) | rejected | "
        "premium p99 TTFT ms | Jain std-a/std-b (goodput; tokens) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for config in result["configs"]:
        for run in runs[config]:
            a = run["analysis"]
            prem = a["tiers"]["premium"]
            lines.append(
                f"| {config} | {run['load']:g}x | {run['rate_per_s']:.1f} | "
                f"{a['engine_tokens_per_s']:.0f} ({100 * a['engine_share_of_max']:.1f}%) | "
                f"{a['all']['goodput_per_s']:.1f} ({100 * a['all']['goodput_share']:.0f}%) | "
                f"{100 * a['all']['rejection_rate']:.0f}% | {fmt(prem['ttft_p99_ms'])} | "
                f"{jain_cell(a)} |")
    lines += [
        "",
        "| config | load | tier | sent | TTFT p50 ms | TTFT p99 ms | goodput req/s | goodput % of sent | rejected % "
        "(reasons) | failed (reasons) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for config in result["configs"]:
        for run in runs[config]:
            for tier, f in run["analysis"]["tiers"].items():
                reasons = ", ".join(f"{k} {v}" for k, v in f["rejections_by_reason"].items())
                failures = ", ".join(f"{k} {v}" for k, v in f["failures_by_reason"].items())
                p99 = fmt(f["ttft_p99_ms"])
                if f["ttft_censored"]:
                    p99 = f"≥ {p99}" if f["ttft_censored"] / max(1, f["ttft_samples"]) > 0.01 else p99
                lines.append(
                    f"| {config} | {run['load']:g}x | {tier} | {f['sent']} | {fmt(f['ttft_p50_ms'])} | {p99} | "
                    f"{f['goodput_per_s']:.2f} | {100 * f['goodput_share']:.0f}% | "
                    f"{100 * f['rejection_rate']:.0f}%{f' ({reasons})' if reasons else ''} | "
                    f"{f['failed']}{f' ({failures})' if failures else ''} |")
    lines += ["", "| config | load | mean window (max) | mean in flight | mean queued at gateway | engine running "
              "(mean) | engine waiting (mean) | protection engaged | engine metrics stale | sim CPU % | gateway CPU % |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for config in result["configs"]:
        for run in runs[config]:
            g = run["analysis"]["gauges"]
            prot = "–" if "protection_share" not in g else f"{100 * g['protection_share']:.0f}% of samples"
            stale = "–" if "stale_share" not in g else f"{100 * g['stale_share']:.0f}%"
            window = "–" if g.get("mean_window") is None else f"{g['mean_window']:.1f} ({g['max_window']:.0f})"
            cpu = run.get("cpu_pct", {})
            lines.append(
                f"| {config} | {run['load']:g}x | {window} | {fmt(g.get('mean_in_flight'), 1)} | "
                f"{fmt(g.get('mean_queued'), 1)} | {fmt(g.get('mean_engine_running'), 1)} | "
                f"{fmt(g.get('mean_engine_waiting'), 1)} | {prot} | {stale} | {fmt(cpu.get('sim'))} | "
                f"{fmt(cpu.get('gateway-' + config))} |")
    lines += ["", "| config | load | tier | admitted | gateway queue wait p50 / p99 ms | engine TTFT (after dispatch) "
              "p50 / p99 ms |", "|---|---:|---|---:|---:|---:|"]
    for config in result["configs"]:
        for run in runs[config]:
            for tier, d in run["analysis"].get("gateway_split", {}).items():
                lines.append(
                    f"| {config} | {run['load']:g}x | {tier} | {d['admitted']} | {fmt(d['queue_wait']['p50_ms'])} / "
                    f"{fmt(d['queue_wait']['p99_ms'])} | {fmt(d['engine_ttft']['p50_ms'])} / "
                    f"{fmt(d['engine_ttft']['p99_ms'])} |")
    lines += ["", "| config | premium unloaded p99 TTFT ms | premium p99 TTFT at top load, ms | ratio (target ≤ 2) | "
              "engine % of max at top load (target ≥ 95%) | Jain at top load (target ≥ 0.95) |",
              "|---|---:|---:|---:|---:|---:|"]
    for config, v in result["verdict"].items():
        lines.append(
            f"| {config} | {v['premium_unloaded_p99_ms']:.0f} | {v['premium_p99_ms']:.0f} | "
            f"{v['premium_ratio']:.2f} ({'met' if v['premium_met'] else 'missed'}) | "
            f"{100 * v['engine_share']:.1f}% ({'met' if v['engine_met'] else 'missed'}) | "
            f"{v['jain']:.3f}{' (both 0)' if v['jain_both_zero'] else ''} ({'met' if v['jain_met'] else 'missed'}) |")
    return "\n".join(lines)


def jain_cell(a: dict[str, Any]) -> str:
    zero = all(a["tenants"][n]["goodput_per_s"] == 0 for n in EQUAL_TENANTS)
    return f"{a['jain_goodput']:.3f}{' (both 0)' if zero else ''}; {a['jain_output_tokens']:.3f}"


def verdicts(result: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for config in result["configs"]:
        top = max(result["runs"][config], key=lambda r: r["load"])
        a = top["analysis"]
        unloaded = result["unloaded"][config]["analysis"]["tiers"]["premium"]["ttft_p99_ms"]
        p99 = a["tiers"]["premium"]["ttft_p99_ms"]
        ratio = p99 / unloaded if p99 is not None and unloaded else math.inf
        out[config] = {
            "load": top["load"],
            "premium_unloaded_p99_ms": unloaded, "premium_p99_ms": p99, "premium_ratio": ratio,
            "premium_met": ratio <= 2.0,
            "engine_share": a["engine_share_of_max"], "engine_met": a["engine_share_of_max"] >= 0.95,
            "jain": a["jain_goodput"],
            "jain_both_zero": all(a["tenants"][n]["goodput_per_s"] == 0 for n in EQUAL_TENANTS),
            "jain_met": a["jain_goodput"] >= 0.95 and not all(a["tenants"][n]["goodput_per_s"] == 0
                                                              for n in EQUAL_TENANTS),
        }
    return out


def plot(result: dict[str, Any], out_dir: Path) -> list[Path]:
    """TTFT p99 per tier vs load; goodput, engine share and rejections vs load; the adaptive window over time."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    configs, runs = result["configs"], result["runs"]
    styles = {"direct": ("tab:red", "o"), "fixed": ("tab:blue", "s"), "adaptive": ("tab:green", "^"),
              "engine-priority": ("tab:purple", "D"), "engine-preempt": ("tab:orange", "P"),
              "fixed-preempt": ("tab:cyan", "X"), "adaptive-preempt": ("tab:olive", "v")}
    paths = []

    fig, axes = plt.subplots(1, len(TIERS), figsize=(14, 4.5), sharey=True)
    for ax, tier in zip(axes, TIERS, strict=True):
        for config in configs:
            xs = [r["load"] for r in runs[config]]
            ys = [r["analysis"]["tiers"][tier]["ttft_p99_ms"] or math.nan for r in runs[config]]
            color, marker = styles[config]
            ax.plot(xs, ys, marker=marker, color=color, label=config)
            if tier == "premium":
                base = result["unloaded"][config]["analysis"]["tiers"]["premium"]["ttft_p99_ms"]
                ax.axhline(2 * base, color=color, ls=":", lw=1, label=f"2x unloaded ({config})")
        ax.axhline(1e3 * result["slo"]["ttft_s"], color="grey", ls="--", lw=1, label="TTFT SLO")
        ax.set_yscale("log")
        ax.set_title(f"{tier}: p99 TTFT")
        ax.set_xlabel("offered load (x engine capacity)")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("ms (log)")
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    paths.append(out_dir / "overload_ttft.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for config in configs:
        xs = [r["load"] for r in runs[config]]
        color, marker = styles[config]
        axes[0].plot(xs, [r["analysis"]["all"]["goodput_per_s"] for r in runs[config]], marker=marker, color=color,
                     label=config)
        axes[1].plot(xs, [100 * r["analysis"]["engine_share_of_max"] for r in runs[config]], marker=marker,
                     color=color, label=config)
        axes[2].plot(xs, [100 * r["analysis"]["all"]["rejection_rate"] for r in runs[config]], marker=marker,
                     color=color, label=config)
    axes[0].axhline(result["capacity"]["max_requests_per_s"], color="grey", ls="--", lw=1, label="engine maximum")
    axes[1].axhline(95, color="grey", ls="--", lw=1, label="target 95%")
    for ax, title, ylabel in zip(axes, ("goodput (all tiers)", "engine throughput", "rejected (429/503)"),
                                 ("requests/s meeting TTFT and TPOT SLOs", "% of the engine's maximum tokens/s",
                                  "% of requests sent"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("offered load (x engine capacity)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    paths.append(out_dir / "overload_goodput.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    gw_configs = [c for c in configs if c != "direct"]
    if gw_configs:
        fig, axes = plt.subplots(len(gw_configs), 1, figsize=(12, 3.5 * len(gw_configs)), squeeze=False)
        for ax, config in zip(axes[:, 0], gw_configs, strict=True):
            top = max(runs[config], key=lambda r: r["load"])
            s = top["series"]
            t = [row["t_s"] for row in s]
            for key, label in (("sluice_admission_limit", "window"), ("sluice_admission_in_flight", "in flight"),
                               ("sluice_admission_queued", "queued at gateway"),
                               ("vllm:num_requests_running", "engine running"),
                               ("vllm:num_requests_waiting", "engine waiting")):
                ax.plot(t, [row.get(key, math.nan) for row in s], label=label, drawstyle="steps-post")
            prot = [row.get("sluice_protection_engaged", 0) for row in s]
            ax.fill_between(t, 0, [p * max(1.0, max((row.get("sluice_admission_limit", 0) for row in s),
                                                    default=1)) for p in prot],
                            step="post", color="tab:red", alpha=0.12, label="protection engaged")
            ax.set_title(f"{config} at {top['load']:g}x: gateway window and engine queue over time")
            ax.set_xlabel("seconds from the start of the run")
            ax.set_ylabel("requests")
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        paths.append(out_dir / "overload_window.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths
