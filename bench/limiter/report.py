"""The limiter benchmark's markdown tables and the source state it measured."""

from __future__ import annotations

import subprocess
from typing import Any

from bench.harness import ROOT
from bench.limiter.gateway import GATEWAY_LABELS, GATEWAYS
from bench.limiter.settings import CONCURRENCIES, STORE_LABELS, STORES, TARGET_PCT


def tables(result: dict[str, Any]) -> str:
    d = result["decisions"]["summary"]
    lines = [
        "| store | concurrency | decisions/s (median; min–max) | reserve p50 µs | reserve p99 µs | reserve+settle p50 µs | "
        "reserve+settle p99 µs | client CPU µs/decision | EVALSHA/decision | refused | degraded switches | "
        "leases left in Redis |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in CONCURRENCIES:
        for kind in STORES:
            s = d[f"{kind}/c{c}"]
            evalsha = "–" if kind == "memory" else f"{s['evalsha_per_decision']:.2f}"
            lines.append(
                f"| {STORE_LABELS[kind]} | {c} | {s['decisions_per_s']:.0f} ({s['decisions_per_s_min']:.0f}–"
                f"{s['decisions_per_s_max']:.0f}) | {s['reserve_p50_us']:.0f} | {s['reserve_p99_us']:.0f} | "
                f"{s['cycle_p50_us']:.0f} | {s['cycle_p99_us']:.0f} | {s['client_cpu_us_per_decision']:.0f} | "
                f"{evalsha} | {s['refused']} | {s['degraded_switches']} | "
                f"{'–' if kind == 'memory' else s['leaked_leases']} |")
    o = result["overshoot"]
    lines += [
        "",
        f"Request limit {o['request_burst']['limit_per_minute']}/minute; two bursts of "
        f"{o['request_burst']['sent_per_burst']} requests, round-robin over the processes:",
        "",
        "| limiter | processes | sent | admitted | admitted ÷ limit |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in o["request_burst"]["results"]:
        label = ("MODEL: per-process fixed window (slowapi-like), bursts 0.5 s before and after the minute boundary"
                 if r["model"].startswith("fixed") else
                 f"ours: GCRA in one Redis, real, bursts {r['window_s']:.2f} s apart")
        lines.append(f"| {label} | {r['processes']} | {r['sent']} | {r['admitted']} | {r['admitted_over_limit']:.2f} |")
    t = o["token_burst"]
    lines += [
        "",
        f"Token budget {t['budget_tokens_per_minute']}/minute; {t['concurrent']} concurrent requests of "
        f"{t['prompt_tokens']} prompt + {t['answer_tokens']} answer tokens (max_tokens = {t['answer_tokens']}):",
        "",
        "| limiter | processes | admitted requests | tokens admitted | admitted ÷ budget |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in t["results"]:
        label = ("MODEL: post-hoc charging (LiteLLM-like: check before, charge after), perfectly shared counter"
                 if r["model"].startswith("post") else "ours: reserve prompt + max_tokens up front in one Redis, real")
        lines.append(f"| {label} | {r['processes']} | {r['admitted']} | {r['admitted_tokens']} | "
                     f"{r['admitted_over_limit']:.2f} |")
    g = result["gateway"]
    lines += [
        "",
        "| quotas | mode | requests/s (median; min–max) | p50 ms | p99 ms | gateway CPU % | gateway CPU ms/request | "
        "EVALSHA/request | non-2xx | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode in ("full", "stream"):
        for name in GATEWAYS:
            s = g["summary"][f"{name}/{mode}"]
            lines.append(
                f"| {GATEWAY_LABELS[name]} | {mode} | {s['rps']:.0f} ({s['rps_min']:.0f}–{s['rps_max']:.0f}) | "
                f"{s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {s['gateway_cpu_pct']:.0f} | "
                f"{s['gateway_cpu_ms_per_request']:.3f} | {s['evalsha_per_request']:.3f} | "
                f"{s['non2xx']} of {s['requests']} | {s['errors']} |")
    lines += ["", "| mode | quotas on ÷ off (requests/s) | target | met | diagnostic: on with 1 s store timeout ÷ off |",
              "|---|---:|---:|---|---:|"]
    for mode in ("full", "stream"):
        pct_ = g["on_over_off_pct"][mode]
        lines.append(f"| {mode} | {pct_:.1f}% | ≥ {TARGET_PCT:.0f}% | {'yes' if pct_ >= TARGET_PCT else 'no'} | "
                     f"{g['on_t1s_over_off_pct'][mode]:.1f}% |")
    return "\n".join(lines)


def source_state() -> dict[str, Any]:
    """The commit measured, and whether src/sluice/quota had uncommitted changes (it is being worked on)."""
    def git(*argv: str) -> str:
        out = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True)
        return out.stdout.strip()
    return {"commit": git("rev-parse", "HEAD"), "quota_changes": git("status", "--short", "src/sluice/quota")}
