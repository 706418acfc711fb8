# Benchmarks: each benchmark in bench/ (python -m bench.NAME) starts and stops its own processes; results in bench/results/*.json,
# docs/benchmarks.md rewritten by python -m bench.suite. Tests: python -m pytest -q (see README).
PYTHON ?= python

.PHONY: bench bench-docs bench-vllm

bench:          ## run every benchmark (overhead, upstream client, limiter, overload, vLLM, vLLM comparison) and rewrite the docs
	$(PYTHON) -m bench.suite

bench-docs:     ## rewrite docs/benchmarks.md from the saved results, running nothing
	$(PYTHON) -m bench.suite --reuse

bench-vllm:     ## only sluice bench vs vLLM's serving benchmark (needs /opt/vllm-venv)
	$(PYTHON) -m bench.suite --only vllm_compare
