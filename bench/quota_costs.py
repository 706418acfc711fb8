"""What a quota decision costs apart from the network, piece by piece: Redis' CPU per call (a PING, an EVALSHA of
``return 1``) and per request (a decision and its settlement, the real script, batched as the gateway batches
them), and the gateway's own Python per request (the limiter and the Redis store, its connection replaced by one
that answers at once: no I/O, no wait).

    python -m bench.quota_costs         # --requests 12000

Redis runs on CPU 0 (``redis-server``, no persistence), this process on CPU 1 when there are two. Redis' CPU is
its process's from /proc. Output: a table, and bench/results/quota_costs.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import re
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench.harness import (
    RESULTS_DIR,
    Processes,
    command_line,
    exit_on_signals,
    git_commit,
    machine,
    process_cpu_s,
    start_redis,
    write_result,
)
from sluice.clock import MonotonicClock
from sluice.config import QuotaSettings, TierSettings
from sluice.identity import Principal
from sluice.quota import Bucket, Lease, LimitInfo, Price, QuotaLimiter, QuotaPolicy, RedisStore

RESULTS = RESULTS_DIR / "quota_costs.json"
WORKERS = 16  # decisions in flight at once: batched as under load


async def redis_per_call(url: str, pid: int, calls: int) -> dict[str, float]:
    """Redis CPU µs per call, one call at a time."""
    client = aioredis.from_url(url)
    keys = [f"{{sluice}}:tier.pro:key=bench:*:k{i}" for i in range(6)]
    sha = await client.script_load("return 1")
    out = {}
    for name, call in (("PING", client.ping), ("EVALSHA of `return 1`, 6 keys",
                                                lambda: client.evalsha(sha, 6, *keys, "x" * 1500))):
        for _ in range(200):
            await call()
        before = process_cpu_s(pid)
        for _ in range(calls):
            await call()
        out[name] = 1e6 * (process_cpu_s(pid) - before) / calls
    await client.aclose()
    return out


def _bucket(kind: str, cost: int) -> Bucket:
    capacity = 10**8 if kind == "requests" else 10**11
    return Bucket(f"{{sluice}}:tier.pro:key=bench:*:{kind}", 60 / capacity, capacity, cost,
                  LimitInfo(kind, "tier pro", capacity, 60.0))  # type: ignore[arg-type]


async def redis_per_request(url: str, pid: int, requests: int) -> tuple[float, float]:
    """Redis CPU µs per request (a decision on two buckets and a permit, then its settlement) and script calls
    per request, ``WORKERS`` at once through the store."""
    store = RedisStore.from_url(url)
    lease = Lease("{sluice}:tier.pro:key=bench:*:concurrent", 4096, 60.0, "key")

    async def worker(n: int) -> None:
        for _ in range(n):
            buckets, rid = [_bucket("requests", 1), _bucket("tokens", 100)], uuid.uuid4().hex
            assert (await store.acquire(buckets, [lease], rid)).allowed
            await store.settle(buckets, [0, -30], [lease], rid)

    await asyncio.gather(*(worker(50) for _ in range(WORKERS)))
    admin = aioredis.from_url(url)
    await admin.config_resetstat()
    before = process_cpu_s(pid)
    await asyncio.gather(*(worker(requests // WORKERS) for _ in range(WORKERS)))
    cpu = process_cpu_s(pid) - before
    calls = int((await admin.info("commandstats")).get("cmdstat_evalsha", {}).get("calls", 0))
    await admin.aclose()
    await store.close()
    done = WORKERS * (requests // WORKERS)
    return 1e6 * cpu / done, calls / done


class _AtOnce:
    """A connection that answers every script call at once (granted, two buckets' states; settled)."""

    closed = False
    _ops = re.compile(rb'\["([AS])"')

    def send(self, command: bytes, answer: Any) -> None:
        answer([[1, -1, -1, 0, [[99, 600, 0], [99, 600, 0]]] if op == b"A" else [1]
                for op in self._ops.findall(command)])


class _Up:
    available = True
    timeout_s = 0.25

    def watch(self, watcher: object) -> None:
        return None


async def gateway_python_per_request(requests: int) -> float:
    """The limiter's and the Redis store's Python per request (reserve, headers, settle), no I/O."""
    clock = MonotonicClock()
    store = RedisStore(_Up(), clock)  # type: ignore[arg-type]
    store._pipe = _AtOnce()  # type: ignore[assignment]
    tiers = {"pro": TierSettings.model_validate({"requests": "100000000/minute", "tokens": "100000000000/minute",
                                                 "concurrent": 4096})}
    limiter = QuotaLimiter(QuotaPolicy(tiers, QuotaSettings.model_validate({})), store, clock)
    principal, price = Principal("bench", "bench", "acme", "pro"), Price(20, 16, 80, 4)

    async def one() -> None:
        reservation = await limiter.reserve(principal, "m", price)
        reservation.header_lines()
        limiter.settle_soon(reservation, 20, 16)

    for _ in range(500):
        await one()
    started = time.perf_counter()
    for _ in range(requests):
        await one()
    elapsed = time.perf_counter() - started
    await limiter.close()
    return 1e6 * elapsed / requests


async def measure(requests: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sluice-quota-costs-") as tmp:
        procs = Processes(Path(tmp))
        try:
            redis, port = start_redis(procs, "0")
            url = f"redis://127.0.0.1:{port}/0"
            per_call = await redis_per_call(url, redis.pid, requests // 2)
            per_request, calls = await redis_per_request(url, redis.pid, requests)
        finally:
            procs.stop_all()
    return {"redis_cpu_us_per_call": per_call, "redis_cpu_us_per_request": per_request,
            "script_calls_per_request": calls, "gateway_python_us_per_request": await gateway_python_per_request(
                requests)}


def table(r: dict[str, Any]) -> str:
    lines = ["| what | µs |", "|---|---:|"]
    lines += [f"| Redis CPU, one {name} | {us:.1f} |" for name, us in r["redis_cpu_us_per_call"].items()]
    calls = r["script_calls_per_request"]
    lines.append(f"| Redis CPU per request: a decision (2 buckets, 1 permit) and its settlement, {WORKERS} at once "
                 f"({calls:.2f} script calls a request) | {r['redis_cpu_us_per_request']:.1f} |")
    lines.append(f"| the gateway's Python per request: limiter and Redis store, no I/O | "
                 f"{r['gateway_python_us_per_request']:.1f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=12000)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    exit_on_signals()
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    result = asyncio.run(measure(args.requests))
    text = table(result)
    write_result(args.output, {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                               "command": command_line(), "commit": git_commit(), "machine": machine(),
                               **result, "table": text})
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
