"""A soak run: steady load through one gateway for a long time, watching its memory (RSS) for growth.

    python -m bench.soak                     # --duration 1800 --warmup 300 --rate 75 --sample-every 10

Processes, on 127.0.0.1 and free ports, unpinned: ``redis-server`` (when on PATH; else state stays memory://),
the engine simulator (``sluice sim``, real time), and ``sluice serve`` as deployed: API keys (8 keys, 4 tenants, 2
tiers), per-key quotas on requests, tokens and concurrency (generous: nothing is refused for quota at this load),
admission on with the engines' load watched, engines given by URL (their KV capacity unknown to the gateway), the
access log on (to a file). This process sends chat completions at a constant --rate (open loop; half streamed,
max_tokens 8-32), and samples the gateway's RSS (and Redis's used memory) every --sample-every seconds.

Reported: RSS at the end of the warm-up and at the end, its growth, the requests answered in between, and bytes
per request two ways: growth / requests, and the least-squares slope of RSS against requests answered over every
sample after the warm-up (less sensitive to where the two end samples happen to fall). Each sample is appended to
--samples as it is taken (JSON lines), so a run can be followed while it goes; the summary goes to --output.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime
import itertools
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.harness import (
    ANY_CPU,
    MODEL,
    Processes,
    command_line,
    exit_on_signals,
    free_port,
    machine,
    rss_bytes,
    wait_port,
    wait_until_up,
    write_result,
)
from sluice.identity import generate_key, hash_key

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "soak.json"
SAMPLES = HERE / "results" / "soak_samples.jsonl"
KEYS = 8
MAX_IN_FLIGHT = 2000  # the load generator's own bound, should the gateway stall


def gateway_yaml(port: int, sim_url: str, state: str, keys: list[str], access_log: Path) -> str:
    lines = [
        f"server: {{host: 127.0.0.1, port: {port}, access_log_path: '{access_log}'}}",
        f"state: {state}",
        "auth: {mode: api_key}",
        "models:",
        f"  - name: {MODEL}",
        f"    engine: {{dialect: vllm, urls: ['{sim_url}']}}",
        "tiers:",
        "  pro: {priority: 10, requests: '100000/minute', tokens: '100000000/minute', concurrent: 256}",
        "  free: {priority: 0, requests: '100000/minute', tokens: '100000000/minute', concurrent: 256}",
        "keys:",
    ]
    for i, key in enumerate(keys):
        tier = "pro" if i % 2 == 0 else "free"
        lines.append(f"  - {{id: soak-{i}, hash: '{hash_key(key)}', tenant: tenant-{i % 4}, tier: {tier}}}")
    return "\n".join(lines) + "\n"


class Load:
    """Requests at a constant rate, answered or not, counted by outcome."""

    def __init__(self, url: str, keys: list[str], rate: float) -> None:
        self.url = url + "/v1/chat/completions"
        self.keys = keys
        self.rate = rate
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.answered = 0
        self.in_flight = 0

    async def run(self, http: aiohttp.ClientSession, stop_at: float) -> None:
        started = time.monotonic()
        tasks: set[asyncio.Task[None]] = set()
        for n in itertools.count():
            due = started + n / self.rate
            now = time.monotonic()
            if due >= stop_at:
                break
            if due > now:
                await asyncio.sleep(due - now)
            if self.in_flight >= MAX_IN_FLIGHT:
                self.outcomes["skipped_client_bound"] += 1
                continue
            task = asyncio.create_task(self.one(http, n))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks, return_exceptions=True)

    async def one(self, http: aiohttp.ClientSession, n: int) -> None:
        stream = n % 2 == 0
        body = {"model": MODEL, "messages": [{"role": "user", "content": f"Question {n % 97}: tell me something."}],
                "max_tokens": 8 + n % 25, "ignore_eos": True, "stream": stream}
        headers = {"Authorization": f"Bearer {self.keys[n % len(self.keys)]}"}
        self.in_flight += 1
        try:
            async with http.post(self.url, json=body, headers=headers) as resp:
                data = await resp.read()
                ok = resp.status == 200 and (not stream or data.rstrip().endswith(b"data: [DONE]"))
                self.outcomes["200" if ok else f"{resp.status}:{resp.headers.get('x-sluice-reason', '')}"] += 1
        except Exception as exc:  # noqa: BLE001 - a failure is a result, counted
            self.outcomes[type(exc).__name__] += 1
        finally:
            self.in_flight -= 1
            self.answered += 1


async def soak(args: argparse.Namespace, url: str, keys: list[str], gateway_pid: int,
               redis_port: int | None) -> list[dict[str, Any]]:
    load = Load(url, keys, args.rate)
    samples: list[dict[str, Any]] = []
    started = time.monotonic()
    redis_client = None
    if redis_port is not None:
        import redis.asyncio as aioredis

        redis_client = aioredis.Redis(port=redis_port)

    async def sample_forever(http: aiohttp.ClientSession) -> None:
        with open(args.samples, "a") as out:
            while True:
                sample = {"t_s": round(time.monotonic() - started, 1), "rss": rss_bytes(gateway_pid),
                          "answered": load.answered, "in_flight": load.in_flight, "outcomes": dict(load.outcomes),
                          "quota_degraded_events": await degraded_events(http, url)}
                if redis_client is not None:
                    info = await redis_client.info("memory")
                    sample["redis_used_memory"] = info["used_memory"]
                    sample["redis_keys"] = await redis_client.dbsize()
                samples.append(sample)
                out.write(json.dumps(sample) + "\n")
                out.flush()
                await asyncio.sleep(args.sample_every)

    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as http:
        sampler = asyncio.create_task(sample_forever(http))
        try:
            await load.run(http, started + args.duration)
        finally:
            sampler.cancel()
    await asyncio.sleep(1)
    samples.append({"t_s": round(time.monotonic() - started, 1), "rss": rss_bytes(gateway_pid),
                    "answered": load.answered, "in_flight": load.in_flight, "outcomes": dict(load.outcomes)})
    if redis_client is not None:
        samples[-1]["redis_used_memory"] = (await redis_client.info("memory"))["used_memory"]
        await redis_client.aclose()
    return samples


async def degraded_events(http: aiohttp.ClientSession, url: str) -> float | None:
    """Times the gateway's quota store counted as down so far (its fail-open mode holds memory of its own)."""
    try:
        async with http.get(url + "/metrics") as resp:
            text = await resp.text()
    except aiohttp.ClientError:
        return None
    for line in text.splitlines():
        if line.startswith("sluice_quota_store_degraded_events_total "):
            return float(line.split()[1])
    return None


