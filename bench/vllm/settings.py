"""What the comparison runs: the paths compared and where results go."""

from __future__ import annotations

from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent
RESULTS = BENCH / "results" / "vllm.json"
TINY_LLAMA = BENCH / "tiny_llama.py"
SERVED = "tiny"
PATHS = ("direct", "sluice")
