"""The rounds summarised by kind (medians, every error counted), the ratios of each change round to the steady
rounds, what counts as a failure, and the markdown tables."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

CUT = "rejected:client_disconnected"  # what the gateway counts for the requests wrk leaves in flight at its end


def quantiles(values: list[float]) -> dict[str, float | None]:
    """p50, p90 and max of ``values`` (None for none)."""
    if not values:
        return {"p50": None, "p90": None, "max": None}
    ordered = sorted(values)
    return {"p50": statistics.median(ordered), "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
            "max": ordered[-1]}


def summarise(rounds: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per kind of round: medians over its rounds (min-max of requests/s), every error and change counted."""
    summary: dict[str, dict[str, Any]] = {}
    for kind in dict.fromkeys(r["kind"] for r in rounds):
        mine = [r for r in rounds if r["kind"] == kind]
        changes = [c for r in mine for c in r["changes"]]
        firsts = [c["first_request"] for c in changes if "first_request" in c]
        summary[kind] = {
            "rounds": len(mine),
            "rps": statistics.median(r["rps"] for r in mine),
            "rps_each": [round(r["rps"], 1) for r in mine],
            "p50_ms": statistics.median(r["p50_us"] for r in mine) / 1e3,
            "p99_ms": statistics.median(r["p99_us"] for r in mine) / 1e3,
            "gateway_cpu_us_per_request": statistics.median(r["gateway_cpu_us_per_request"] for r in mine),
            "gateway_cpu_us_each": [round(r["gateway_cpu_us_per_request"]) for r in mine],
            "gateway_cpu_pct": statistics.median(r["gateway_cpu_pct"] for r in mine),
            "load_cpu_pct": statistics.median(r["load_cpu_pct"] for r in mine),
            "requests": sum(r["requests"] for r in mine),
            "errors": sum(r["errors"] for r in mine),
            "rejections": sum(v for r in mine for k, v in r["gateway_counts"].items()
                              if k.startswith("rejected:") and k != CUT),
            # wrk closes its connections at its end, requests in flight: at most one per connection and round
            "cut_at_wrk_end": sum(r["gateway_counts"].get(CUT, 0.0) for r in mine),
            "rounds_cut_more_than_connections": sum(1 for r in mine
                                                    if r["gateway_counts"].get(CUT, 0.0) > r["connections"]),
            "changes": len(changes),
            "changes_failed": sum(1 for c in changes if not c["ok"]),
            "stray_requests": sum(c.get("stray_requests", 0) for c in changes),
            "admin_ms": quantiles([c["admin_ms"] for c in changes if "admin_ms" in c]),
            "first_request_missing": sum(1 for f in firsts if f["high_ms"] is None and not f.get("load_ended")),
            "first_request_after_load": sum(1 for f in firsts if f["high_ms"] is None and f.get("load_ended")),
            "first_request_low_ms": quantiles([f["low_ms"] for f in firsts if f["low_ms"] is not None]),
            "first_request_high_ms": quantiles([f["high_ms"] for f in firsts if f["high_ms"] is not None]),
        }
    return summary


def ratios(summary: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each change round's figures over the steady rounds' (b)/(a)."""
    steady = summary["steady"]
    return {kind: {key: s[key] / steady[key] for key in ("rps", "p50_ms", "p99_ms", "gateway_cpu_us_per_request")}
            for kind, s in summary.items() if kind != "steady"}


def failures(summary: dict[str, dict[str, Any]]) -> list[str]:
    out = []
    for kind, s in summary.items():
        for key in ("errors", "rejections", "rounds_cut_more_than_connections", "changes_failed", "stray_requests",
                    "first_request_missing"):
            if s[key]:
                out.append(f"{kind}: {key} = {s[key]}")
    return out


def markdown(summary: dict[str, dict[str, Any]], ratio: dict[str, dict[str, float]],
             idle: Sequence[dict[str, Any]] = ()) -> str:
    def q(d: dict[str, float | None]) -> str:
        return " / ".join("–" if d[k] is None else f"{d[k]:.1f}" for k in ("p50", "p90", "max"))

    lines = [
        "| rounds | requests/s: median (each round) | p50 ms | p99 ms | gateway CPU µs/request: median (each round) | "
        "gateway CPU % | "
        "errors: non-2xx + socket + rejected, of requests | cut by wrk's end (499) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, s in summary.items():
        cpu_each = ", ".join(map(str, s["gateway_cpu_us_each"]))
        lines.append(
            f"| {kind} | {s['rps']:.0f} ({', '.join(f'{x:.0f}' for x in s['rps_each'])}) | {s['p50_ms']:.2f} | "
            f"{s['p99_ms']:.2f} | {s['gateway_cpu_us_per_request']:.0f} ({cpu_each}) | {s['gateway_cpu_pct']:.0f} | "
            f"{s['errors']} + {s['rejections']:.0f} of {s['requests']} | {s['cut_at_wrk_end']:.0f} |")
    lines += ["", "| rounds | requests/s (b)/(a) | p50 (b)/(a) | p99 (b)/(a) | gateway CPU/request (b)/(a) |",
              "|---|---:|---:|---:|---:|"]
    for kind, r in ratio.items():
        lines.append(f"| {kind} | {r['rps']:.3f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | "
                     f"{r['gateway_cpu_us_per_request']:.3f} |")
    lines += ["", "| rounds | changes (failed) | admin call ms p50 / p90 / max | first request after the answer "
              "(steady: A's next request after a tick), ms p50 / p90 / max: low bound … high bound | stray requests "
              "on C while out |", "|---|---:|---:|---:|---:|"]
    for kind, s in summary.items():
        changes, admin, stray = (("–", "–", "–") if kind.startswith("steady") else
                                 (f"{s['changes']} ({s['changes_failed']})", q(s["admin_ms"]),
                                  f"{s['stray_requests']:.0f}"))
        lines.append(f"| {kind} | {changes} | {admin} | "
                     f"{q(s['first_request_low_ms'])} … {q(s['first_request_high_ms'])} | {stray} |")
    if idle:
        lines += ["", "| admin calls with no load (read: a GET, no change) | calls (failed) | admin call ms p50 / p90 "
                  "/ max | gateway CPU ms per call (less idle) | idle gateway CPU % |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {i['kind']} | {i['changes']} ({i['failed']}) | {q(i['admin_ms'])} | "
                  f"{i['gateway_cpu_ms_per_call']:.2f} | {i['idle_gateway_cpu_pct']:.1f} |" for i in idle]
    return "\n".join(lines)
