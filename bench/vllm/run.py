"""The runs: a CPU vLLM started and stopped by PID, the same load straight to it and through Sluice."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import math
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.harness import (
    CLK_TCK,
    Processes,
    command_line,
    exit_on_signals,
    free_port,
    log,
    machine,
    stop_vllm,
    vllm_ready,
    wait_until_up,
    wait_vllm_healthy,
    write_result,
)
from bench.vllm.report import compare, markdown
from bench.vllm.settings import PATHS, RESULTS, SERVED, TINY_LLAMA
from sluice.bench import WORDS, Fixed, LoadSpec, Poisson, RequestShape, Tenant, run_load, summarize
from sluice.clock import MonotonicClock
from sluice.identity import generate_key, hash_key


def main() -> int:
    parser = argparse.ArgumentParser(description="Sluice in front of a real CPU vLLM vs. straight to it.")
    parser.add_argument("--requests", type=int, default=100, help="requests per scenario, path and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", default="1,8", help="closed-loop scenarios (users), comma-separated")
    parser.add_argument("--rate", type=float, default=25.0,
                        help="also an open-loop Poisson scenario at this many requests/s (0: none)")
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=16, help="warm-up requests per path (concurrency 4)")
    parser.add_argument("--window", type=int, default=32, help="the gateway's fixed admission window")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vllm-python", default="/opt/vllm-venv/bin/python")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--keep-logs", type=Path, default=None, help="copy the processes' logs to this directory")
    args = parser.parse_args()
    if not vllm_ready(args.vllm_python):
        return 2
    exit_on_signals()
    started = time.monotonic()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="sluice-bench-vllm-") as tmp:
        workdir = Path(tmp)
        try:
            result = run(args, workdir)
        finally:
            if args.keep_logs:
                args.keep_logs.mkdir(parents=True, exist_ok=True)
                for log in workdir.glob("*.log"):
                    (args.keep_logs / log.name).write_bytes(log.read_bytes())
    result["wall_s"] = round(time.monotonic() - started, 1)
    result["loadavg"] = {"before": load_before, "after": os.getloadavg()}
    write_result(args.output, result)
    print(result["table"])
    print(f"\nload average (1, 5, 15 min): before {fmt_load(load_before)}, after {fmt_load(os.getloadavg())}; "
          f"wall {result['wall_s']} s")
    print(f"wrote {args.output}")
    return 0


def fmt_load(load: tuple[float, float, float] | list[float]) -> str:
    return " ".join(f"{x:.2f}" for x in load)


# ---------------------------------------------------------------------------------------------- processes


def group_cpu_s(session_id: int) -> float:
    """User + system CPU seconds of every live process in a session (vLLM: API server, engine core, worker)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[3]) == session_id:  # fields[3] is the session id (field 6 of stat)
                total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def start_vllm(args: argparse.Namespace, model_dir: Path, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    with open(workdir / "vllm.log", "wb") as log:
        proc = subprocess.Popen(
            [args.vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
             "--served-model-name", SERVED, "--enforce-eager", "--no-enable-prefix-caching", "--host", "127.0.0.1",
             "--port", str(port), "--max-model-len", "1024"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            cwd=workdir)  # not bench/: its vllm.py (this file) would shadow the vllm package for ``-m``
    return proc, f"http://127.0.0.1:{port}"


def gateway_config(workdir: Path, port: int, vllm_url: str, model_dir: Path, key: str, window: int) -> Path:
    config = workdir / "sluice.yaml"
    config.write_text(
        f"server: {{host: 127.0.0.1, port: {port}, access_log_path: '{workdir / 'access.jsonl'}'}}\n"
        "auth: {mode: api_key}\n"
        "models:\n"
        f"  - name: {SERVED}\n"
        f"    engine: {{dialect: vllm, urls: ['{vllm_url}']}}\n"
        f"    tokenizer: '{model_dir / 'tokenizer.json'}'\n"
        "    max_model_len: 1024\n"
        f"    admission: {{enabled: true, window: {{kind: fixed, initial: {window}}}}}\n"
        # A per-key quota on every axis, far above what the run spends: charged and settled on every request,
        # never refusing one.
        "tiers:\n  bench: {priority: 0, requests: 100000/minute, tokens: 100000000/minute, concurrent: 256}\n"
        f"keys:\n  - {{id: bench, hash: '{hash_key(key)}', user: bench, tenant: bench, tier: bench}}\n"
    )
    return config


def scrape(url: str, prefixes: tuple[str, ...]) -> dict[str, float]:
    with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=5) as resp:
        out = {}
        for line in resp.read().decode().splitlines():
            if line.startswith(prefixes):
                name, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    out[name] = float(value)
        return out
    return {}


# ---------------------------------------------------------------------------------------------- the run


def scenarios(args: argparse.Namespace) -> list[tuple[str, LoadSpec]]:
    out = [(f"closed c={c}", LoadSpec(concurrency=c, requests=args.requests))
           for c in (int(x) for x in args.concurrency.split(","))]
    if args.rate:
        out.append((f"poisson {args.rate:g}/s", LoadSpec(arrivals=Poisson(args.rate), requests=args.requests)))
    return out


def measure(base: str, key: str, args: argparse.Namespace, load: LoadSpec, seed: int,
            cpu: dict[str, Any]) -> dict[str, Any]:
    """One run of sluice.bench against one path, with each process's CPU time over it."""
    shape = RequestShape(base, SERVED, endpoint="chat", stream=True, ignore_eos=True, timeout_s=120)
    tenants = (Tenant("bench", Fixed(args.input_len), Fixed(args.output_len), api_key=key),)
    before = {name: f() for name, f in cpu.items()}
    record = asyncio.run(run_load(shape, load, tenants, seed=seed, clock=MonotonicClock()))
    used = {name: f() - before[name] for name, f in cpu.items()}
    s = summarize(record.results, duration_s=record.duration_s, tenants=tenants)
    ok = [r for r in record.results if r.ok]
    return {
        "sent": s["requests"]["sent"], "succeeded": s["requests"]["succeeded"], "failed": s["requests"]["failed"],
        "errors": s["errors"], "duration_s": record.duration_s,
        "requests_per_s": s["throughput"]["requests_per_s"],
        "output_tokens_per_s": s["throughput"]["output_tokens_per_s"],
        "output_tokens": s["throughput"]["output_tokens"], "prompt_tokens": s["throughput"]["prompt_tokens"],
        "ttft_ms": s["latency_ms"]["ttft"], "tpot_ms": s["latency_ms"]["tpot"], "e2e_ms": s["latency_ms"]["e2e"],
        "cpu_s": used, "cpu_ms_per_request": {k: 1e3 * v / max(1, len(ok)) for k, v in used.items()},
        "loadavg_1m_after": os.getloadavg()[0],
        # the raw samples, pooled over rounds for the percentiles
        "ttft_s": [r.ttft_s for r in ok if r.ttft_s is not None],
        "tpot_s": [r.tpot_s for r in ok if r.tpot_s is not None],
    }


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    model_dir, words = workdir / "tiny-llama", workdir / "words.txt"
    words.write_text("\n".join(WORDS))
    subprocess.run([args.vllm_python, str(TINY_LLAMA), str(model_dir), str(words)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    key = generate_key()
    procs = Processes(workdir)
    vllm, vllm_url = start_vllm(args, model_dir, workdir)
    try:
        t0 = time.monotonic()
        wait_vllm_healthy(vllm, vllm_url, workdir / "vllm.log", timeout_s=400)
        vllm_ready_s = time.monotonic() - t0
        port = free_port()
        config = gateway_config(workdir, port, vllm_url, model_dir, key, args.window)
        gateway = procs.start("sluice", ",".join(str(c) for c in sorted(os.sched_getaffinity(0))),
                              [sys.executable, "-m", "sluice.cli", "serve", "--config", str(config)])
        sluice_url = f"http://127.0.0.1:{port}"
        wait_until_up(gateway, sluice_url + "/health")
        bases = {"direct": vllm_url, "sluice": sluice_url}
        cpu = {"gateway": gateway.cpu_s, "vllm": lambda: group_cpu_s(vllm.pid)}
        version = subprocess.run([args.vllm_python, "-c", "import vllm; print(vllm.__version__)"],
                                 capture_output=True, text=True, cwd=workdir).stdout.strip()

        warmup = {}
        for path in PATHS:
            warmup[path] = measure(bases[path], key, args, LoadSpec(concurrency=4, requests=args.warmup),
                                   args.seed + 10_000, cpu)
            if warmup[path]["failed"]:
                raise RuntimeError(f"warm-up through {path} failed: {warmup[path]['errors']}")
            log(f"warm-up {path}: {brief(warmup[path])}")

        rounds: dict[str, list[dict[str, dict[str, Any]]]] = {}
        for round_ in range(args.rounds):
            for name, load in scenarios(args):
                order = PATHS if round_ % 2 == 0 else PATHS[::-1]
                measured = {}
                for path in order:
                    measured[path] = measure(bases[path], key, args, load, args.seed + round_, cpu)
                    log(f"round {round_} {name} {path}: {brief(measured[path])}")
                rounds.setdefault(name, []).append(measured)
        gateway_metrics = scrape(sluice_url + "/metrics",
                                 ("sluice_admission_", "sluice_protection_", "sluice_requests_in_flight"))
    finally:
        procs.stop_all()
        stop_vllm(vllm)
    access_lines = sum(1 for _ in open(workdir / "access.jsonl")) if (workdir / "access.jsonl").exists() else None

    comparison = compare(rounds)
    for per_round in rounds.values():  # every request's TTFT and TPOT, in ms, kept in the JSON
        for measured in per_round:
            for m in measured.values():
                m["ttft_ms_each"] = [round(1e3 * x, 2) for x in m.pop("ttft_s")]
                m["tpot_ms_each"] = [round(1e3 * x, 3) for x in m.pop("tpot_s")]
    for m in warmup.values():
        m.pop("ttft_s"), m.pop("tpot_s")
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command_line(),
        "machine": {**machine(wrk=True), "vllm": version, "vllm_ready_after_s": round(vllm_ready_s, 1)},
        "settings": {"requests": args.requests, "rounds": args.rounds, "concurrency": args.concurrency,
                     "rate": args.rate, "input_len": args.input_len, "output_len": args.output_len,
                     "warmup": args.warmup, "window": args.window, "seed": args.seed,
                     "endpoint": "/v1/chat/completions (streamed, ignore_eos, stream_options.include_usage)",
                     "model": "tiny random Llama (bench/tiny_llama.py), served as 'tiny'"},
        "gateway_config": config.read_text().replace(hash_key(key), "sha256:<run's key>"),
        "gateway_metrics_at_end": gateway_metrics,
        "gateway_access_log_lines": access_lines,
        "comparison": comparison,
        "warmup": warmup,
        "rounds": rounds,
        "table": markdown(comparison),
    }


def brief(m: dict[str, Any]) -> str:
    ttft, tpot = m["ttft_ms"] or {}, m["tpot_ms"] or {}
    return (f"{m['succeeded']}/{m['sent']} ok, {m['requests_per_s']:.2f} req/s, {m['output_tokens_per_s']:.0f} tok/s, "
            f"TTFT mean {ttft.get('mean', math.nan):.1f} ms p50 {ttft.get('p50', math.nan):.1f}, "
            f"TPOT mean {tpot.get('mean', math.nan):.2f} ms, gateway CPU {m['cpu_s']['gateway']:.2f} s")
