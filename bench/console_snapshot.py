"""What the console costs the gateway: its snapshot (``GET /console/api/snapshot``, composed from the pools, the
replica sets and the traffic window) and the traffic window's per-request bookkeeping, in process; then the
gateway's overhead run (wrk, non-streamed chat completions, as ``bench.overhead``) with and without a console
polling the snapshot every second, interleaved rounds.

    python -m bench.console_snapshot        # --snapshots 2000 --requests 200000 --duration 5 --rounds 3

Processes (end-to-end part), on 127.0.0.1 and free ports: ``sluice sim --speed 1e9`` and wrk on CPU 0,
``sluice serve`` alone on CPU 1, the console's poller (this process: log in, then one snapshot a second, as the
page does) unpinned. Output: markdown on stdout, everything in bench/results/console_snapshot.json.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bench.harness import (
    MODEL,
    RESULTS_DIR,
    WRK_LUA,
    Processes,
    command_line,
    exit_on_signals,
    free_port,
    git_commit,
    machine,
    preflight,
    request_body,
    run_wrk,
    wait_until_up,
    write_result,
)
from sluice.console._snapshot import compose_snapshot
from sluice.identity import generate_key, hash_key
from sluice.telemetry import GatewayMetrics
from sluice.telemetry._record import RequestRecord

PROXY_CPU, LOAD_CPU = "1", "0"
GROUPS = 50  # (tier, tenant) pairs active every second of the window


def _records(second: int) -> list[RequestRecord]:
    return [RequestRecord(f"r{second}-{g}", "POST", "/v1/chat/completions", float(second), status=429 if g % 7 == 0
                          else 200, reason="quota_requests" if g % 7 == 0 else None, key_id=f"k{g}",
                          tenant=f"t{g}", tier=f"tier{g % 3}", model="m", tokens_in=100, tokens_out=20,
                          duration_s=0.5) for g in range(GROUPS)]


def snapshot_us(snapshots: int) -> tuple[float, int]:
    """One snapshot with a full window (300 s x GROUPS groups, refusals): µs each, and its size in bytes."""
    import orjson

    metrics = GatewayMetrics()
    for second in range(1000, 1300):
        for record in _records(second):
            metrics.request_done(record)
    replicas = SimpleNamespace(snapshot=lambda: {"version": 1, "replicas": [], "cordoned": [], "details": {}})
    service = SimpleNamespace(routes={"m": SimpleNamespace(gate=None, pool=SimpleNamespace(replicas=replicas))},
                              limiter=SimpleNamespace(policy=SimpleNamespace(tiers={})))
    size = len(orjson.dumps(compose_snapshot(service, metrics, 1300.0)))
    start = time.perf_counter()
    for _ in range(snapshots):
        orjson.dumps(compose_snapshot(service, metrics, 1300.0))
    return (time.perf_counter() - start) / snapshots * 1e6, size


def request_done_us(requests: int, *, traffic: bool) -> float:
    metrics = GatewayMetrics()
    if not traffic:
        metrics.traffic.record = lambda record: None  # type: ignore[method-assign]
    record = _records(5)[1]
    for _ in range(1000):
        metrics.request_done(record)
    start = time.perf_counter()
    for _ in range(requests):
        metrics.request_done(record)
    return (time.perf_counter() - start) / requests * 1e6


class Poller:
    """The console's page, as far as the gateway sees it: logged in, one snapshot a second."""

    def __init__(self, base: str, admin_key: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
        body = urllib.parse.urlencode({"key": admin_key}).encode()
        page = self.opener.open(base + "/console/login", data=body, timeout=10).read().decode()
        match = re.search(r'name="sluice-csrf" content="([^"]+)"', page)
        if match is None:
            raise RuntimeError("the console did not log in")
        self.csrf = match.group(1)
        self.stop = threading.Event()
        self.polls = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(1.0):
            request = urllib.request.Request(self.base + "/console/api/snapshot", headers={"x-sluice-csrf": self.csrf})
            self.opener.open(request, timeout=10).read()
            self.polls += 1


def end_to_end(args: argparse.Namespace, wrk: str, workdir: Path, procs: Processes) -> dict[str, Any]:
    key, admin_key = generate_key(), generate_key()
    sim_port, sluice_port = free_port(), free_port()
    sim_url, base = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{sluice_port}"
    config = workdir / "sluice.yaml"
    config.write_text(
        f"server: {{host: 127.0.0.1, port: {sluice_port}}}\n"
        f"auth: {{mode: api_key, admin_key_hash: '{hash_key(admin_key)}'}}\n"
        f"models:\n  - name: {MODEL}\n    engine: {{dialect: vllm, urls: ['{sim_url}']}}\n"
        f"keys:\n  - {{id: bench, hash: '{hash_key(key)}', tenant: default, tier: default}}\n")
    sim = procs.start("sim", LOAD_CPU, [sys.executable, "-m", "sluice.cli", "sim", "--model", MODEL, "--host",
                                        "127.0.0.1", "--port", str(sim_port), "--speed", "1e9",
                                        "--output-len-min", "16", "--output-len-max", "16"])
    gateway = procs.start("sluice", PROXY_CPU, [sys.executable, "-m", "sluice.cli", "serve", "--config", str(config)])
    wait_until_up(sim, sim_url + "/health")
    wait_until_up(gateway, base + "/health")
    preflight(base, key, False, 16)
    script = workdir / "full.lua"
    script.write_text(WRK_LUA.format(body=request_body(False, 16), key=key))
    runs: dict[str, list[dict[str, Any]]] = {"without": [], "with": []}
    for round_ in range(args.rounds):
        for mode in (("without", "with") if round_ % 2 == 0 else ("with", "without")):
            run_wrk(wrk, base + "/v1/chat/completions", script, 64, 1)  # warm-up
            poller = Poller(base, admin_key) if mode == "with" else None
            if poller is not None:
                poller.thread.start()
            cpu0, t0 = gateway.cpu_s(), time.monotonic()
            result = run_wrk(wrk, base + "/v1/chat/completions", script, 64, args.duration)
            cpu_s = gateway.cpu_s() - cpu0
            result["gateway_cpu_ms_per_request"] = 1e3 * cpu_s / max(1, result["requests"])
            result["elapsed_s"] = time.monotonic() - t0
            if poller is not None:
                poller.stop.set()
                poller.thread.join()
                result["polls"] = poller.polls
            runs[mode].append(result)
            print(f"[round {round_} {mode} console] {result['rps']:.0f} req/s, p50 {result['p50_us'] / 1e3:.2f} ms, "
                  f"{result['gateway_cpu_ms_per_request']:.3f} CPU ms/request", file=sys.stderr)
    return {mode: {"rps": statistics.median(r["rps"] for r in rounds),
                   "p50_ms": statistics.median(r["p50_us"] for r in rounds) / 1e3,
                   "p99_ms": statistics.median(r["p99_us"] for r in rounds) / 1e3,
                   "cpu_ms_per_request": statistics.median(r["gateway_cpu_ms_per_request"] for r in rounds),
                   "errors": sum(r["errors"] for r in rounds), "runs": rounds}
            for mode, rounds in runs.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--snapshots", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=200000)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    wrk = shutil.which("wrk")
    if wrk is None or shutil.which("taskset") is None:
        print("needs wrk (apt-get install -y wrk) and taskset", file=sys.stderr)
        return 2
    exit_on_signals()
    snapshot = [snapshot_us(args.snapshots) for _ in range(args.rounds)]
    with_traffic = [request_done_us(args.requests, traffic=True) for _ in range(args.rounds)]
    without_traffic = [request_done_us(args.requests, traffic=False) for _ in range(args.rounds)]
    with tempfile.TemporaryDirectory(prefix="sluice-console-") as tmp:
        procs = Processes(Path(tmp))
        try:
            e2e = end_to_end(args, wrk, Path(tmp), procs)
        finally:
            procs.stop_all()
    summary = {"snapshot_us": statistics.median(s[0] for s in snapshot), "snapshot_bytes": snapshot[0][1],
               "request_done_us_with_traffic": statistics.median(with_traffic),
               "request_done_us_without_traffic": statistics.median(without_traffic)}
    print(f"`{command_line()}` at {git_commit()}\n")
    print("| what | median |\n|---|---|")
    print(f"| one snapshot, full window ({GROUPS} tier/tenant groups x 300 s), composed + JSON | "
          f"{summary['snapshot_us']:.0f} µs ({summary['snapshot_bytes']} bytes) |")
    print(f"| `request_done()` per request, traffic window on / off | {summary['request_done_us_with_traffic']:.2f} / "
          f"{summary['request_done_us_without_traffic']:.2f} µs |")
    print("\n| console | req/s | p50 ms | p99 ms | gateway CPU ms/request | errors |\n|---|---:|---:|---:|---:|---:|")
    for mode in ("without", "with"):
        e = e2e[mode]
        print(f"| {mode} (polling 1/s) | {e['rps']:.0f} | {e['p50_ms']:.2f} | {e['p99_ms']:.2f} | "
              f"{e['cpu_ms_per_request']:.3f} | {e['errors']} |")
    write_result(RESULTS_DIR / "console_snapshot.json", {
        "command": command_line(), "commit": git_commit(), "machine": machine(wrk=True), "summary": summary,
        "snapshot": snapshot, "request_done_us": {"with": with_traffic, "without": without_traffic},
        "end_to_end": e2e})
    return 0


if __name__ == "__main__":
    sys.exit(main())
