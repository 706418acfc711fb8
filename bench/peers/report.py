"""The figures of the peers run: medians over the rounds, CPU per request and per relayed chunk, latency added
over going direct, ratios to the bare proxy and to the best peer, the issue's targets, a markdown table."""

from __future__ import annotations

import statistics
from typing import Any

from bench.peers.settings import LABELS, PEERS, TARGETS

C64 = ("c64/full", "c64/stream")
C1 = ("c1/full", "c1/stream")
# Issue 19's targets, each a ratio in the same run.
CPU_X_BARE_FULL, CPU_X_BARE_OPEN, ADDED_P50_MS, P99_OVER_BARE_MS, CHUNK_X_BARE = 1.3, 1.1, 1.0, 5.0, 1.3


def _median(rounds: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in rounds))


def summarise(runs: dict[str, dict[str, list[dict[str, Any]]]], frame_bytes: float) -> dict[str, Any]:
    """Per target and scenario, the medians over the rounds; then what follows from them (``derived``)."""
    scenarios: dict[str, dict[str, dict[str, Any]]] = {}
    for target, by_scenario in runs.items():
        for scenario, rounds in by_scenario.items():
            s = {"rps": _median(rounds, "rps"), "p50_ms": _median(rounds, "p50_us") / 1e3,
                 "p99_ms": _median(rounds, "p99_us") / 1e3, "sim_cpu_pct": 100 * statistics.median(
                     r["sim_cpu_s"] / r["elapsed_s"] for r in rounds),
                 "requests": sum(r["requests"] for r in rounds), "errors": sum(r["errors"] for r in rounds)}
            if "proxy_cpu_s" in rounds[0]:
                s["cpu_us_per_request"] = 1e6 * statistics.median(
                    r["proxy_cpu_s"] / max(1, r["requests"]) for r in rounds)
                s["proxy_cpu_pct"] = 100 * statistics.median(r["proxy_cpu_s"] / r["elapsed_s"] for r in rounds)
                if scenario == "long" and frame_bytes:
                    # frames relayed = bytes wrk read / bytes of a frame: streams still open when wrk stops count
                    # for what they relayed (response heads, a few hundred bytes a stream, are under 1%)
                    s["cpu_us_per_chunk"] = 1e6 * statistics.median(
                        r["proxy_cpu_s"] / max(1.0, r["bytes"] / frame_bytes) for r in rounds)
            if "redis_cpu_s" in rounds[0]:
                s["redis_cpu_pct"] = 100 * statistics.median(r["redis_cpu_s"] / r["elapsed_s"] for r in rounds)
            scenarios.setdefault(target, {})[scenario] = s
    return {"scenarios": scenarios, "derived": derive(scenarios)}


