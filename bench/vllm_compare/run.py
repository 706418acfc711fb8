"""The runs: a CPU vLLM started and stopped by PID, each client in turn on the same server state."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bench.harness import (
    children_cpu_s,
    command_line,
    cpu_set,
    exit_on_signals,
    free_port,
    machine,
    pinned,
    stop_vllm,
    vllm_ready,
    wait_vllm_healthy,
    write_result,
)
from bench.vllm_compare.report import brief, compare, markdown
from bench.vllm_compare.settings import (
    ENGINE_STEPS,
    METRICS,
    NO_TRUST_ENV,
    PREFIX_HITS,
    RESULTS,
    SCENARIOS,
    SERVED,
    SERVER_HISTOGRAMS,
    SERVER_TOTALS,
    TINY_LLAMA,
    VLLM_BENCH_SERVE,
    WARMUP_SEED,
)
from sluice.bench import WORDS, Fixed, LoadSpec, Poisson, RequestShape, Tenant, run_load
from sluice.clock import MonotonicClock


def main() -> int:
    parser = argparse.ArgumentParser(description="sluice bench against vLLM's serving benchmark on a CPU vLLM.")
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--rate", type=float, default=2.0, help="requests/s for constant and poisson (default 2)")
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--burst-requests", type=int, default=200, help="requests in the burst scenario (default 200)")
    parser.add_argument("--rounds", type=int, default=4, help="even: each client goes first as often (default 4)")
    parser.add_argument("--warmup", type=int, default=8,
                        help="requests at once before every measured run (before a burst run: the whole burst)")
    parser.add_argument("--no-equal-idle", dest="equal_idle", action="store_false",
                        help="start sluice's client at once after the warm-up (by default it waits as long as vLLM's "
                             "client takes to start, so the server has idled as long before either run)")
    parser.add_argument("--vllm-trust-env", action="store_true",
                        help="run vLLM's client as shipped: aiohttp's trust_env lookups inside its TTFT")
    parser.add_argument("--scenarios", default="constant,poisson,burst")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vllm-python", default="/opt/vllm-venv/bin/python")
    parser.add_argument("--engine-cpus", default="1" if (os.cpu_count() or 1) >= 2 else "",
                        help="CPUs for the vLLM server (taskset list; default 1 on a machine of 2 or more, '' for "
                             "none): the clients then never take CPU from the engine")
    parser.add_argument("--client-cpus", default="0" if (os.cpu_count() or 1) >= 2 else "",
                        help="CPUs for both benchmark clients (default 0)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not vllm_ready(args.vllm_python):
        return 2
    exit_on_signals()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sluice-vllm-compare-") as tmp:
        result = run(args, Path(tmp))
    result["wall_s"] = round(time.monotonic() - started, 1)
    write_result(args.output, result)
    print(result["table"])
    print(f"\nwrote {args.output}")
    return 0


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    if args.client_cpus:  # this process (its warm-ups) and both clients, which inherit it
        os.sched_setaffinity(0, cpu_set(args.client_cpus))
    model_dir, words = workdir / "tiny-llama", workdir / "words.txt"
    words.write_text("\n".join(WORDS))
    subprocess.run([args.vllm_python, str(TINY_LLAMA), str(model_dir), str(words)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = workdir / "vllm.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if args.engine_cpus:
        env["VLLM_CPU_OMP_THREADS_BIND"] = args.engine_cpus  # its compute threads on the CPUs it is given
    with open(log_path, "wb") as log:
        vllm = subprocess.Popen([*pinned(args.engine_cpus), args.vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model",
                                 str(model_dir), "--served-model-name", SERVED, "--enforce-eager",
                                 "--no-enable-prefix-caching", "--host",
                                 "127.0.0.1", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    try:
        wait_vllm_healthy(vllm, base, log_path)
        version = subprocess.run([args.vllm_python, "-c", "import vllm; print(vllm.__version__)"],
                                 capture_output=True, text=True).stdout.strip()
        args.sluice_delay_s = vllm_client_startup_s(args) if args.equal_idle else 0.0
        scenarios = args.scenarios.split(",")
        rounds: dict[str, list[dict[str, Any]]] = {}
        for round_ in range(args.rounds):
            for i, name in enumerate(scenarios):
                order = ("vllm", "sluice") if round_ % 2 == 0 else ("sluice", "vllm")
                # the same seed in both clients; its own in every scenario and round (no prompt seen before)
                seeded = argparse.Namespace(**{**vars(args), "seed": args.seed + round_ * len(scenarios) + i})
                measured = {}
                for client in order:
                    tag = f"{name}-{round_}-{client}"
                    warm_up(args, base, warmup_count(args, name))
                    server0 = metric_totals(base, *SERVER_TOTALS)
                    measured[client] = (run_vllm_bench if client == "vllm" else run_sluice_bench)(
                        seeded, name, base, model_dir, workdir / tag)
                    measured[client].update(server_view(server0, metric_totals(base, *SERVER_TOTALS)))
                    print(f"[{time.strftime('%H:%M:%S')}] {tag}: {brief(client, measured[client])}", file=sys.stderr)
                rounds.setdefault(name, []).append(measured)
        cache_hits = prefix_cache_hits(base)
    finally:
        stop_vllm(vllm)
    comparison = compare(rounds)
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command_line(),
        "machine": {**machine(), "vllm": version},
        "settings": {"requests": args.requests, "burst_requests": args.burst_requests, "rate_per_s": args.rate,
                     "input_len": args.input_len, "output_len": args.output_len, "rounds": args.rounds,
                     "seed": args.seed, "warmup": args.warmup, "vllm_client_trust_env": args.vllm_trust_env,
                     "engine_cpus": args.engine_cpus, "client_cpus": args.client_cpus,
                     "sluice_client_delay_s": args.sluice_delay_s,
                     "endpoint": "/v1/completions", "model": "tiny random Llama (bench/tiny_llama.py)"},
        "vllm_prefix_cache_hits": cache_hits,
        "commands": {"vllm": "vllm bench serve " + " ".join(vllm_argv(args, "constant", "URL", Path("MODEL_DIR"),
                                                                         Path("OUT"))[3:]),
                     "sluice": "sluice " + " ".join(sluice_argv(args, "constant", "URL", Path("OUT"))[3:]),
                     "scenario_flags": {k: {"vllm": " ".join(v), "sluice": " ".join(s)}
                                        for k, (v, s) in SCENARIOS.items()}},
        "comparison": comparison,
        "rounds": rounds,
        "table": markdown(comparison),
    }


def vllm_argv(args: argparse.Namespace, scenario: str, base: str, model_dir: Path, out: Path) -> list[str]:
    extra = SCENARIOS.get(scenario, (["SCENARIO-FLAGS"], []))[0]
    rate = [] if "--request-rate" in extra else ["--request-rate", str(args.rate)]
    code = VLLM_BENCH_SERVE.format(patch="" if args.vllm_trust_env else NO_TRUST_ENV)
    return [args.vllm_python, "-c", code, "--backend", "openai",
            "--base-url", base, "--endpoint", "/v1/completions", "--model", SERVED, "--tokenizer", str(model_dir),
            "--dataset-name", "random", "--random-input-len", str(args.input_len), "--random-output-len",
            str(args.output_len), "--random-range-ratio", "0", "--num-prompts", str(count(args, scenario)), *rate, *extra,
            "--ignore-eos", "--seed", str(args.seed), "--num-warmups", "0", "--ready-check-timeout-sec", "0",
            "--disable-tqdm", "--save-result", "--save-detailed",
            "--result-dir", str(out.parent), "--result-filename", out.name]


def sluice_argv(args: argparse.Namespace, scenario: str, base: str, out: Path) -> list[str]:
    extra = SCENARIOS.get(scenario, ([], ["SCENARIO-FLAGS"]))[1]
    rate = [] if "--rate" in extra else ["--rate", str(args.rate)]
    launch = ["-m", "sluice.cli"]
    return [sys.executable, *launch, "bench", "--base-url", base, "--model", SERVED, "--endpoint",
            "completions", "--requests", str(count(args, scenario)), *rate, *extra, "--input-len", str(args.input_len),
            "--output-len", str(args.output_len), "--seed", str(args.seed), "--no-plots", "--no-progress",
            "--out", str(out)]


def count(args: argparse.Namespace, scenario: str) -> int:
    return int(args.burst_requests if scenario == "burst" else args.requests)


def warmup_count(args: argparse.Namespace, scenario: str) -> int:
    return int(args.burst_requests if scenario == "burst" else args.warmup)


def warm_up(args: argparse.Namespace, base: str, requests: int) -> None:
    """``requests`` completions of the measured shape at once, untimed: the server state every measured run starts
    from, whichever client makes it."""
    if requests < 1:
        return
    tenant = Tenant("warm-up", Fixed(args.input_len), Fixed(args.output_len))
    record = asyncio.run(run_load(RequestShape(base, SERVED, "completions"),
                                  LoadSpec(Poisson(math.inf), requests=requests), (tenant,), seed=WARMUP_SEED,
                                  clock=MonotonicClock()))
    failed = [r for r in record.results if not r.ok]
    if failed:
        raise RuntimeError(f"warm-up: {len(failed)} of {requests} failed, e.g. {failed[0].status} {failed[0].error}")


def metric_totals(base: str, *names: str) -> dict[str, float] | None:
    """Each named metric from vLLM's /metrics, summed over its label sets; None when it does not answer."""
    try:
        with urllib.request.urlopen(base + "/metrics", timeout=10) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    totals = dict.fromkeys(names, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] += sample.value
    return totals


