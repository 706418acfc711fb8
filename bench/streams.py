"""Concurrent streams held through one gateway process, and what each costs it in memory (RSS per stream).

    python -m bench.streams                  # --streams 5000 --batch 500 --hold 5 --targets sluice,bare_proxy

Processes, on 127.0.0.1 and free ports, unpinned:
  - the engine simulator, ``sluice sim``, one token a second for every stream (``--decode-base-s 1``, no per-sequence
    cost) and room for all of them, so that every stream stays open, streaming, for as long as it is held;
  - ``sluice serve``: API keys, per-key quotas (memory://), admission (the window and ``engine.max_connections`` both
    at --streams), the access log on: the gateway as deployed, in one process;
  - the baseline, ``bench/bare_proxy.py`` (aiohttp in and out, nothing else), with its upstream connector's limit of
    1024 lifted in its own process so that it can hold as many streams;
  - this process is the client: aiohttp, no connection limit.

For each target: warm up (200 short requests), read its idle RSS (``VmRSS``, median of 3); open --streams streams
in batches of --batch, each batch once the previous one is streaming; once all are streaming, sample RSS for --hold
seconds (median: held RSS), checking every stream is still open; close them all, read RSS again (after).
Per stream = (held - idle) / streams. Output: a markdown table, everything in bench/results/streams.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
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
    raise_fd_limit,
    rss_bytes,
    wait_until_up,
    write_result,
)
from sluice.identity import generate_key, hash_key

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "streams.json"


def sim_argv(port: int, streams: int, max_tokens: int, decode_s: float) -> list[str]:
    blocks = streams * (max_tokens // 16 + 2) + 1024
    return [sys.executable, "-m", "sluice.cli", "sim", "--model", MODEL, "--port", str(port),
            "--max-num-seqs", str(streams), "--num-kv-blocks", str(blocks), "--decode-base-s", str(decode_s),
            "--decode-per-seq-s", "0", "--prefill-s-per-token", "0"]


def gateway_yaml(port: int, sim_url: str, key: str, in_flight: int, state: str = "memory://",
                 extra_tier: str = "") -> str:
    return (
        f"server: {{host: 127.0.0.1, port: {port}}}\n"
        f"state: {state}\n"
        "auth: {mode: api_key}\n"
        "models:\n"
        f"  - name: {MODEL}\n"
        f"    engine: {{dialect: vllm, urls: ['{sim_url}'], max_connections: {in_flight}}}\n"
        f"    admission: {{window: {{initial: {in_flight}, max: {in_flight}}}}}\n"
        "tiers:\n"
        f"  pro: {{requests: '10000000/minute', tokens: '10000000000/minute'{extra_tier}}}\n"
        f"keys:\n  - {{id: bench, hash: '{hash_key(key)}', tenant: acme, tier: pro}}\n"
    )


def chat(max_tokens: int, stream: bool = True) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_tokens": max_tokens, "ignore_eos": True, "stream": stream}


@dataclass
class Held:
    """What the open streams are doing."""

    streaming: int = 0  # got their first data frame
    open: int = 0  # answered 200, not ended
    errors: list[str] = field(default_factory=list)


async def hold_one(http: aiohttp.ClientSession, url: str, body: dict[str, Any], held: Held) -> None:
    try:
        async with http.post(url + "/v1/chat/completions", json=body) as resp:
            if resp.status != 200:
                held.errors.append(f"{resp.status}: {(await resp.text())[:200]}")
                return
            held.open += 1
            counted = False
            try:
                async for line in resp.content:
                    if not counted and line.startswith(b"data: {"):
                        held.streaming += 1
                        counted = True
            finally:
                held.open -= 1
                if counted:
                    held.streaming -= 1
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - a client-side failure is a result, reported
        held.errors.append(f"{type(exc).__name__}: {exc}")


async def warm_up(http: aiohttp.ClientSession, url: str) -> None:
    for _ in range(2):
        results = await asyncio.gather(*(http.post(url + "/v1/chat/completions", json=chat(2, stream=i % 2 == 0))
                                         for i in range(100)))
        for resp in results:
            await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"warm-up through {url}: HTTP {resp.status}: {(await resp.text())[:300]}")
            resp.release()


async def measure(name: str, url: str, pid: int, headers: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=120, sock_read=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as http:
        await warm_up(http, url)
        await asyncio.sleep(2)
        idle = await sample_rss(pid, 3, 0.5)
        held = Held()
        tasks: list[asyncio.Task[None]] = []
        ramp_started = time.monotonic()
        for opened in range(args.batch, args.streams + args.batch, args.batch):
            opened = min(opened, args.streams)
            tasks += [asyncio.create_task(hold_one(http, url, chat(args.max_tokens), held))
                      for _ in range(opened - len(tasks))]
            deadline = time.monotonic() + args.ramp_timeout
            while held.streaming < opened and not held.errors and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if held.streaming < opened:
                raise RuntimeError(f"{name}: {held.streaming} of {opened} streams streaming; errors: "
                                   f"{held.errors[:3]}")
        ramp_s = time.monotonic() - ramp_started
        samples, open_counts = [], []
        for _ in range(max(1, int(args.hold))):
            samples.append(rss_bytes(pid))
            open_counts.append(held.streaming)
            await asyncio.sleep(1.0)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(3)
    after = await sample_rss(pid, 3, 0.5)
    held_rss = int(statistics.median(samples))
    return {
        "target": name, "streams": args.streams, "streams_held_min": min(open_counts), "ramp_s": round(ramp_s, 1),
        "idle_rss": idle, "held_rss": held_rss, "after_rss": after, "errors": held.errors[:10],
        "per_stream_bytes": round((held_rss - idle) / args.streams),
    }


async def sample_rss(pid: int, count: int, every_s: float) -> int:
    values = []
    for _ in range(count):
        values.append(rss_bytes(pid))
        await asyncio.sleep(every_s)
    return int(statistics.median(values))


def serve_bare_proxy(upstream: str, port: int) -> None:
    """bench/bare_proxy.py as it is, with its upstream connector's limit (1024) lifted, in this process only."""
    import uvloop
    from aiohttp import web

    from bench import bare_proxy
    from sluice.cli import tune_gc

    class Unlimited(aiohttp.TCPConnector):
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **{**kw, "limit": 0})

    aiohttp.TCPConnector = Unlimited  # type: ignore[misc]
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    app = bare_proxy.make_app(upstream)
    tune_gc()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, backlog=2048)


