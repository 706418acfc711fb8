"""``sluice bench``: turn the command line into a run, run it, and write what it measured.

Writes into ``--out`` (default ``sluice-bench-<UTC time>``): ``results.jsonl`` (one line per request),
``summary.json`` (the settings and every figure) and, with matplotlib installed, ``latency_cdf.png`` and
``timeline.png``; prints the table on stdout and the progress bar on stderr. Without ``--rate`` or
``--concurrency`` the run is a closed loop of ``DEFAULT_CONCURRENCY`` users. After ``--duration`` it says how many
requests are still in flight and waits for them at most ``--drain-timeout``, then prints the wall time both took;
it stops early, saying why, when ``--max-failures`` requests fail before any succeeds (or in a row, not counting
429 and 503).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sluice.bench._arrivals import make_arrivals
from sluice.bench._client import RequestShape
from sluice.bench._dists import parse_dist
from sluice.bench._plots import write_plots
from sluice.bench._progress import Progress
from sluice.bench._report import summarize
from sluice.bench._runner import LoadSpec, RunRecord, run_load
from sluice.bench._table import render
from sluice.bench._tenants import Tenant, parse_tenants
from sluice.clock import Clock, MonotonicClock
from sluice.errors import ConfigError

DEFAULT_REQUESTS = 100
DEFAULT_CONCURRENCY = 8  # users of the closed loop when neither --rate nor --concurrency is given


@dataclass(frozen=True)
class BenchRun:
    shape: RequestShape
    load: LoadSpec
    tenants: tuple[Tenant, ...]
    seed: int
    slo_ttft_s: float | None
    slo_tpot_s: float | None
    settings: dict[str, Any]


def bench_run_from_args(args: argparse.Namespace, env: Mapping[str, str]) -> BenchRun:
    """The run described by ``sluice bench``'s arguments; ConfigError when they do not describe one."""
    try:
        input_len = parse_dist(args.input_len, "input")
        output_len = parse_dist(args.output_len, "output")
        api_key = args.api_key or env.get("SLUICE_API_KEY") or env.get("OPENAI_API_KEY")
        tenants = parse_tenants(args.tenants, input_len=input_len, output_len=output_len, api_key=api_key, env=env)
        arrivals = None if args.rate is None else make_arrivals(args.arrival, args.rate, burst_size=args.burst_size)
        requests = args.requests
        if requests is None and args.duration is None:
            requests = DEFAULT_REQUESTS
        concurrency = args.concurrency
        if concurrency is None and args.rate is None:
            concurrency = DEFAULT_CONCURRENCY
        load = LoadSpec(arrivals, concurrency, requests, args.duration, fit_span=args.fit_span,
                        drain_timeout_s=args.drain_timeout, max_failures=args.max_failures)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    shape = RequestShape(args.base_url, args.model, args.endpoint, args.stream, args.ignore_eos, args.timeout)
    settings = {
        "base_url": args.base_url, "model": args.model, "endpoint": args.endpoint, "stream": args.stream,
        "ignore_eos": args.ignore_eos, "rate_per_s": args.rate, "arrival": args.arrival if args.rate else None,
        "burst_size": args.burst_size if args.arrival == "burst" else None, "concurrency": concurrency,
        "fit_span": args.fit_span, "drain_timeout_s": args.drain_timeout, "max_failures": args.max_failures,
        "requests": requests, "duration_s": args.duration, "seed": args.seed, "timeout_s": args.timeout,
        "input_len": input_len.describe(), "output_len": output_len.describe(),
        "tenants": [{"name": t.name, "weight": t.weight, "input_len": t.input_len.describe(),
                     "output_len": t.output_len.describe(), "has_key": t.api_key is not None} for t in tenants],
    }
    return BenchRun(shape, load, tenants, args.seed, args.slo_ttft, args.slo_tpot, settings)


def run_command(args: argparse.Namespace, *, clock: Clock | None = None, env: Mapping[str, str] | None = None) -> int:
    clock = clock or MonotonicClock()
    run = bench_run_from_args(args, os.environ if env is None else env)
    progress = Progress(clock, total=run.load.requests, duration_s=run.load.duration_s,
                        enabled=True if args.progress else None if args.progress is None else False)
    def draining(in_flight: int, timeout_s: float | None) -> None:
        bound = f"at most {timeout_s:g} s (--drain-timeout)" if timeout_s is not None else "until they end"
        progress.note(f"sending stopped: waiting {bound} for the {in_flight} request(s) still in flight")

    record = asyncio.run(run_load(run.shape, run.load, run.tenants, seed=run.seed, clock=clock,
                                  on_result=progress.update, on_drain=draining))
    progress.close()
    if record.stopped_early:
        print(f"sluice bench: stopped early: {record.stopped_early} (--max-failures 0 goes on regardless)",
              file=sys.stderr)
    summary = summarize(record.results, duration_s=record.duration_s, tenants=run.tenants,
                        slo_ttft_s=run.slo_ttft_s, slo_tpot_s=run.slo_tpot_s)
    stamp = datetime.datetime.fromtimestamp(record.started_wall, datetime.UTC)
    out_dir = Path(args.out or f"sluice-bench-{stamp:%Y%m%dT%H%M%SZ}")
    written = write_outputs(out_dir, run, record, summary, started=stamp.isoformat(timespec="seconds"),
                            plots=args.plots)
    print(render(summary))
    print(wall_time_line(record))
    print("\nwrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    return 0 if summary["requests"]["succeeded"] else 1


def wall_time_line(record: RunRecord) -> str:
    """The run's real length, the drain after sending stopped included, and what the drain cut."""
    cut = f"; {record.cut} request(s) cut unfinished" if record.cut else ""
    return (f"wall time               {record.duration_s:.1f} s: {record.duration_s - record.drain_s:.1f} s sending, "
            f"{record.drain_s:.1f} s finishing the requests in flight{cut}")


def write_outputs(out_dir: Path, run: BenchRun, record: RunRecord, summary: dict[str, Any], *, started: str,
                  plots: bool = True) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path, summary_path = out_dir / "results.jsonl", out_dir / "summary.json"
    with results_path.open("w") as f:
        for r in record.results:
            f.write(json.dumps(r.to_json()) + "\n")
    document = {"started": started, "command": " ".join(["sluice", *sys.argv[1:]]) if sys.argv else "",
                "settings": run.settings, "drain_s": record.drain_s, "cut": record.cut,
                "stopped_early": record.stopped_early, **summary}
    summary_path.write_text(json.dumps(document, indent=2) + "\n")
    written = [results_path, summary_path]
    if plots:
        try:
            written += write_plots(record.results, summary, out_dir)
        except ImportError:
            print("no plots: matplotlib is not installed (from the repository: pip install -e '.[bench]')",
                  file=sys.stderr)
    return written
