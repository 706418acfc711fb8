"""The two paths compared: medians over the rounds, ratios, a markdown table."""

from __future__ import annotations

import statistics
from typing import Any

from bench.vllm.settings import PATHS
from sluice.bench import describe


def compare(rounds: dict[str, list[dict[str, dict[str, Any]]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, measured in rounds.items():
        paths = {}
        for path in PATHS:
            ms = [m[path] for m in measured]
            ok = max(1, sum(m["succeeded"] for m in ms))
            paths[path] = {
                "requests_per_s": statistics.median(m["requests_per_s"] for m in ms),
                "requests_per_s_min_max": [min(m["requests_per_s"] for m in ms), max(m["requests_per_s"] for m in ms)],
                "output_tokens_per_s": statistics.median(m["output_tokens_per_s"] for m in ms),
                "ttft_ms": describe([x for m in ms for x in m["ttft_s"]], scale=1e3),
                "tpot_ms": describe([x for m in ms for x in m["tpot_s"]], scale=1e3),
                "sent": sum(m["sent"] for m in ms), "failed": sum(m["failed"] for m in ms),
                "prompt_tokens_per_request": sum(m["prompt_tokens"] for m in ms) / ok,
                "output_tokens_per_request": sum(m["output_tokens"] for m in ms) / ok,
                "gateway_cpu_ms_per_request": statistics.median(m["cpu_ms_per_request"]["gateway"] for m in ms),
                "vllm_cpu_ms_per_request": statistics.median(m["cpu_ms_per_request"]["vllm"] for m in ms),
                "loadavg_1m": [m["loadavg_1m_after"] for m in ms],
            }
        d, s = paths["direct"], paths["sluice"]
        out[name] = {
            "paths": paths,
            "ratios": {
                "requests_per_s": s["requests_per_s"] / d["requests_per_s"],
                "requests_per_s_per_round": [m["sluice"]["requests_per_s"] / m["direct"]["requests_per_s"]
                                             for m in measured],
                "output_tokens_per_s": s["output_tokens_per_s"] / d["output_tokens_per_s"],
                "ttft_mean": s["ttft_ms"]["mean"] / d["ttft_ms"]["mean"],
                "ttft_p50": s["ttft_ms"]["p50"] / d["ttft_ms"]["p50"],
                "ttft_p99": s["ttft_ms"]["p99"] / d["ttft_ms"]["p99"],
                "tpot_mean": s["tpot_ms"]["mean"] / d["tpot_ms"]["mean"],
                "added_ttft_mean_ms": s["ttft_ms"]["mean"] - d["ttft_ms"]["mean"],
                "added_ttft_p50_ms": s["ttft_ms"]["p50"] - d["ttft_ms"]["p50"],
                "added_ttft_p50_ms_per_round": [
                    m["sluice"]["ttft_ms"]["p50"] - m["direct"]["ttft_ms"]["p50"] for m in measured],
            },
        }
    return out


def markdown(comparison: dict[str, Any]) -> str:
    lines = [
        "| scenario | path | req/s (median; min–max) | output tok/s | TTFT mean ms | TTFT p50 ms | TTFT p99 ms "
        "| TPOT mean ms | TPOT p50 ms | TPOT p99 ms | gateway CPU ms/req | vLLM CPU ms/req | failed |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, c in comparison.items():
        for path in PATHS:
            p = c["paths"][path]
            lo, hi = p["requests_per_s_min_max"]
            t, o = p["ttft_ms"], p["tpot_ms"]
            gw = f"{p['gateway_cpu_ms_per_request']:.2f}" if path == "sluice" else "–"
            lines.append(f"| {name} | {path} | {p['requests_per_s']:.2f} ({lo:.2f}–{hi:.2f}) | "
                         f"{p['output_tokens_per_s']:.0f} | {t['mean']:.1f} | {t['p50']:.1f} | {t['p99']:.1f} | "
                         f"{o['mean']:.2f} | {o['p50']:.2f} | {o['p99']:.2f} | {gw} | "
                         f"{p['vllm_cpu_ms_per_request']:.1f} | {p['failed']} of {p['sent']} |")
    lines += [
        "",
        "| scenario | req/s sluice ÷ direct (per round) | output tok/s ratio | TTFT mean ratio | TTFT p50 ratio "
        "| TTFT p99 ratio | TPOT mean ratio | added TTFT mean ms | added TTFT p50 ms (per round) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, c in comparison.items():
        r = c["ratios"]
        each = ", ".join(f"{x:.2f}" for x in r["requests_per_s_per_round"])
        added = ", ".join(f"{x:.1f}" for x in r["added_ttft_p50_ms_per_round"])
        lines.append(f"| {name} | {r['requests_per_s']:.3f} ({each}) | {r['output_tokens_per_s']:.3f} | "
                     f"{r['ttft_mean']:.2f} | {r['ttft_p50']:.2f} | {r['ttft_p99']:.2f} | {r['tpot_mean']:.2f} | "
                     f"{r['added_ttft_mean_ms']:.1f} | {r['added_ttft_p50_ms']:.1f} ({added}) |")
    return "\n".join(lines)
