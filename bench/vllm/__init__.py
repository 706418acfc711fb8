"""Sluice in front of a real vLLM: the same workload through the gateway and straight to the engine.

One command, one run:

    python -m bench.vllm   # --requests 100 --rounds 5 --concurrency 1,8 --rate 25 --input-len 64 --output-len 16

It builds the tiny random-weight Llama of ``bench/tiny_llama.py`` (its tokenizer makes each of sluice bench's prompt
words one token), starts on 127.0.0.1 and free ports

  - a real CPU vLLM, ``/opt/vllm-venv/bin/python -m vllm.entrypoints.openai.api_server --model DIR
    --served-model-name tiny --enforce-eager --no-enable-prefix-caching --max-model-len 1024``
    (``VLLM_CPU_KVCACHE_SPACE=1 HF_HUB_OFFLINE=1``);
  - the gateway, ``sluice serve --config <temp file>``: API keys on (one generated key, sent as
    ``Authorization: Bearer`` on every request of both paths), a per-key quota (requests, tokens, concurrency)
    far above what the run spends, admission on with a fixed window (``--window``), the engine's tokenizer for exact
    prompt counts, vLLM's /metrics scraped (admission's default ``watch_load``), the access log on (to a file);

and stops both by PID at the end (vLLM by its process group: API server, engine core, worker), also on error or
SIGTERM. Load comes from ``sluice.bench`` (``run_load``, in this process): streamed chat completions, prompts of
``--input-len`` words, ``max_tokens`` ``--output-len`` with ``ignore_eos``, in closed loops of each
``--concurrency``, and open-loop Poisson arrivals at ``--rate`` requests/s (``--rate 0``: none). First a warm-up
through each path (not measured); then ``--rounds`` rounds, in each of which every scenario runs through both
paths, one after the other (never at once), the path that goes first alternating. Both paths of a scenario in a
round get the same requests (the same seed; prefix caching is off, so the second gets no cache hits); each round
has a new seed.

Reported per scenario and path: request and output-token throughput (median over rounds, min-max), TTFT and TPOT
mean/p50/p99 over every request of every round, and Sluice/direct ratios; also each process's CPU time per request
(/proc) and the load average (the machine is shared). Output: a markdown table on stdout; everything in
bench/results/vllm.json.
"""
