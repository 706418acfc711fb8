"""Which ``quota.store_timeout_s`` keeps the limits exact on CPU-loaded gateways? Measured, not guessed.

For each store timeout tried (the default first), one command starts a ``redis-server --save ''``, a simulator
(``sluice sim``) and four ``sluice serve`` gateways on one shared Redis, all on this machine's CPUs with nothing
pinned. The gateways run the configuration a user gets: no ``quota`` section at all (so with Redis counted as down
each gateway would admit a burst's full capacity from its own local bucket), only ``quota.store_timeout_s``
changed when a non-default value is tried. While every gateway is kept busy by a background load (``--load``
concurrent requests per gateway, another key, limits far above what it spends), the benchmark sends ``--rounds``
bursts: ``--burst`` concurrent requests on a key of their own whose bucket holds ``--capacity`` (a fresh key per
round), spread round-robin over the four gateways, and counts how many are admitted. Exact is ``capacity``.

Each gateway measures its own state-store calls, as it sees them: the benchmark runs the gateways through a small
wrapper (``--serve``) that times every ``StoreDeadline`` (each Redis call of the state layer, quota decisions
included) on the gateway's event loop, less the time spent opening a connection (which the deadline does not
judge), and records how often its timer fired late (the loop was busy, which the deadline does not count either).
The gateways' ``sluice_quota_store_degraded_events_total`` counts the times a gateway went to degraded mode.

    python -m bench.store_timeout  # --timeouts default,0.02,0.05,0.1,0.5 --rounds 5 --burst 24 --capacity 12 --load 16

Output: a markdown table on stdout; everything in bench/results/store_timeout.json. Every process started here is
stopped by PID at the end (also on error or SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.harness import (
    Processes,
    command_line,
    exit_on_signals,
    free_port,
    machine,
    wait_port,
    wait_until_up,
    write_result,
)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "store_timeout.json"
MODEL = "m"
ALL_CPUS = ",".join(str(c) for c in range(os.cpu_count() or 1))


# ---------------------------------------------------------------------------------------------- the gateway wrapper


def serve_measured(config: str, port: str, out: str) -> int:
    """``sluice serve``, with every state-store deadline timed: (seconds on the loop's clock, late timer re-armed)."""
    import sluice.state as state
    from sluice.cli import main as sluice_main

    samples: list[tuple[float, int]] = []
    enter, leave, connecting = (state.StoreDeadline.__aenter__, state.StoreDeadline.__aexit__,
                                state.StoreDeadline.connecting)

    async def timed_enter(self: Any) -> Any:
        self._bench_started, self._bench_connecting_s = asyncio.get_running_loop().time(), 0.0
        return await enter(self)

    async def timed_exit(self: Any, *exc: Any) -> None:  # the call's time, less opening a connection (not judged)
        elapsed_s = asyncio.get_running_loop().time() - self._bench_started - self._bench_connecting_s
        samples.append((elapsed_s, self.extensions))
        await leave(self, *exc)

    @contextlib.asynccontextmanager
    async def timed_connecting(self: Any, budget_s: float) -> Any:
        started = asyncio.get_running_loop().time()
        try:
            async with connecting(self, budget_s):
                yield
        finally:
            self._bench_connecting_s += asyncio.get_running_loop().time() - started

    def write_and_exit(signum: int, frame: Any) -> None:  # uvicorn raises SIGTERM again once it has shut down
        Path(out).write_text(json.dumps(samples))
        sys.exit(0)

    state.StoreDeadline.__aenter__ = timed_enter  # type: ignore[method-assign]
    state.StoreDeadline.__aexit__ = timed_exit  # type: ignore[method-assign, assignment]
    state.StoreDeadline.connecting = timed_connecting  # type: ignore[method-assign]
    signal.signal(signal.SIGTERM, write_and_exit)
    return sluice_main(["serve", "--config", config, "--port", port])


# ---------------------------------------------------------------------------------------------- the run


def main() -> int:
    parser = argparse.ArgumentParser(description="Store timeout vs exactness on four CPU-loaded gateways.")
    parser.add_argument("--serve", nargs=3, metavar=("CONFIG", "PORT", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--timeouts", default="default,0.02,0.05,0.1,0.5",
                        help="store timeouts to try, seconds; 'default' = no quota section (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=5, help="bursts per timeout (default 5)")
    parser.add_argument("--burst", type=int, default=24, help="concurrent requests per burst (default 24)")
    parser.add_argument("--capacity", type=int, default=12, help="the burst key's bucket capacity (default 12)")
    parser.add_argument("--load", type=int, default=16, help="background concurrent requests per gateway (default 16)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before the first burst (default 2)")
    parser.add_argument("--gap", type=float, default=1.0, help="seconds of load between bursts (default 1)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.serve:
        return serve_measured(*args.serve)

    redis_server = shutil.which("redis-server")
    if redis_server is None:
        print("needs redis-server: apt-get install -y redis-server", file=sys.stderr)
        return 2
    exit_on_signals()
    runs = []
    for timeout in args.timeouts.split(","):
        with tempfile.TemporaryDirectory(prefix="sluice-store-timeout-") as tmp:
            procs = Processes(Path(tmp))
            try:
                runs.append(one_timeout(args, None if timeout == "default" else float(timeout), Path(tmp), procs,
                                        redis_server))
            finally:
                procs.stop_all()
        print(row(runs[-1]), file=sys.stderr)
    result = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command_line(),
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("serve", "output")},
        "runs": runs,
    }
    write_result(args.output, result, indent=1)
    print(markdown(runs))
    return 0


def one_timeout(args: argparse.Namespace, timeout_s: float | None, workdir: Path, procs: Any,
                redis_server: str) -> dict[str, Any]:
    import yaml

    from sluice.config import QuotaSettings
    from sluice.identity import hash_key

    redis_port, sim_port = free_port(), free_port()
    redis_proc = procs.start("redis", ALL_CPUS, [redis_server, "--port", str(redis_port), "--bind", "127.0.0.1",
                                                 "--save", "", "--appendonly", "no", "--dir", str(workdir)])
    wait_port(redis_proc, redis_port)
    sim = procs.start("sim", ALL_CPUS, [sys.executable, "-m", "sluice.cli", "sim", "--model", MODEL, "--port",
                                        str(sim_port), "--speed", "1e6", "--max-num-seqs", "1024"])
    wait_until_up(sim, f"http://127.0.0.1:{sim_port}/health")
    keys = {"load": "sk-sluice-bench-load-0123456789"} | {
        f"burst{i}": f"sk-sluice-bench-burst{i}-0123456789" for i in range(args.rounds)}
    config: dict[str, Any] = {
        "state": f"redis://127.0.0.1:{redis_port}/0",
        "server": {"access_log": False},
        "models": [{"name": MODEL, "engine": {"urls": [f"http://127.0.0.1:{sim_port}"]}}],
        "tiers": {"load": {"requests": "100000000/minute", "tokens": "10000000000/minute", "concurrent": 100000},
                  # capacity, then one request an hour: a burst admits exactly the capacity
                  "burst": {"requests": {"rate": "1/hour", "burst": args.capacity}}},
        "keys": [{"id": name, "hash": hash_key(key), "tier": "load" if name == "load" else "burst"}
                 for name, key in keys.items()],
    }
    if timeout_s is not None:
        config["quota"] = {"store_timeout_s": timeout_s}
    path = workdir / "sluice.yaml"
    path.write_text(yaml.safe_dump(config))
    gateways = []
    for i in range(4):
        port = free_port()
        proc = procs.start(f"gateway{i}", ALL_CPUS, [sys.executable, "-m", "bench.store_timeout", "--serve",
                                                     str(path), str(port), str(workdir / f"deadlines{i}.json")])
        gateways.append((proc, f"http://127.0.0.1:{port}"))
    for proc, url in gateways:
        wait_until_up(proc, url + "/health")
    bursts = asyncio.run(load_and_bursts(args, [url for _, url in gateways], keys))
    degraded = [metric(url, "sluice_quota_store_degraded_events_total") for _, url in gateways]
    for proc, _ in gateways:  # stopped first (SIGTERM): each writes its deadline samples as it exits
        proc.popen.send_signal(signal.SIGTERM)
    for proc, _ in gateways:
        proc.popen.wait(timeout=30)
    samples = [s for i in range(4) for s in json.loads((workdir / f"deadlines{i}.json").read_text())]
    seconds = sorted(s for s, _ in samples)
    return {
        "store_timeout_s": timeout_s if timeout_s is not None else QuotaSettings.model_validate({}).store_timeout_s,
        "default": timeout_s is None,
        "admitted": [b["admitted"] for b in bursts],
        "capacity": args.capacity,
        "bursts": bursts,
        "degraded_events": degraded,
        "calls": len(seconds),
        "late_timer_calls": sum(1 for _, extensions in samples if extensions),
        "latency_ms": {f"p{q}": 1000 * quantile(seconds, q / 100) for q in (50, 90, 99, 99.9)} | {
            "max": 1000 * seconds[-1] if seconds else 0.0},
        "calls_over_ms": {str(ms): sum(1 for s in seconds if s > ms / 1000) for ms in (10, 20, 50, 100, 250)},
    }


async def load_and_bursts(args: argparse.Namespace, urls: list[str], keys: dict[str, str]) -> list[dict[str, Any]]:
    import aiohttp

    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "ignore_eos": True}
    stop = asyncio.Event()
    served = [0]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        async def post(url: str, key: str) -> int:
            async with http.post(url + "/v1/chat/completions", json=body,
                                 headers={"authorization": f"Bearer {key}"}) as r:
                await r.read()
                return r.status

        async def loader(url: str) -> None:
            while not stop.is_set():
                if await post(url, keys["load"]) == 200:
                    served[0] += 1

        loaders = [asyncio.create_task(loader(url)) for url in urls for _ in range(args.load)]
        bursts = []
        try:
            await asyncio.sleep(args.warmup)
            for i in range(args.rounds):
                before, t0 = served[0], time.monotonic()
                statuses = await asyncio.gather(*(post(urls[j % len(urls)], keys[f"burst{i}"])
                                                  for j in range(args.burst)))
                bursts.append({"admitted": statuses.count(200), "refused": statuses.count(429),
                               "other": len(statuses) - statuses.count(200) - statuses.count(429)})
                await asyncio.sleep(args.gap)
                bursts[-1]["load_rps"] = round((served[0] - before) / (time.monotonic() - t0))
        finally:
            stop.set()
            await asyncio.gather(*loaders, return_exceptions=True)
    return bursts


def metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    return values[min(len(values) - 1, int(q * len(values)))]


def row(run: dict[str, Any]) -> str:
    lat = run["latency_ms"]
    label = f"{run['store_timeout_s'] * 1000:g} ms" + (" (default)" if run["default"] else "")
    return (f"| {label} | {', '.join(map(str, run['admitted']))} (exact: {run['capacity']}) "
            f"| {max(run['admitted']) - run['capacity']:+d} | {int(sum(run['degraded_events']))} "
            f"| {lat['p50']:.1f} / {lat['p99']:.1f} / {lat['p99.9']:.1f} / {lat['max']:.1f} "
            f"| {run['calls_over_ms']['20']} / {run['calls_over_ms']['50']} / {run['calls_over_ms']['100']} "
            f"/ {run['calls_over_ms']['250']} of {run['calls']} | {run['late_timer_calls']} "
            f"| {statistics.median(b['load_rps'] for b in run['bursts'])} |")


def markdown(runs: list[dict[str, Any]]) -> str:
    head = ("| store_timeout_s | admitted per burst | worst overshoot | degraded episodes (4 gateways) "
            "| store call ms p50 / p99 / p99.9 / max | calls over 20 / 50 / 100 / 250 ms | late timers "
            "| load req/s |\n|---|---|---:|---:|---|---|---:|---:|")
    return "\n".join([head, *(row(r) for r in runs)])


if __name__ == "__main__":
    sys.exit(main())
