"""The planner against reality: one trace through the real gateway and simulator, then through ``sluice plan``.

    python -m bench.plan_check               # --requests 400 --rate 16 --seed 0 --speed 1 --calibration-requests 60

A gateway (``sluice serve``, the config below: an embedded simulator of 8 seats, two tiers: ``free`` with a
request rate limit, priority 0 and a 1 s queue deadline, ``pro`` at priority 10 with a 5 s one; the window is the
simulator's seats) takes a Poisson load from ``sluice bench`` (two tenants named after their keys, 256-token prompts,
64-token answers, streamed), somewhat over the engine's capacity, after a calibration run at low load
(``--calibration-requests`` at ``--calibration-rate``; 0: none). The bench run is the trace: its results are replayed
by the planner (``replay``, one replica, the same config), its engine (a) as configured, (b) calibrated from the
calibration run, (c) at the speed fitted to the trace run's own median TPOT (only the policy is predicted).
Compared, per tier and in all: 429s, 503s, p99 TTFT and p50 TPOT, measured (the bench's results) and predicted
(the planner's), with the relative error of each. Output: tables on stdout, everything in
bench/results/plan_check.json (or --out; ``--keep DIR`` keeps the config, the gateway's log and the bench runs).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import yaml

from sluice.bench import percentile
from sluice.config import load_settings
from sluice.identity import generate_key, hash_key
from sluice.plan import SloPolicy, from_bench, read_trace, replay, report

RESULTS = Path(__file__).parent / "results" / "plan_check.json"
TIERS = {"free": {"priority": 0, "max_queue_s": 1.0, "requests": {"amount": 240, "period_s": 60, "burst": 10}},
         "pro": {"priority": 10, "max_queue_s": 5.0}}
TENANTS = {"alice": "free", "bob": "pro"}


def config_doc(keys: dict[str, str], *, speed: float, port: int) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "port": port, "access_log": False},
        "models": [{"name": "sim", "sim": {"max_num_seqs": 8, "num_kv_blocks": 2048, "speed": speed}}],
        "tiers": TIERS,
        "keys": [{"id": name, "hash": hash_key(keys[name]), "tenant": name, "tier": tier}
                 for name, tier in TENANTS.items()],
    }


def run_real(work: Path, config: Path, keys: dict[str, str], *, port: int,
             loads: list[tuple[str, int, float, int]]) -> list[Path]:
    """Serve ``config`` and load it with ``sluice bench`` once per ``(name, requests, rate, seed)``, one after the
    other; the bench runs' directories."""
    log = open(work / "gateway.log", "wb")  # noqa: SIM115 - closed below
    gateway = subprocess.Popen([sys.executable, "-m", "sluice.cli", "serve", "--config", str(config)],
                               stdout=log, stderr=subprocess.STDOUT)
    runs = []
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/health", gateway)
        tenants = ";".join(f"{name},key={keys[name]}" for name in TENANTS)
        for name, requests, rate, seed in loads:
            runs.append(work / name)
            subprocess.run([sys.executable, "-m", "sluice.cli", "bench", "--base-url", f"http://127.0.0.1:{port}",
                            "--model", "sim", "--rate", str(rate), "--requests", str(requests), "--input-len", "256",
                            "--output-len", "64", "--tenants", tenants, "--seed", str(seed), "--out", str(runs[-1]),
                            "--no-plots", "--no-progress", "--max-failures", "0"],
                           check=True, stdout=subprocess.DEVNULL)
    finally:
        gateway.send_signal(signal.SIGTERM)
        try:
            gateway.wait(timeout=15)
        except subprocess.TimeoutExpired:
            gateway.kill()
            gateway.wait()
        log.close()
    return runs


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the gateway exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the gateway did not answer {url} within {timeout_s} s")


def measured(run: Path) -> dict[str, dict[str, Any]]:
    """429s, 503s and p99 TTFT per tier and in all, from the bench's results."""
    rows = [orjson.loads(line) for line in (run / "results.jsonl").read_bytes().splitlines() if line.strip()]
    groups: dict[str, list[dict[str, Any]]] = {"all": rows}
    for name, tier in TENANTS.items():
        groups.setdefault(tier, []).extend(r for r in rows if r["tenant"] == name)
    return {group: _figures([r["status"] for r in rs], [r["ttft_s"] for r in rs if r["ok"] and r["ttft_s"]],
                            [r["tpot_s"] for r in rs if r["ok"] and r["tpot_s"]])
            for group, rs in groups.items()}


