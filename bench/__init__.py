"""Sluice's benchmarks: each ``python -m bench.<name>`` (run from the repository root) starts and stops its own
processes and writes ``bench/results/<name>.json``; ``bench.harness`` holds what they share (processes, ports,
CPU pinning, wrk, vLLM start and stop, the results file). ``python -m bench.suite`` runs them all and rewrites
docs/benchmarks.md. Only public ``sluice`` APIs are used here."""
