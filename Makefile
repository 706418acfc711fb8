# Benchmarks: each script in bench/ starts and stops its own processes; results in bench/results/*.json,
# docs/benchmarks.md rewritten by bench/suite.py. Tests: python -m pytest -q (see README).
PYTHON ?= python

.PHONY: bench bench-docs bench-vllm

bench:          ## run every benchmark (overhead, upstream client, limiter, overload, vLLM, vLLM comparison) and rewrite the docs
	$(PYTHON) bench/suite.py

bench-docs:     ## rewrite docs/benchmarks.md from the saved results, running nothing
	$(PYTHON) bench/suite.py --reuse

bench-vllm:     ## only sluice bench vs vLLM's serving benchmark (needs /opt/vllm-venv)
	$(PYTHON) bench/suite.py --only vllm_compare
