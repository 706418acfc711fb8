"""The cost of a replica-set change under load: one gateway under a steady closed-loop load, with and without an
admin API change of its model's replicas every 0.5 s.

    python -m bench.replica_change    # --round-s 6 --repeats 3 --connections 32 --max-tokens 8 (about 85 s)

Processes, all on 127.0.0.1 and free ports, pinned with taskset on a 2-CPU machine:
  CPU 1: the gateway (``sluice serve``, open mode with an admin key, default settings otherwise: access log on), alone;
  CPU 0: three engine simulators (``sluice sim --speed 1e9``: every answer exactly --max-tokens tokens, at once, so
         the gateway is the bottleneck and a change's cost shows in its throughput; at real speed the engines would
         bound throughput, and adding or removing one would change capacity, hiding the gateway's cost), ``wrk`` (one
         thread, --connections connections, alternately a streamed and a non-streamed chat completion) and this
         script (the admin calls and the reads of the simulators' /metrics).

The model's static replicas are simulators A and B; C is the one that changes. Rounds, side by side in one run,
repeated --repeats times, their order rotated each time (a, b, c, d, then b, c, d, a, ...):
  steady         no change (replicas A, B);
  steady-with-c  no change, C added through the admin API before the round (A, B, C): what C's presence costs;
  add-remove     ``POST /admin/replicas`` C, 0.5 s later ``/admin/replicas/remove`` C, and so on;
  drain-undrain  C added before the round, then ``/admin/replicas/drain`` C, 0.5 s later ``/undrain`` C, and so on.
Both change rounds alternate between {A, B} and {A, B, C}, so each lies between the two steady rounds if a change
costs nothing. After the rounds, with no load, 200 admin calls of each kind back to back (and as many
``GET /admin/replicas`` as the control): the gateway's CPU per call, the direct cost of a change.

For every change that brings C in, the time from the admin call's answer to C's first request (C's
``vllm:prompt_tokens_total`` rising, read in a loop right after the answer: a lower and an upper bound, one read
apart); the steady rounds time the same read loop on A, from a tick to A's next request, as the yardstick (a
replica always in the set and busy). For every change that takes C out, the requests C finished from 0.2 s after
the answer to the next change ("stray": must be 0; an 8-token answer takes C well under a millisecond).

Failures, printed loudly (exit status 1): any non-2xx answer or wrk socket error, any gateway rejection
(``sluice_rejections_total``) other than the requests wrk cuts at the end of each run (``client_disconnected``, at
most one per connection), a refused admin call or one whose answer does not show C in or out as asked, a stray
request, a C that got no request within 0.4 s of being brought in (unless wrk's run had ended by then).

Modules: ``probes`` (the admin calls and the reads of the simulators), ``rounds`` (one wrk run with its changes;
the admin calls' cost with no load), ``report`` (summary, failures, tables), ``__main__`` (processes, the run).
Output: markdown tables on stdout, everything (each round, each change) in bench/results/replica_change.json.
"""