def derive(sc: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    peers = [p for p in PEERS if p in sc]
    best: dict[str, tuple[str, float]] = {}  # scenario -> (peer, its CPU figure)
    for scenario in (*C64, "long"):
        key = "cpu_us_per_chunk" if scenario == "long" else "cpu_us_per_request"
        figures = [(p, sc[p][scenario][key]) for p in peers if key in sc[p].get(scenario, {})]
        if figures:
            best[scenario] = min(figures, key=lambda f: f[1])
    out["best_peer"] = {s: {"peer": p, "cpu_us": v} for s, (p, v) in best.items()}
    for target, s in sc.items():
        d: dict[str, Any] = {}
        for scenario in C1:
            if "direct" in sc and scenario in s:
                d[f"added_p50_ms/{scenario}"] = s[scenario]["p50_ms"] - sc["direct"][scenario]["p50_ms"]
        for scenario in (*C64, "long"):
            key = "cpu_us_per_chunk" if scenario == "long" else "cpu_us_per_request"
            mine = s.get(scenario, {}).get(key)
            bare = sc.get("bare_proxy", {}).get(scenario, {}).get(key)
            if mine is None:
                continue
            if bare:
                d[f"cpu_x_bare/{scenario}"] = mine / bare
            if scenario in best:
                d[f"cpu_x_best_peer/{scenario}"] = mine / best[scenario][1]
        for scenario in C64:
            if "bare_proxy" in sc and scenario in s:
                d[f"p99_minus_bare_ms/{scenario}"] = s[scenario]["p99_ms"] - sc["bare_proxy"][scenario]["p99_ms"]
        out[target] = d
    out["targets"] = targets(out)
    return out


def targets(d: dict[str, Any]) -> dict[str, Any]:
    """Issue 19's targets, met or not, on this run's figures (worst mode of each)."""
    checks: dict[str, Any] = {}

    def check(name: str, target: str, keys: list[str], limit: float) -> None:
        values = [d.get(target, {}).get(k) for k in keys]
        if all(v is not None for v in values):
            worst = max(values)
            checks[name] = {"worst": worst, "limit": limit, "met": worst <= limit}

    check("sluice_full CPU/request x bare proxy (c64)", "sluice_full", [f"cpu_x_bare/{s}" for s in C64],
          CPU_X_BARE_FULL)
    check("sluice_open CPU/request x bare proxy (c64)", "sluice_open", [f"cpu_x_bare/{s}" for s in C64],
          CPU_X_BARE_OPEN)
    check("sluice_full added p50 at c1 (ms)", "sluice_full", [f"added_p50_ms/{s}" for s in C1], ADDED_P50_MS)
    check("sluice_full p99 at c64 minus bare proxy's (ms)", "sluice_full",
          [f"p99_minus_bare_ms/{s}" for s in C64], P99_OVER_BARE_MS)
    check("sluice_full CPU per relayed chunk x bare proxy (long streams)", "sluice_full", ["cpu_x_bare/long"],
          CHUNK_X_BARE)
    return checks


def _f(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def markdown(summary: dict[str, Any], skipped: dict[str, str], versions: dict[str, str]) -> str:
    sc, d = summary["scenarios"], summary["derived"]
    lines = [
        "| proxy | CPU µs/request at c64, full / stream | × bare proxy | × best peer | requests/s at c64, full / "
        "stream | p50 / p99 ms at c64, full | p50 / p99 ms at c64, stream | added p50 at c1 vs direct, full / "
        "stream (ms) | long streams: CPU µs per relayed chunk (× bare) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for target in TARGETS:
        label = LABELS[target] + (f"; {versions[target]}" if target in versions else "")
        if target in skipped:
            lines.append(f"| {label} | skipped: {skipped[target]} | | | | | | | |")
            continue
        if target not in sc:
            continue
        s, t = sc[target], d.get(target, {})
        cpu = " / ".join(_f(s.get(k, {}).get("cpu_us_per_request"), ".0f") for k in C64)
        x_bare = " / ".join(_f(t.get(f"cpu_x_bare/{k}"), ".2f") for k in C64)
        x_best = " / ".join(_f(t.get(f"cpu_x_best_peer/{k}"), ".2f") for k in C64)
        rps = " / ".join(_f(s.get(k, {}).get("rps"), ".0f") for k in C64)
        lat = [f"{_f(s.get(k, {}).get('p50_ms'), '.2f')} / {_f(s.get(k, {}).get('p99_ms'), '.2f')}" for k in C64]
        added = " / ".join(_f(t.get(f"added_p50_ms/{k}"), "+.2f") for k in C1)
        long = s.get("long", {})
        chunk = (f"{_f(long.get('cpu_us_per_chunk'), '.1f')} ({_f(t.get('cpu_x_bare/long'), '.2f')}×)"
                 if "cpu_us_per_chunk" in long else "–")
        lines.append(f"| {label} | {cpu} | {x_bare} | {x_best} | {rps} | {lat[0]} | {lat[1]} | {added} | {chunk} |")
    best = d.get("best_peer", {})
    if best:
        lines += ["", "Best peer (least CPU) per scenario: " + "; ".join(
            f"{s}: {b['peer']} ({b['cpu_us']:.1f} µs)" for s, b in best.items()) + "."]
    checks = d.get("targets", {})
    if checks:
        lines += ["", "| issue 19 target | this run (worst mode) | limit | |", "|---|---:|---:|---|"]
        for name, c in checks.items():
            lines.append(f"| {name} | {c['worst']:.2f} | {c['limit']:.2f} | {'met' if c['met'] else 'MISSED'} |")
    errors = {f"{t}/{k}": v["errors"] for t, by in sc.items() for k, v in by.items() if v["errors"]}
    if errors:
        lines += ["", "Errors (non-2xx, socket errors, timeouts): " + ", ".join(f"{k}: {v}" for k, v in
                                                                                errors.items())]
    return "\n".join(lines)