def predicted(config: Path, run: Path, calibration: Path | None) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The planner's figures for the trace of ``run``, its engine calibrated from the bench run ``calibration``
    (None: the config's sim settings as they are)."""
    settings = load_settings(config)
    trace = read_trace(run)
    sim = settings.models[0].sim
    assert sim is not None
    engine = from_bench(sim, calibration) if calibration is not None else None
    result = replay(settings, trace, replicas=1, engine=engine)
    doc = report(result, span_s=trace.span_s, slo=SloPolicy(settings, default_ttft_s=None))
    groups = {"all": result.outcomes}
    for tier in TIERS:
        groups[tier] = tuple(o for o in result.outcomes if o.principal.tier == tier)
    figures = {group: _figures([o.status for o in os], [o.ttft_s for o in os if o.status == 200 and o.ttft_s],
                               [o.tpot_s for o in os if o.status == 200 and o.tpot_s])
               for group, os in groups.items()}
    return figures, doc


def _figures(statuses: list[int], ttfts: list[float], tpots: list[float]) -> dict[str, Any]:
    return {"requests": len(statuses), "429": statuses.count(429), "503": statuses.count(503),
            "p99_ttft_s": percentile(ttfts, 99) if ttfts else None,
            "p50_tpot_s": percentile(tpots, 50) if tpots else None}


def compared(real: dict[str, dict[str, Any]], plan: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per group and figure: measured, predicted, and the error relative to the measured (None when it is 0)."""
    out: dict[str, dict[str, Any]] = {}
    for group, figures in real.items():
        out[group] = {}
        for name in ("429", "503", "p99_ttft_s", "p50_tpot_s"):
            m, p = figures[name], plan[group][name]
            error = None if not m or p is None else (p - m) / m
            out[group][name] = {"measured": m, "predicted": p, "error": error}
    return out


def check(work: Path, *, requests: int, rate: float, seed: int, speed: float, port: int,
          calibration_requests: int = 0, calibration_rate: float = 3.0) -> dict[str, Any]:
    """The real runs (a calibration run at low load first, when asked), the planner's predictions (as configured,
    and calibrated from the calibration run), and how they compare."""
    keys = {name: generate_key() for name in TENANTS}
    config = work / "config.yaml"
    config.write_text(yaml.safe_dump(config_doc(keys, speed=speed, port=port)))
    loads = [("calibration", calibration_requests, calibration_rate, seed + 1)] if calibration_requests else []
    started = time.monotonic()
    *calibration, run = run_real(work, config, keys, port=port, loads=[*loads, ("trace", requests, rate, seed)])
    real_s = time.monotonic() - started
    result: dict[str, Any] = {"requests": requests, "rate": rate, "seed": seed, "speed": speed,
                              "calibration_requests": calibration_requests, "calibration_rate": calibration_rate,
                              "real_run_s": real_s, "predictions": {}}
    engines = {"configured": None, "calibrated": calibration[0] if calibration else None, "self_calibrated": run}
    for name, source in engines.items():
        if name == "calibrated" and source is None:
            continue
        started = time.monotonic()
        plan, doc = predicted(config, run, source)
        result["predictions"][name] = {"plan_s": time.monotonic() - started,
                                       "comparison": compared(measured(run), plan), "plan_report": doc}
    return result


PREDICTIONS = {
    "configured": "the engine as configured (the config's sim settings)",
    "calibrated": "the engine calibrated from the calibration run (low load, before the trace)",
    "self_calibrated": "the engine's speed fitted to the trace run's own median TPOT (policy alone is predicted)",
}


def render(comparison: dict[str, Any]) -> str:
    lines = [f"{'group':<6}{'figure':<12}{'measured':>10}{'predicted':>11}{'error':>9}"]
    for group, figures in comparison.items():
        for name, f in figures.items():
            error = "-" if f["error"] is None else f"{f['error'] * 100:+.1f}%"
            lines.append(f"{group:<6}{name:<12}{_num(f['measured']):>10}{_num(f['predicted']):>11}{error:>9}")
    return "\n".join(lines)


def _num(value: float | int | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def main() -> None:
    from bench.harness import free_port

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--rate", type=float, default=16.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--speed", type=float, default=1.0)
    parser.add_argument("--calibration-requests", type=int, default=60, help="0: no calibration run")
    parser.add_argument("--calibration-rate", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--keep", type=Path, help="keep the config, logs and bench runs in this directory")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        result = check(work, requests=args.requests, rate=args.rate, seed=args.seed, speed=args.speed,
                       port=free_port(), calibration_requests=args.calibration_requests,
                       calibration_rate=args.calibration_rate)
    result["load_average"] = os.getloadavg()
    for name, prediction in result["predictions"].items():
        print(f"predicted with {PREDICTIONS[name]} ({prediction['plan_s']:.2f} s):")
        print(render(prediction["comparison"]))
    print(f"real runs {result['real_run_s']:.1f} s; load average {result['load_average'][0]:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
