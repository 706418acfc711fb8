"""Which upstream client should the gateway use? Sluice's own (engines/_http_client.py) vs aiohttp vs httpx, as a
proxy uses them.

One process, one run, the same simulator (a subprocess, ``sluice sim --speed 1e9``): N POSTs to
/v1/chat/completions sequentially, then N with --concurrency of them in flight, through one pooled
``UpstreamClient`` (the gateway's), one pooled ``aiohttp.ClientSession`` and one pooled ``httpx.AsyncClient``, each
non-streamed (body read whole) and streamed (body read chunk by chunk, as the gateway relays SSE). The clients
alternate within every round, and the median of the rounds is reported: requests/s, and this process's CPU time
per request (``time.process_time``: the client's whole cost, the simulator being another process). The client runs
on uvloop, as the gateway does; with 2+ CPUs the simulator is pinned to CPU 0 and this process to CPU 1.

    python -m bench.upstream_client          # --requests 2000 --concurrency 64 --rounds 3

Prints a markdown table; writes bench/results/upstream_client.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import httpx

from bench.harness import MODEL, command_line, exit_on_signals, free_port, machine, request_body, write_result
from sluice.engines._http_client import UpstreamClient

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "upstream_client.json"
CLIENTS = ("sluice", "aiohttp", "httpx")
MODES = ("sequential", "concurrent")


def body(stream: bool, max_tokens: int) -> bytes:
    return request_body(stream, max_tokens).encode()


Post = Callable[[bytes, bool], Awaitable[int]]  # (body, stream) -> bytes received


def sluice_post(client: UpstreamClient, base_url: str, path: str) -> Post:
    headers = {"content-type": "application/json"}

    async def post(data: bytes, stream: bool) -> int:
        resp = await client.request("POST", base_url, path, data, headers)
        try:
            if resp.status != 200:
                raise RuntimeError(f"sluice: HTTP {resp.status}")
            if not stream:
                return len(await resp.read())
            received = 0
            while (chunk := await resp.next_chunk()) is not None:
                received += len(chunk)
            return received
        finally:
            resp.close()

    return post


def aiohttp_post(session: aiohttp.ClientSession, url: str) -> Post:
    headers = {"content-type": "application/json"}

    async def post(data: bytes, stream: bool) -> int:
        async with session.post(url, data=data, headers=headers) as resp:
            if resp.status != 200:
                raise RuntimeError(f"aiohttp: HTTP {resp.status}")
            if not stream:
                return len(await resp.read())
            return sum([len(chunk) async for chunk in resp.content.iter_any()])

    return post


def httpx_post(client: httpx.AsyncClient, url: str) -> Post:
    headers = {"content-type": "application/json"}

    async def post(data: bytes, stream: bool) -> int:
        if not stream:
            resp = await client.post(url, content=data, headers=headers)
            if resp.status_code != 200:
                raise RuntimeError(f"httpx: HTTP {resp.status_code}")
            return len(resp.content)
        async with client.stream("POST", url, content=data, headers=headers) as resp:
            if resp.status_code != 200:
                raise RuntimeError(f"httpx: HTTP {resp.status_code}")
            return sum([len(chunk) async for chunk in resp.aiter_raw()])

    return post


async def timed(post: Post, data: bytes, stream: bool, n: int, concurrency: int) -> tuple[float, float]:
    """Requests/s and this process's CPU µs per request for n POSTs, at most ``concurrency`` in flight (1: one
    after another)."""
    remaining = n

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await post(data, stream)

    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return n / (time.perf_counter() - start), (time.process_time() - cpu) / n * 1e6


async def measure(url: str, args: argparse.Namespace) -> dict[str, list[float]]:
    limit = max(args.concurrency, 100)
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit), timeout=aiohttp.ClientTimeout(total=None, sock_read=60),
        auto_decompress=False,
    )
    client = httpx.AsyncClient(
        limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit), timeout=httpx.Timeout(60.0)
    )
    ours = UpstreamClient(connect_timeout_s=60, read_timeout_s=60)
    base_url, path = url.split("/v1/", 1)
    posts = {"sluice": sluice_post(ours, base_url, "/v1/" + path), "aiohttp": aiohttp_post(session, url),
             "httpx": httpx_post(client, url)}
    results: dict[str, list[float]] = {}
    try:
        for post in posts.values():  # warm-up: open the pools, fill caches
            for stream in (False, True):
                await timed(post, body(stream, args.max_tokens), stream, args.concurrency * 4, args.concurrency)
        for round_ in range(args.rounds):
            for stream in (False, True):
                data = body(stream, args.max_tokens)
                for mode in MODES:
                    concurrency = 1 if mode == "sequential" else args.concurrency
                    order = CLIENTS if round_ % 2 == 0 else CLIENTS[::-1]
                    for name in order:
                        rps, cpu_us = await timed(posts[name], data, stream, args.requests, concurrency)
                        key = f"{name}/{mode}/{'stream' if stream else 'full'}"
                        results.setdefault(key, []).append(rps)
                        results.setdefault("cpu_us:" + key, []).append(cpu_us)
                        print(f"round {round_}: {key}: {rps:.0f} req/s, {cpu_us:.0f} CPU µs/request",
                              file=sys.stderr)
    finally:
        await session.close()
        await client.aclose()
        await ours.close()
    return results


def table(summary: dict[str, float], concurrency: int) -> str:
    lines = [
        "| mode | body | sluice req/s | aiohttp req/s | httpx req/s | CPU µs/request sluice / aiohttp / httpx "
        "| sluice CPU ÷ aiohttp's |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for mode in MODES:
        for kind in ("full", "stream"):
            rps = [summary[f"{name}/{mode}/{kind}"] for name in CLIENTS]
            cpu = [summary[f"cpu_us:{name}/{mode}/{kind}"] for name in CLIENTS]
            label = "sequential" if mode == "sequential" else f"{concurrency} concurrent"
            lines.append(f"| {label} | {kind} | {rps[0]:.0f} | {rps[1]:.0f} | {rps[2]:.0f} "
                         f"| {cpu[0]:.0f} / {cpu[1]:.0f} / {cpu[2]:.0f} | {cpu[0] / cpu[1]:.2f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description="Sluice's own client vs aiohttp vs httpx as a pooled upstream client.")
    parser.add_argument("--requests", type=int, default=2000, help="POSTs per measurement (default 2000)")
    parser.add_argument("--concurrency", type=int, default=64, help="in flight in the concurrent mode (default 64)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the median is reported (default 3)")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    pin = (os.cpu_count() or 1) >= 2
    port = free_port()
    n = str(args.max_tokens)
    argv = [sys.executable, "-m", "sluice.cli", "sim", "--model", MODEL, "--host", "127.0.0.1", "--port", str(port),
            "--speed", "1e9", "--output-len-min", n, "--output-len-max", n]
    if pin:
        argv = ["taskset", "-c", "0", *argv]
        os.sched_setaffinity(0, {1})
    exit_on_signals()
    load_before = os.getloadavg()
    sim = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            if sim.poll() is not None:
                raise RuntimeError(f"the simulator exited with {sim.returncode}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        if args.loop == "uvloop":
            import uvloop

            runs = uvloop.run(measure(url + "/v1/chat/completions", args))
        else:
            runs = asyncio.run(measure(url + "/v1/chat/completions", args))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(sim.pid, signal.SIGTERM)
        try:
            sim.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(sim.pid, signal.SIGKILL)
            sim.wait()

    load_after = os.getloadavg()
    summary = {k: statistics.median(v) for k, v in runs.items()}
    ratios = {k.removeprefix("aiohttp/"): summary[k] / summary["httpx/" + k.removeprefix("aiohttp/")]
              for k in summary if k.startswith("aiohttp/")}
    sluice_cpu = {k.removeprefix("cpu_us:sluice/"): summary[k] / summary["cpu_us:aiohttp/" + k.removeprefix(
        "cpu_us:sluice/")] for k in summary if k.startswith("cpu_us:sluice/")}
    result = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command_line(),
        "machine": {**machine(), "pinned": pin, "load_avg_before": load_before, "load_avg_after": load_after,
                    "aiohttp": aiohttp.__version__, "httpx": httpx.__version__, "loop": args.loop},
        "settings": {"requests": args.requests, "concurrency": args.concurrency, "rounds": args.rounds,
                     "max_tokens": args.max_tokens},
        "rps_median": summary,
        "aiohttp_over_httpx": ratios,
        "sluice_cpu_over_aiohttp": sluice_cpu,
        "table": table(summary, args.concurrency),
        "runs": runs,
    }
    write_result(args.output, result)
    print(result["table"])
    print(f"load average (1, 5, 15 min) before {load_before}, after {load_after}")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
