"""The quota limiter: how fast it decides, how well it holds a limit, and what it costs the gateway.

One command starts everything (on 127.0.0.1, free ports), runs three parts, stops everything by PID at the end
(also on error or SIGTERM) and reports:

    python -m bench.limiter                  # --decision-s 3 --rounds 3 --duration 5 --warmup 1

1. Decisions: ``QuotaLimiter.reserve`` then ``QuotaLimiter.settle`` (one settle call, as the gateway settles a
   request), with a ``QuotaPolicy`` built from ``TierSettings``/``QuotaSettings``: per decision 3 GCRA buckets
   (requests and tokens per key, tokens per tenant) and 1 concurrency lease (per key). Stores: ``MemoryStore``,
   ``RedisStore`` used directly, and ``open_store("redis://...")`` (``FailoverStore`` around ``RedisStore``, what
   the gateway runs). Concurrency 1 (sequential awaits) and 64 (64 asyncio tasks, one process, uvloop). This
   process runs alone on CPU 1; ``redis-server --save ''`` (started here) on CPU 0.
2. Overshoot, baselines vs ours, in the same run. The baselines are MODELS reimplemented here (not the real
   libraries): (a) a per-process fixed window (slowapi's default strategy with memory storage) in N processes,
   burst at a window boundary; (b) post-hoc token charging (LiteLLM-style: check usage < budget before the call,
   add the tokens after the response) with K concurrent long answers; against (c) ours, for real: 4
   ``QuotaLimiter``s, each with its own Redis client (``open_store``), sharing one redis-server.
3. Gateway: ``sluice serve`` with quotas off (no limits, ``state: memory://``) and on (per-key requests, tokens
   and concurrent limits, ``state: redis://``), API keys on in both, against ``sluice sim --speed 1e9``; gateway
   alone on CPU 1, simulator, redis-server and wrk on CPU 0; ``wrk -t1 -c64`` non-streamed and streamed chat
   (max_tokens 16, ignore_eos), warm-up then timed run, rounds interleaved, medians. Target: on/off >= 80%.

Output: markdown tables on stdout; everything (each round) in bench/results/limiter.json.

Modules: ``decisions`` (part 1), ``overshoot`` (part 2), ``gateway`` (part 3), ``report`` (tables), ``settings``;
``__main__`` is the command line.
"""
