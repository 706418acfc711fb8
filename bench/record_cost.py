"""What recording one request costs the gateway's CPU, in process, each cut against what it replaced, in one run:

    python -m bench.record_cost              # --requests 100000 --rounds 5

- metrics: ``GatewayMetrics.request_done`` plus the in-flight gauge's inc/dec, with the per-request tallies
  (``telemetry/_tally.py``: plain numbers, handed to Prometheus when /metrics is read) and with every Prometheus
  child updated per request (the tallies bypassed: what the gateway did before);
- access log: ``AccessLog.write`` to a file, batched (``server.access_log_flush_s``, the default 0.2 s) and one
  write per line (``access_log_flush_s: 0``: what the gateway did before);
- the usage ledger's ``add`` (its day worked out once a day, against ``datetime`` per request).

CPU time of this process (``time.process_time``), median of ``--rounds`` (before and after interleaved). A busy
machine inflates every number alike; the differences within one run are what to read. Output: a
markdown table, and bench/results/record_cost.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.harness import command_line, machine, write_result
from sluice.clock import MonotonicClock
from sluice.telemetry import AccessLog, GatewayMetrics, MemoryUsage, RequestRecord, UsageLedger

RESULTS = Path(__file__).resolve().parent / "results" / "record_cost.json"


def records(n: int) -> list[RequestRecord]:
    return [RequestRecord(f"req-{i}", "POST", "/v1/chat/completions", 1.0, status=200, key_id="bench", user="bench",
                          tenant="default", tier="default", model="sluice-sim", replica="http://127.0.0.1:8001",
                          stream=True, queue_wait_s=0.0001, ttft_s=0.002, tokens_in=20, tokens_out=16,
                          duration_s=0.004) for i in range(n)]


def metrics_us(recs: list[RequestRecord], *, tallied: bool) -> float:
    metrics = GatewayMetrics()
    if not tallied:  # every child updated per request, as before the tallies
        tallies: Any = metrics._tallies
        tallies.of = lambda metric, child: child
        tallies.gauge = lambda child: child
    for record in recs[:100]:
        metrics.request_done(record)
    started = time.process_time()
    for record in recs:
        in_flight = metrics.in_flight_for(record.route)
        in_flight.inc()
        in_flight.dec()
        metrics.request_done(record)
    spent = time.process_time() - started
    metrics.render()
    return 1e6 * spent / len(recs)


def access_log_us(recs: list[RequestRecord], *, flush_s: float) -> float:
    async def run() -> float:
        with tempfile.TemporaryDirectory(prefix="sluice-record-cost-") as tmp:
            log = AccessLog.to(str(Path(tmp) / "access.jsonl"), flush_s=flush_s)
            log.start(MonotonicClock())
            started = time.process_time()
            for i, record in enumerate(recs):
                log.write(record)
                if i % 64 == 63:  # the loop turns, as between requests (the batch's tick may come)
                    await asyncio.sleep(0)
            log.close()
            return time.process_time() - started
    return 1e6 * asyncio.run(run()) / len(recs)


def usage_us(recs: list[RequestRecord], *, cached_day: bool) -> float:
    ledger = UsageLedger(MemoryUsage(), MonotonicClock())
    if not cached_day:  # the day worked out per request, as before
        clock = MonotonicClock()

        def today() -> str:
            return dt.datetime.fromtimestamp(clock.wall(), dt.UTC).date().isoformat()

        ledger.today = today  # type: ignore[method-assign]
    started = time.process_time()
    for _ in recs:
        ledger.add("bench", "bench", "default", 20, 16)
    return 1e6 * (time.process_time() - started) / len(recs)


CASES: dict[str, tuple[Callable[[list[RequestRecord]], float], Callable[[list[RequestRecord]], float]]] = {
    "metrics (request_done + in-flight gauge)": (lambda r: metrics_us(r, tallied=False),
                                                 lambda r: metrics_us(r, tallied=True)),
    "access log line (to a file)": (lambda r: access_log_us(r, flush_s=0), lambda r: access_log_us(r, flush_s=0.2)),
    "usage ledger add": (lambda r: usage_us(r, cached_day=False), lambda r: usage_us(r, cached_day=True)),
}


def main() -> int:
    parser = argparse.ArgumentParser(description="CPU per request of recording it: each cut against what it replaced.")
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    recs = records(args.requests)
    rows: dict[str, dict[str, Any]] = {}
    for name, (before, after) in CASES.items():
        runs: list[tuple[float, float]] = [(before(recs), after(recs)) for _ in range(args.rounds)]  # interleaved
        b, a = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        rows[name] = {"before_us": b, "after_us": a, "rounds": runs}
    lines = ["| per request | before µs | after µs | saved µs |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {r['before_us']:.2f} | {r['after_us']:.2f} | {r['before_us'] - r['after_us']:.2f} |"
              for name, r in rows.items()]
    table = "\n".join(lines)
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    write_result(args.output, {"command": command_line(), "machine": machine(), "load_average": load,
                               "settings": {"requests": args.requests, "rounds": args.rounds}, "cases": rows,
                               "table": table})
    print(table)
    print(f"load average during the run: {' '.join(load)}; wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
