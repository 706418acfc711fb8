"""The comparison of the two clients' figures: medians over the rounds, ratios, a markdown table."""

from __future__ import annotations

import statistics
from typing import Any

from bench.vllm_compare.settings import AGREE, METRICS, TOLERANCE


def compare(rounds: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per scenario and metric: the median over the rounds of each client's figure, their ratio, and every round's."""
    out = {}
    for scenario, measured in rounds.items():
        rows = {}
        for label, key, _ in METRICS:
            v = statistics.median(m["vllm"][key] for m in measured)
            s = statistics.median(m["sluice"][key] for m in measured)
            per_round = [m["sluice"][key] / m["vllm"][key] if m["vllm"][key] else None for m in measured]
            rows[key] = {"label": label, "vllm": v, "sluice": s, "ratio": s / v if v else None,
                         "ratio_per_round": per_round}
        for key in ("duration", "total_input_tokens", "completed", "send_spread_s", "median_ttft_ms", "client_cpu_s",
                    "server_mean_ttft_ms", "server_mean_queue_ms", "server_mean_prefill_ms", "server_mean_other_ms",
                    "engine_steps"):
            if all(m[client].get(key) is not None for m in measured for client in ("vllm", "sluice")):  # not in
                # older results
                rows[key] = {"label": key, "vllm": statistics.median(m["vllm"][key] for m in measured),
                             "sluice": statistics.median(m["sluice"][key] for m in measured)}
        agree = all(rows[m[1]]["ratio"] is not None and abs(rows[m[1]]["ratio"] - 1) <= TOLERANCE
                    for m in METRICS[:AGREE])
        out[scenario] = {"metrics": rows, "within_10pct": agree}
    return out


def markdown(comparison: dict[str, Any]) -> str:
    lines = ["| scenario | metric | vllm bench serve | sluice bench | sluice / vllm | ratio in each round |",
             "|---|---|---:|---:|---:|---|"]
    for scenario, c in comparison.items():
        for _, key, _ in METRICS:
            r = c["metrics"][key]
            ratio = "–" if r["ratio"] is None else f"{r['ratio']:.3f}"
            each = ", ".join("–" if x is None else f"{x:.2f}" for x in r["ratio_per_round"])
            lines.append(f"| {scenario} | {r['label']} | {r['vllm']:.2f} | {r['sluice']:.2f} | {ratio} | {each} |")
        m = c["metrics"]
        lines.append(f"| {scenario} | duration (s); prompt tokens in all | {m['duration']['vllm']:.2f}; "
                     f"{m['total_input_tokens']['vllm']:.0f} | {m['duration']['sluice']:.2f}; "
                     f"{m['total_input_tokens']['sluice']:.0f} | | |")
        lines.append(f"| {scenario} | median TTFT (ms); first to last send (s) | {m['median_ttft_ms']['vllm']:.2f}; "
                     f"{m['send_spread_s']['vllm']:.3f} | {m['median_ttft_ms']['sluice']:.2f}; "
                     f"{m['send_spread_s']['sluice']:.3f} | | |")
        if "server_mean_ttft_ms" in m:
            lines.append(f"| {scenario} | the server's own mean TTFT (ms; arrival to first token, vLLM's /metrics) | "
                         f"{m['server_mean_ttft_ms']['vllm']:.2f} | {m['server_mean_ttft_ms']['sluice']:.2f} | | |")
        if "server_mean_other_ms" in m:
            lines.append(f"| {scenario} | of which engine queue; prefill; the rest (API server) (ms) | "
                         f"{_server_split(m, 'vllm')} | {_server_split(m, 'sluice')} | | |")
            lines.append(f"| {scenario} | engine steps over the run | {m['engine_steps']['vllm']:.0f} | "
                         f"{m['engine_steps']['sluice']:.0f} | | |")
        if "client_cpu_s" in m:
            lines.append(f"| {scenario} | client CPU (s, whole process incl. start-up) | {m['client_cpu_s']['vllm']:.2f} | "
                         f"{m['client_cpu_s']['sluice']:.2f} | | |")
    verdicts = "; ".join(
        f"{s}: " + ", ".join(f"{label.split(' (')[0]} {'within' if abs(c['metrics'][key]['ratio'] - 1) <= TOLERANCE else 'NOT within'}"
                             for label, key, _ in METRICS[:AGREE])
        for s, c in comparison.items())
    return "\n".join(lines) + f"\n\nWithin {TOLERANCE:.0%} (medians over the rounds): {verdicts}."


def _server_split(m: dict[str, Any], client: str) -> str:
    """The server's mean TTFT split into engine queue; prefill; the rest (ms), for one client's runs."""
    return "; ".join(f"{m[f'server_mean_{k}_ms'][client]:.1f}" for k in ("queue", "prefill", "other"))


def brief(client: str, m: dict[str, Any]) -> str:
    return (f"{m['completed']} ok, {m['request_throughput']:.2f} req/s, TTFT {m['mean_ttft_ms']:.1f} ms "
            f"(median {m['median_ttft_ms']:.1f}), {m['output_throughput']:.1f} tok/s, {m['duration']:.1f} s, "
            f"sends over {m['send_spread_s']:.3f} s")
