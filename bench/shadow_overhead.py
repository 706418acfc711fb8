"""What shadow limits cost the quota step (quota/_shadow.py): one reserve + settle, per request, in-process.

    python -m bench.shadow_overhead                  # memory store; --requests 20000 --rounds 5
    python -m bench.shadow_overhead --redis          # also a real redis-server (started here on a free port)

Three cases on the same limiter: ``none`` (no shadow anywhere in the configuration), ``other tier`` (a shadow on
another tier: the caller pays the check that none applies to it) and ``shadowed`` (the caller's tier has a shadow:
one more store decision, run beside the live one, and one more settlement). For each: the median CPU time per
request over the rounds (``time.process_time``; the store's Redis server is another process) and the store calls
per request, counted (the claim: no extra store call unless a shadow applies). Rates are far above what a round
uses, so every request is granted live and in shadow. Output: a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Sequence
from typing import Any

from sluice.clock import MonotonicClock
from sluice.config import QuotaSettings, TierSettings
from sluice.identity import Principal
from sluice.quota import MemoryStore, Price, QuotaLimiter, QuotaPolicy, RedisStore

CALLER = Principal(key_id="k1", user="u1", tenant="t1", tier="free")
PRICE = Price(prompt_tokens=50, max_output_tokens=100)
LIVE = {"requests": "100000000/hour", "tokens": "100000000000/hour"}
CASES = {
    "none": {"free": LIVE},
    "other tier": {"free": LIVE, "pro": {**LIVE, "shadow": {"requests": "1000000/hour"}}},
    "shadowed": {"free": {**LIVE, "shadow": {"requests": "90000000/hour"}}},
}


class Counting:
    """A store that counts the calls reaching it."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.calls = inner, 0

    async def acquire(self, buckets: Sequence[Any], leases: Sequence[Any], lease_id: str, *rest: Any) -> Any:
        self.calls += 1
        return await self.inner.acquire(buckets, leases, lease_id, *rest)

    async def settle(self, *args: Any) -> None:
        self.calls += 1
        await self.inner.settle(*args)

    async def void(self, *args: Any) -> None:
        await self.inner.void(*args)

    async def renew(self, *args: Any) -> None:
        await self.inner.renew(*args)

    async def close(self) -> None:
        await self.inner.close()


async def one_round(store: Any, tiers: dict[str, Any], requests: int) -> tuple[float, float]:
    counting = Counting(store)
    policy = QuotaPolicy({n: TierSettings.model_validate(t) for n, t in tiers.items()}, QuotaSettings())
    limiter = QuotaLimiter(policy, counting, MonotonicClock())
    started = time.process_time()
    for _ in range(requests):
        await limiter.settle(await limiter.reserve(CALLER, "m", PRICE), 50, 20)
    cpu_s = time.process_time() - started
    await limiter.close()
    return cpu_s / requests * 1e6, counting.calls / requests


async def run(store_name: str, store: Any, requests: int, rounds: int) -> list[str]:
    rows = []
    for case, tiers in CASES.items():
        results = [await one_round(store, tiers, requests) for _ in range(rounds)]
        cpu_us = statistics.median(r[0] for r in results)
        rows.append(f"| {store_name} | {case} | {cpu_us:.1f} | {results[0][1]:.2f} |")
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--redis", action="store_true", help="also on a real redis-server")
    args = parser.parse_args()
    rows = ["| store | case | CPU µs per request (median) | store calls per request |", "|---|---|---|---|"]
    rows += await run("memory", MemoryStore(MonotonicClock()), args.requests, args.rounds)
    if args.redis:
        from tests.redis_server import RedisServer, redis_binary

        binary = redis_binary()
        if binary is None:
            raise SystemExit("no redis-server on PATH")
        server = RedisServer(binary).start()
        try:
            store = RedisStore.from_url(server.url, timeout_s=2.0)
            rows += await run("redis", store, max(1, args.requests // 10), args.rounds)
            await store.close()
        finally:
            server.kill()
    print("\n".join(rows))


if __name__ == "__main__":
    asyncio.run(main())