def prefix_cache_hits(base: str) -> float | None:
    """vLLM's prefix-cache hits (tokens) so far."""
    totals = metric_totals(base, PREFIX_HITS)
    return None if totals is None else totals[PREFIX_HITS]


def server_view(before: dict[str, float] | None, after: dict[str, float] | None) -> dict[str, float | None]:
    """The server's own figures over the requests between two scrapes: mean TTFT and its engine queue and prefill
    parts (ms), the rest of it (TTFT - queue - prefill), and the engine's steps."""
    if before is None or after is None:
        return {}
    delta = {name: after[name] - before[name] for name in SERVER_TOTALS}
    view: dict[str, float | None] = {}
    for short, name in SERVER_HISTOGRAMS.items():
        count = delta[name + "_count"]
        view[f"server_mean_{short}_ms"] = 1e3 * delta[name + "_sum"] / count if count else None
    ttft, queue, prefill = (view[f"server_mean_{k}_ms"] for k in ("ttft", "queue", "prefill"))
    view["server_mean_other_ms"] = (ttft - queue - prefill
                                    if ttft is not None and queue is not None and prefill is not None else None)
    view["engine_steps"] = delta[ENGINE_STEPS]
    return view


def run_vllm_bench(args: argparse.Namespace, scenario: str, base: str, model_dir: Path, out: Path) -> dict[str, Any]:
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.with_suffix(".json")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cpu0 = children_cpu_s()
    proc = subprocess.run(vllm_argv(args, scenario, base, model_dir, path), capture_output=True, text=True, env=env,
                          timeout=600)
    cpu_s = children_cpu_s() - cpu0
    if proc.returncode != 0:
        raise RuntimeError(f"vllm bench serve failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    data = json.loads(path.read_text())
    values = {key: data.get(key) for key in ("completed", "failed", "duration", "total_input_tokens",
                                             "total_output_tokens", *(m[1] for m in METRICS))}
    starts, ttfts = data.get("start_times") or [], data.get("ttfts") or []
    values["send_spread_s"] = max(starts) - min(starts) if starts else None
    values["median_ttft_ms"] = 1e3 * statistics.median(ttfts) if ttfts else None
    values["client_cpu_s"] = cpu_s
    return values


def run_sluice_bench(args: argparse.Namespace, scenario: str, base: str, model_dir: Path, out: Path) -> dict[str, Any]:
    time.sleep(args.sluice_delay_s)  # the server idles after the warm-up as long as before vLLM's client's run
    cpu0 = children_cpu_s()
    proc = subprocess.run(sluice_argv(args, scenario, base, out), capture_output=True, text=True, timeout=600)
    cpu_s = children_cpu_s() - cpu0
    if proc.returncode != 0:
        raise RuntimeError(f"sluice bench failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    s = json.loads((out / "summary.json").read_text())
    values = {"completed": s["requests"]["succeeded"], "failed": s["requests"]["failed"],
              "duration": s["duration_s"], "total_input_tokens": s["throughput"]["prompt_tokens"],
              "total_output_tokens": s["throughput"]["output_tokens"]}
    for _, key, path in METRICS:
        node: Any = s
        for part in path:
            node = node[part] if node is not None else None
        values[key] = node
    starts = [json.loads(line)["start_s"] for line in (out / "results.jsonl").read_text().splitlines()]
    values["send_spread_s"] = max(starts) - min(starts) if starts else None
    values["median_ttft_ms"] = s["latency_ms"]["ttft"]["p50"] if s["latency_ms"]["ttft"] else None
    values["client_cpu_s"] = cpu_s
    return values


def vllm_client_startup_s(args: argparse.Namespace) -> float:
    """How long vLLM's client takes to start (importing vLLM and torch) before it sends: the server's idle time
    between the warm-up and its run. A burst that follows a warm-up by 0.5 s instead of ~11 s met a faster server
    (its own TTFT 772 against 1013 ms, in a run without this)."""
    started = time.monotonic()
    subprocess.run([args.vllm_python, "-c", "import vllm.benchmarks.serve"], capture_output=True, check=True)
    return time.monotonic() - started
