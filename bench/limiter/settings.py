"""The limiter benchmark's stores, concurrencies, target and results path."""

from __future__ import annotations

import sys

from bench.harness import RESULTS_DIR

RESULTS = RESULTS_DIR / "limiter.json"
GATEWAY_CPU, LOAD_CPU = "1", "0"
STORES = ("memory", "redis_direct", "redis_gateway")
STORE_LABELS = {
    "memory": "MemoryStore",
    "redis_direct": "RedisStore (direct)",
    "redis_gateway": "open_store(redis://) = FailoverStore(RedisStore), as the gateway",
}
CONCURRENCIES = (1, 64)
TARGET_PCT = 80.0


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
