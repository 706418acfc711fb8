"""The load scraper on a real vLLM's /metrics."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from sluice.clock import MonotonicClock
from sluice.engines import LoadSample, LoadScraper, Replica
from sluice.engines.dialects import VLLM
from tests.vllm.engine_process import VllmProcess

pytestmark = pytest.mark.vllm


async def test_real_vllm_metric_names(vllm_server: VllmProcess) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(vllm_server.url + "/metrics") as resp:
            text = await resp.text()
    assert "vllm:num_requests_running{" in text and "vllm:num_requests_waiting{" in text
    assert any(f"{name}{{" in text for name in VLLM.metrics.kv_usage)


async def test_scraper_sees_real_vllm_working(vllm_server: VllmProcess) -> None:
    replica = Replica(vllm_server.url, "vllm")
    scraper = LoadScraper([replica], MonotonicClock(), interval_s=0.01)
    try:
        await scraper.scrape_once()
        idle = scraper.latest(replica.url)
        assert idle is not None and idle.running == 0 and idle.waiting == 0 and 0 <= idle.kv_usage < 1
        seen: list[LoadSample] = []
        deadline = asyncio.get_running_loop().time() + 60  # waves of short requests until one is caught running
        async with aiohttp.ClientSession() as http:
            while not any(s.running >= 1 and s.kv_usage > 0 for s in seen):
                assert asyncio.get_running_loop().time() < deadline, seen[-5:]
                load = asyncio.gather(*(_generate(http, vllm_server.url) for _ in range(6)))
                while not load.done():
                    await scraper.scrape_once()
                    sample = scraper.latest(replica.url)
                    assert sample is not None
                    seen.append(sample)
                    await asyncio.sleep(0.005)
                await load
        assert all(0 <= s.kv_usage <= 1 and s.running >= 0 and s.waiting >= 0 for s in seen)
    finally:
        await scraper.stop()


async def _generate(http: aiohttp.ClientSession, url: str) -> None:
    body = {"model": "tiny", "prompt": "one two three " * 20, "max_tokens": 16, "ignore_eos": True}
    async with http.post(url + "/v1/completions", json=body) as resp:
        assert resp.status == 200, await resp.text()
        await resp.read()
