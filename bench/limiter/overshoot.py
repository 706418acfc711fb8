"""Part 2: how far bursts overshoot a limit: fixed-window and post-hoc models against ours on Redis."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import uvloop

from bench.harness import (
    MODEL,
)
from bench.limiter.decisions import DegradedCounter
from bench.limiter.settings import log
from sluice.clock import MonotonicClock
from sluice.config import QuotaSettings, TierSettings
from sluice.errors import RateLimitError
from sluice.identity import Principal
from sluice.quota import (
    Price,
    QuotaLimiter,
    QuotaPolicy,
    open_store,
)

# ---------------------------------------------------------------------------------------------- part 2: overshoot


class FixedWindowModel:
    """MODEL of a per-process fixed-window counter (slowapi's default strategy on its default memory storage):
    one counter per process, reset when the wall clock enters a new window. Not the real library."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self.window = -1
        self.count = 0

    def hit(self, now: float) -> bool:
        window = math.floor(now / self.window_s)
        if window != self.window:
            self.window, self.count = window, 0
        if self.count >= self.limit:
            return False
        self.count += 1
        return True


def fixed_window_boundary(processes: int, limit: int, per_burst: int) -> dict[str, Any]:
    """``per_burst`` requests 0.5 s before the minute boundary, as many 0.5 s after, round-robin over processes."""
    gateways = [FixedWindowModel(limit, 60.0) for _ in range(processes)]
    admitted = 0
    for now in (59.5, 60.5):
        for i in range(per_burst):
            admitted += gateways[i % processes].hit(now)
    return {"model": "fixed window per process (slowapi-like)", "processes": processes, "limit": limit,
            "period": "minute", "sent": 2 * per_burst, "window_s": 1.0, "admitted": admitted,
            "admitted_over_limit": admitted / limit}


async def ours_boundary(redis_url: str, clients: int, limit: int, per_burst: int, tag: str) -> dict[str, Any]:
    """Ours, real: the same two bursts 1 s apart (Redis' clock), ``clients`` limiters sharing one Redis."""
    tier = TierSettings.model_validate({"requests": f"{limit}/minute"})
    limiters = [QuotaLimiter(QuotaPolicy({"t": tier}, QuotaSettings(gateway_replicas=clients)),
                             open_store(redis_url, QuotaSettings(gateway_replicas=clients), MonotonicClock()),
                             MonotonicClock()) for _ in range(clients)]
    principal = Principal(key_id=f"boundary-{tag}", user="u", tenant="t", tier="t")
    price = Price(prompt_tokens=10, max_output_tokens=10)

    async def one(i: int) -> bool:
        try:
            await limiters[i % clients].reserve(principal, MODEL, price)
            return True
        except RateLimitError:
            return False

    admitted = 0
    t0 = time.monotonic()
    try:
        for burst in range(2):
            if burst:
                await asyncio.sleep(max(0.0, t0 + 1.0 - time.monotonic()))
            admitted += sum(await asyncio.gather(*(one(i) for i in range(per_burst))))
        elapsed = time.monotonic() - t0
    finally:
        for lim in limiters:
            await lim.close()
            await lim.store.close()
    return {"model": "ours (GCRA in Redis, real)", "processes": clients, "limit": limit, "period": "minute",
            "sent": 2 * per_burst, "window_s": round(elapsed, 3), "admitted": admitted,
            "admitted_over_limit": admitted / limit}


class PostHocModel:
    """MODEL of post-hoc token charging (LiteLLM-style TPM limit): before the call, refuse only if the tokens
    already charged this minute reach the budget; after the response, add the request's tokens. The counter is
    modelled as perfectly shared and instantly consistent across processes (the baseline's best case)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.charged = 0

    def check(self) -> bool:
        return self.charged < self.budget

    def charge(self, tokens: int) -> None:
        self.charged += tokens


async def posthoc_burst(budget: int, k: int, prompt: int, answer: int, processes: int) -> dict[str, Any]:
    model = PostHocModel(budget)
    admitted = 0

    async def request() -> None:
        nonlocal admitted
        if not model.check():
            return
        admitted += 1
        await asyncio.sleep(0.05)  # the engine generates the long answer; nothing is charged meanwhile
        model.charge(prompt + answer)

    await asyncio.gather(*(request() for _ in range(k)))
    return {"model": "post-hoc charging (LiteLLM-like), shared counter", "processes": processes,
            "budget_tokens_per_minute": budget, "concurrent_requests": k, "tokens_per_request": prompt + answer,
            "admitted": admitted, "admitted_tokens": model.charged, "admitted_over_limit": model.charged / budget}


async def ours_tokens_burst(redis_url: str, budget: int, k: int, prompt: int, answer: int, clients: int,
                            tag: str) -> dict[str, Any]:
    """Ours, real: reserve prompt + max_tokens up front, all or nothing, 4 limiters sharing one Redis."""
    tier = TierSettings.model_validate({"tokens": f"{budget}/minute"})
    quota = QuotaSettings(gateway_replicas=clients)
    observer = DegradedCounter()
    limiters = [QuotaLimiter(QuotaPolicy({"t": tier}, quota), open_store(redis_url, quota, MonotonicClock(), observer),
                             MonotonicClock()) for _ in range(clients)]
    principal = Principal(key_id=f"tokens-{tag}", user="u", tenant="t", tier="t")
    price = Price(prompt_tokens=prompt, max_output_tokens=answer)
    admitted = 0
    charged = 0

    async def request(i: int) -> None:
        nonlocal admitted, charged
        limiter = limiters[i % clients]
        try:
            reservation = await limiter.reserve(principal, MODEL, price)
        except RateLimitError:
            return
        admitted += 1
        await asyncio.sleep(0.05)  # the long answer: every token of max_tokens is generated
        await limiter.settle(reservation, prompt, answer)
        charged += prompt + answer

    try:
        await asyncio.gather(*(request(i) for i in range(k)))
    finally:
        for lim in limiters:
            await lim.close()
            await lim.store.close()
    return {"model": "ours (reserve prompt+max_tokens in Redis, real)", "processes": clients,
            "budget_tokens_per_minute": budget, "concurrent_requests": k, "tokens_per_request": prompt + answer,
            "admitted": admitted, "admitted_tokens": charged, "admitted_over_limit": charged / budget,
            "degraded_switches": observer.went_down}


def part_overshoot(redis_url: str) -> dict[str, Any]:
    limit, budget, k, prompt, answer = 100, 100_000, 64, 1000, 4000
    tag = str(int(time.time() * 1000))
    fixed = [fixed_window_boundary(n, limit, 2 * 4 * limit) for n in (1, 4)]
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        ours_fixed = [runner.run(ours_boundary(redis_url, n, limit, 2 * 4 * limit, f"{tag}-{n}")) for n in (1, 4)]
        posthoc = runner.run(posthoc_burst(budget, k, prompt, answer, 4))
        ours_tokens = runner.run(ours_tokens_burst(redis_url, budget, k, prompt, answer, 4, tag))
    log(f"overshoot: fixed window {[r['admitted'] for r in fixed]}, ours {[r['admitted'] for r in ours_fixed]}, "
        f"post-hoc {posthoc['admitted_tokens']}, ours tokens {ours_tokens['admitted_tokens']}")
    return {
        "request_burst": {"limit_per_minute": limit, "sent_per_burst": 2 * 4 * limit,
                          "bursts": "0.5 s before and 0.5 s after a minute boundary (model); 1 s apart (ours)",
                          "results": fixed + ours_fixed},
        "token_burst": {"budget_tokens_per_minute": budget, "concurrent": k, "prompt_tokens": prompt,
                        "answer_tokens": answer, "results": [posthoc, ours_tokens]},
    }
