"""Overload: the engine alone, Sluice with a fixed window, Sluice with an adaptive window, and Sluice with engine-side
priority scheduling (vLLM's, then SGLang's with preemption), from 0.5x to 3x the engine's capacity, with three tiers
of callers.

    python -m bench.overload            # defaults: --speed 2 --max-num-seqs 16 --input-len 256 --output-len 64
                                        #           --loads 0.5,1,2,3 --duration 25 --warmup 5 --adaptive gradient

One command starts, on 127.0.0.1 and free ports, and stops by PID at the end (also on error or SIGTERM):
  CPU 0: the engine simulator (``sluice sim --max-num-seqs 16 --speed 2``: continuous batching, decode step
         a + b x batch, prefill per token; every answer exactly --output-len tokens via ``ignore_eos``); FCFS
         scheduling for (a)-(c); for (d) it is stopped and a fresh one started with ``--scheduling-policy priority``,
         for (e) one in the sglang dialect with ``--scheduling-policy priority --priority-preemption``;
         and this process, the load generator (``sluice.bench.run_load``: open loop, Poisson arrivals, streamed
         chat), as in bench/overhead.py;
  CPU 1: the gateway under test alone (``sluice serve``, one per configuration, started and stopped in turn).
All three run under SCHED_FIFO (``--sched fifo``; ``nice`` or ``none`` otherwise) so that other load on the host
does not stretch the simulated engine's steps: the simulator at priority 2, so that it preempts the load generator
on their CPU at once, the others at 1. Diagnostics: ``--endpoint completions`` (no role-only first
chunk), ``--output-len 32-96`` (answers of varied length), ``--dump-requests DIR``, ``--render-only``.

1. Capacity: a closed loop of 2 x max_num_seqs users straight at the simulator; the engine's maximum is the
   generated tokens/s it reports (``vllm:generation_tokens_total``) over the timed part, and its capacity in
   requests/s that divided by --output-len. Checked against the figure the simulator's parameters give.
2. For each configuration, (a) ``direct`` (the load straight at the simulator: no tiers, one FIFO queue),
   (b) ``fixed`` (Sluice, ``window: {kind: fixed, initial: max_num_seqs}``) and (c) ``adaptive`` (Sluice,
   ``window: {kind: gradient|aimd, initial: max_num_seqs, min, max}``) and (d) ``engine-priority`` (the simulator
   with ``--scheduling-policy priority``, Sluice with ``admission: {priority_to_engine: true, protection:
   {reserve_when: always, reserve_top_share: --priority-reserve}, window: {kind: fixed, initial: ceil(max_num_seqs
   x (1 + --priority-headroom))}}``, 20 for 16 with a reserve of 0.2: lower tiers stop at floor(20 x 0.8) = 16, the
   engine's seats, and slots 17-20 are kept for premium at all times, so a premium request reaches the engine even
   when lower tiers hold every seat, and the engine, given each request's priority in its convention (vLLM: lower
   first), runs it first when a seat frees: vLLM never preempts for a seat) and (e) ``engine-preempt`` (the same
   gateway, but with its own --preempt-headroom 0.5 and --preempt-reserve 0.375, window 24 and lower tiers stopping
   at 15, and ``engine: {dialect: sglang}``, so priorities go out higher first, in front of the simulator in the
   sglang dialect with SGLang's priority preemption and, by default, prefill and decode mixed in one step (SGLang's
   ``--enable-mixed-chunk``; --no-preempt-mixed for its default, prefill-only steps): a waiting request more
   important than a running one by more
   than --preempt-threshold takes its seat at once, the preempted one resuming later from its cached prompt; 5 by
   default, so premium (10) preempts standard (0) and batch (-1), and standard does not preempt batch; SGLang's own
   default, 10, would let premium preempt batch only) and (f) ``fixed-preempt`` and (g) ``adaptive-preempt`` ((b)
   and (c) with ``admission: {preemption: {enabled: true, priority_gap: --preempt-threshold}}``, (g)'s window at
   most max_num_seqs (past the engine's seats, premium would wait in the engine's queue), in front of the
   vLLM-dialect simulator, FCFS, prefix caching on as in vLLM V1: when premium waits and the window is full, the
   gateway stops the newest running standard or batch stream, gives premium its place, and resumes the stopped
   stream later from its token ids, its prefill mostly read back from the prefix cache): for each, an unloaded
   run (premium only, 0.1x capacity, --unloaded-duration s) for the top tier's unloaded TTFT, then Poisson arrivals
   at each load x capacity for --duration s,
   of which the first --warmup s are not measured. Tenants, by share of the arrivals: premium 15% (tier
   premium, priority 10), std-a 30% and std-b 30% (tier standard, priority 0: the two equal tenants of Jain's
   index), batch 25% (tier batch, priority -1, sheddable). Quota: none (no limit can interfere).

Per (configuration, load), over requests sent in the measured window: per tier p50/p99 TTFT (of the requests the
system took: answered, or still without a first token when they gave up, counted at the time they waited), goodput
(answered requests with TTFT <= --slo-ttft-s and TPOT <= the TPOT SLO, per second and as a share of those sent),
rejection rate (429/503, by reason), engine throughput (simulator tokens/s over the window) as a share of its
maximum, and Jain's index between std-a and std-b on their goodput (and, beside it, on their output tokens/s).
The gateway's /metrics (window, in flight, queued, saturation, protection mode) are sampled every 0.5 s; the
simulator's preemptions (``vllm:num_preemptions_total``; in the sglang dialect
``sglang:num_retracted_requests_total``, where the simulator counts its priority preemptions too) are counted over
the window. The simulator's metrics are read under vLLM's names whatever its dialect (``sim_metric_aliases``).

Output: markdown tables on stdout, everything in bench/results/overload.json, plots in bench/results/overload/
(overload_ttft.png, overload_goodput.png, overload_window.png, and the library's per-run latency CDF and timeline
for each 3x run); with --docs, the key plots are copied to docs/img/.

Modules: ``settings`` (configurations, tiers, tenants), ``metrics`` (Prometheus sampling), ``load`` (one run of
arrivals, the engine's capacity), ``gateway`` (each configuration's gateway YAML), ``run`` (the experiment),
``analysis`` (one run's figures), ``report`` (tables, verdicts, plots); ``__main__`` is the command line.
"""