def table(runs: list[dict[str, Any]]) -> str:
    mb = 1024 * 1024
    lines = ["| target | streams held | idle RSS | RSS with the streams held | per stream | RSS after they closed |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in runs:
        lines.append(f"| {r['target']} | {r['streams_held_min']} | {r['idle_rss'] / mb:.1f} MiB | "
                     f"{r['held_rss'] / mb:.1f} MiB | {r['per_stream_bytes'] / 1024:.1f} KiB | "
                     f"{r['after_rss'] / mb:.1f} MiB |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=500, help="streams opened at a time (default 500)")
    parser.add_argument("--hold", type=float, default=5, help="seconds the streams are held and RSS sampled")
    parser.add_argument("--max-tokens", type=int, default=600, help="per stream: far more than it lives to see")
    parser.add_argument("--decode-s", type=float, default=1.0, help="the simulator's step: seconds per token")
    parser.add_argument("--ramp-timeout", type=float, default=180.0, help="seconds for one batch to be streaming")
    parser.add_argument("--targets", default="sluice,bare_proxy")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--serve-bare-proxy", nargs=2, metavar=("UPSTREAM", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare_proxy:
        serve_bare_proxy(args.serve_bare_proxy[0], int(args.serve_bare_proxy[1]))
        return 0
    raise_fd_limit(2 * args.streams + 1024)  # inherited: a proxy holds two descriptors a stream
    exit_on_signals()
    targets = args.targets.split(",")
    key = generate_key()
    runs = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sluice-streams-") as tmp:
        workdir = Path(tmp)
        procs = Processes(workdir)
        try:
            sim_port = free_port()
            sim = procs.start("sim", ANY_CPU, sim_argv(sim_port, args.streams * 2, args.max_tokens, args.decode_s))
            sim_url = f"http://127.0.0.1:{sim_port}"
            wait_until_up(sim, sim_url + "/health")
            for name in targets:
                port = free_port()
                if name == "sluice":
                    config = workdir / "sluice.yaml"
                    config.write_text(gateway_yaml(port, sim_url, key, args.streams))
                    argv = [sys.executable, "-m", "sluice.cli", "serve", "--config", str(config)]
                else:
                    argv = [sys.executable, "-m", "bench.streams", "--serve-bare-proxy", sim_url, str(port)]
                proc = procs.start(name, ANY_CPU, argv)
                url = f"http://127.0.0.1:{port}"
                wait_until_up(proc, url + "/health")
                headers = {"Authorization": f"Bearer {key}"}
                runs.append(asyncio.run(measure(name, url, proc.pid, headers, args)))
                print(f"{name}: {json.dumps(runs[-1])}", file=sys.stderr)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
                proc.popen.wait(timeout=30)
        finally:
            procs.stop_all()
    result = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command_line(),
        "wall_s": round(time.monotonic() - started, 1),
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("output", "serve_bare_proxy")},
        "runs": runs,
    }
    result["table"] = table(runs)
    write_result(args.output, result)
    print(result["table"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
