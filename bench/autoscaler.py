"""What the autoscaler costs the gateway: one ``Autoscaler.check()`` with a full history (the default windows:
121 samples), as a share of one CPU at the default ``check_s``, and ``GatewayMetrics.request_done`` (where the
per-model counts the autoscaler reads are kept) per request. No I/O: the actuator does nothing.

    python -m bench.autoscaler      # --checks 20000 --requests 200000 (a few seconds)

Output: a markdown table on stdout, everything in bench/results/autoscaler.json.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from bench.harness import RESULTS_DIR, command_line, git_commit, machine, write_result
from sluice.clock import FakeClock
from sluice.config import AutoscaleSettings
from sluice.gateway.autoscale import Autoscaler, Decision, Signals
from sluice.telemetry import GatewayMetrics
from sluice.telemetry._record import RequestRecord


class _Idle:
    kind = "idle"

    def replicas(self) -> None:
        return None

    async def scale_to(self, decision: Decision) -> None:
        return None


async def check_us(checks: int, settings: AutoscaleSettings) -> float:
    clock = FakeClock()
    answered = [0]
    scaler = Autoscaler("m", settings, Signals(lambda: (answered[0], 0), lambda: 0.6, lambda: 2), _Idle(), clock)
    for _ in range(200):  # a full history first
        clock.advance(settings.check_s)
        answered[0] += 10
        await scaler.check()
    start = time.perf_counter()
    for _ in range(checks):
        clock.advance(settings.check_s)
        answered[0] += 10
        await scaler.check()
    return (time.perf_counter() - start) / checks * 1e6


def request_done_us(requests: int) -> float:
    metrics = GatewayMetrics()
    record = RequestRecord("r", "POST", "/v1/chat/completions", 0.0, status=503, reason="queue_timeout", model="m",
                           duration_s=0.1)
    for _ in range(1000):
        metrics.request_done(record)
    start = time.perf_counter()
    for _ in range(requests):
        metrics.request_done(record)
    return (time.perf_counter() - start) / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checks", type=int, default=20000)
    parser.add_argument("--requests", type=int, default=200000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    settings = AutoscaleSettings(actuator="launcher")
    checks = [asyncio.run(check_us(args.checks, settings)) for _ in range(args.rounds)]
    requests = [request_done_us(args.requests) for _ in range(args.rounds)]
    summary: dict[str, Any] = {
        "check_us": statistics.median(checks),
        "cpu_share_at_check_s": statistics.median(checks) / 1e6 / settings.check_s,
        "request_done_us": statistics.median(requests),
    }
    print(f"`{command_line()}` at {git_commit()}\n")
    print("| what | median |\n|---|---|")
    print(f"| `check()` with a full history | {summary['check_us']:.1f} µs |")
    print(f"| share of one CPU at check_s {settings.check_s:g} | {summary['cpu_share_at_check_s']:.6%} |")
    print(f"| `request_done()` per request | {summary['request_done_us']:.2f} µs |")
    write_result(RESULTS_DIR / "autoscaler.json", {"command": command_line(), "commit": git_commit(),
                                                    "machine": machine(), "check_us": checks,
                                                    "request_done_us": requests, "summary": summary})


if __name__ == "__main__":
    main()
