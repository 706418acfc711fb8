"""What the state-fault tests share: gateway processes on one Redis, a bounded client load, and the gateways'
own account (metrics) of degraded mode."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.gateway_process import GatewayProcess

MODEL = "m"


@contextmanager
def gateway_processes(config: dict[str, Any], tmp: Path, count: int) -> Iterator[list[GatewayProcess]]:
    path = tmp / "sluice.yaml"
    path.write_text(yaml.safe_dump(config))
    procs = [GatewayProcess(path, tmp / f"gateway{i}.log") for i in range(count)]
    try:
        for p in procs:
            p.wait_healthy()
        yield procs
    finally:
        for p in procs:
            p.stop()


def metric(gateway: GatewayProcess, name: str) -> float:
    for family in text_string_to_metric_families(httpx.get(gateway.url + "/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"no {name} in /metrics")


def degraded(gateways: list[GatewayProcess]) -> list[float]:
    return [metric(g, "sluice_quota_store_degraded") for g in gateways]


def degraded_events(gateways: list[GatewayProcess]) -> list[float]:
    return [metric(g, "sluice_quota_store_degraded_events_total") for g in gateways]


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    doc: Any


@dataclass
class Load:
    """``workers`` clients posting ``body`` with ``key`` round-robin over the gateways until stopped."""

    gateways: list[GatewayProcess]
    key: str
    body: dict[str, Any]
    workers: int
    refused_pause_s: float = 0.02  # a refused client waits this long before asking again
    answers: list[Answer] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        urls = itertools.cycle(g.url for g in self.gateways)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(headers={"authorization": f"Bearer {self.key}"}, timeout=timeout) as http:
            async def worker() -> None:
                while not stop.is_set():
                    async with http.post(next(urls) + "/v1/chat/completions", json=self.body) as r:
                        doc = await r.json(content_type=None)
                        self.answers.append(Answer(r.status, dict(r.headers), doc))
                    if r.status != 200:
                        await asyncio.sleep(self.refused_pause_s)

            await asyncio.gather(*(worker() for _ in range(self.workers)))

    def statuses(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for a in self.answers:
            counts[a.status] = counts.get(a.status, 0) + 1
        return counts


async def burst(gateways: list[GatewayProcess], key: str, count: int, body: dict[str, Any]) -> list[int]:
    """``count`` concurrent requests, spread over the gateways round-robin: their statuses."""
    urls = itertools.cycle(g.url for g in gateways)
    async with aiohttp.ClientSession(headers={"authorization": f"Bearer {key}"}) as http:
        async def one(url: str) -> int:
            async with http.post(url + "/v1/chat/completions", json=body) as r:
                await r.read()
                return r.status

        return list(await asyncio.gather(*(one(next(urls)) for _ in range(count))))


def wait_for(predicate: Any, timeout_s: float = 15.0) -> bool:
    """Poll (a bound on waiting, not a timing assertion)."""
    from tests.conftest import wait_until

    return wait_until(predicate, timeout_s)