def summary(samples: list[dict[str, Any]], warmup_s: float) -> dict[str, Any]:
    after = [s for s in samples if s["t_s"] >= warmup_s]
    if len(after) < 2:
        raise RuntimeError("the run ended before its warm-up: nothing to report")
    first, last = after[0], after[-1]
    requests = last["answered"] - first["answered"]
    growth = last["rss"] - first["rss"]
    xs = [s["answered"] for s in after]
    ys = [s["rss"] for s in after]
    slope = statistics.linear_regression(xs, ys).slope if len(set(xs)) > 1 else 0.0
    result = {
        "warmup_s": warmup_s, "measured_s": round(last["t_s"] - first["t_s"], 1), "requests": requests,
        "rss_start": samples[0]["rss"], "rss_at_warmup": first["rss"], "rss_end": last["rss"],
        "rss_max": max(ys), "rss_growth": growth, "bytes_per_request": round(growth / max(1, requests), 2),
        "slope_bytes_per_request": round(slope, 2), "outcomes": last["outcomes"],
        "quota_degraded_events": [first.get("quota_degraded_events"), after[-2].get("quota_degraded_events")],
    }
    if "redis_used_memory" in first:
        result["redis_growth"] = last["redis_used_memory"] - first["redis_used_memory"]
        result["redis_keys"] = [first.get("redis_keys"), after[-2].get("redis_keys")]
    return result


def table(s: dict[str, Any]) -> str:
    mb = 1024 * 1024
    lines = ["| measured | requests | RSS after warm-up | RSS at the end | max | growth | bytes/request | "
             "slope (bytes/request) |", "|---|---:|---:|---:|---:|---:|---:|---:|",
             f"| {s['measured_s'] / 60:.1f} min, after {s['warmup_s'] / 60:g} min of warm-up | {s['requests']} | "
             f"{s['rss_at_warmup'] / mb:.1f} MiB | {s['rss_end'] / mb:.1f} MiB | {s['rss_max'] / mb:.1f} MiB | "
             f"{s['rss_growth'] / mb:+.2f} MiB | {s['bytes_per_request']:.1f} | {s['slope_bytes_per_request']:.1f} |"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=1800.0, help="seconds of load (default 1800: 30 min)")
    parser.add_argument("--warmup", type=float, default=300.0, help="seconds before growth is measured (default 300)")
    parser.add_argument("--rate", type=float, default=75.0, help="requests per second (default 75)")
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds between RSS samples (default 10)")
    parser.add_argument("--no-redis", action="store_true", help="state memory:// even if redis-server is on PATH")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--samples", type=Path, default=SAMPLES)
    args = parser.parse_args()
    exit_on_signals()
    args.samples.parent.mkdir(parents=True, exist_ok=True)
    args.samples.write_text("")
    keys = [generate_key() for _ in range(KEYS)]
    redis_server = None if args.no_redis else shutil.which("redis-server")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sluice-soak-") as tmp:
        workdir = Path(tmp)
        procs = Processes(workdir)
        try:
            state, redis_port = "memory://", None
            if redis_server is not None:
                redis_port = free_port()
                redis_proc = procs.start("redis", ANY_CPU, [redis_server, "--port", str(redis_port), "--bind",
                                                            "127.0.0.1", "--save", "", "--appendonly", "no",
                                                            "--dir", str(workdir)])
                wait_port(redis_proc, redis_port)
                state = f"redis://127.0.0.1:{redis_port}/0"
            sim_port = free_port()
            sim = procs.start("sim", ANY_CPU, [sys.executable, "-m", "sluice.cli", "sim", "--model", MODEL,
                                               "--port", str(sim_port), "--max-num-seqs", "256"])
            sim_url = f"http://127.0.0.1:{sim_port}"
            wait_until_up(sim, sim_url + "/health")
            port = free_port()
            config = workdir / "sluice.yaml"
            config.write_text(gateway_yaml(port, sim_url, state, keys, workdir / "access.log"))
            gateway = procs.start("gateway", ANY_CPU, [sys.executable, "-m", "sluice.cli", "serve", "--config",
                                                       str(config)])
            url = f"http://127.0.0.1:{port}"
            wait_until_up(gateway, url + "/health")
            print(f"soak: gateway pid {gateway.pid}, state {state}, {args.rate:g} req/s for {args.duration:g} s; "
                  f"samples in {args.samples}", flush=True)
            samples = asyncio.run(soak(args, url, keys, gateway.pid, redis_port))
        finally:
            procs.stop_all()
    measured = summary(samples, args.warmup)
    result = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command_line(),
        "wall_s": round(time.monotonic() - started, 1),
        "machine": machine(),
        "settings": {"duration_s": args.duration, "warmup_s": args.warmup, "rate": args.rate, "state": state,
                     "sample_every_s": args.sample_every, "keys": KEYS},
        "summary": measured,
        "table": table(measured),
    }
    write_result(args.output, result)
    print(result["table"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
