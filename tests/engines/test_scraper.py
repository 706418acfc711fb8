"""The load scraper: each dialect's names read from the simulator's real /metrics, fallbacks, staleness,
and replicas that are down."""

from __future__ import annotations

import asyncio
import math
import socket

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.clock import FakeClock, MonotonicClock
from sluice.config import SimSettings
from sluice.engines import LoadScraper, Replica, ScrapeError, parse_load
from sluice.engines.dialects import VLLM
from sluice.sim import SimServer


async def _load(url: str, n: int) -> list[asyncio.Task[None]]:
    async def one(http: aiohttp.ClientSession) -> None:
        body = {"model": "m", "messages": [{"role": "user", "content": "count " * 40}], "max_tokens": 200,
                "stream": True}
        async with http.post(url + "/v1/chat/completions", json=body) as resp:
            async for _ in resp.content:
                pass

    http = aiohttp.ClientSession()
    tasks = [asyncio.create_task(one(http)) for _ in range(n)]
    tasks.append(asyncio.create_task(_close_when_done(http, tasks[:])))
    return tasks


async def _close_when_done(http: aiohttp.ClientSession, tasks: list[asyncio.Task[None]]) -> None:
    try:
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await http.close()


async def _until(predicate, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("dialect", ["vllm", "sglang", "lmdeploy"])
async def test_each_dialect_is_read_from_the_simulators_metrics(dialect: str) -> None:
    # The simulated engine runs on a clock that never moves: after its first step, its state holds still.
    settings = SimSettings(dialect=dialect, max_num_seqs=2, block_size=16, num_kv_blocks=64,  # type: ignore[arg-type]
                           max_model_len=512)
    async with await SimServer.start(settings, model_name="m", clock=FakeClock()) as sim:
        replica = Replica(sim.url, dialect)  # type: ignore[arg-type]
        scraper = LoadScraper([replica], FakeClock(start=100.0))
        try:
            await scraper.scrape_once()
            idle = scraper.latest(sim.url)
            assert idle is not None and (idle.running, idle.waiting, idle.kv_usage) == (0, 0, 0)
            tasks = await _load(sim.url, 5)
            await _until(lambda: sim.engine.num_running + sim.engine.num_waiting == 5)
            await scraper.scrape_once()
            sample = scraper.latest(sim.url)
            assert sample is not None and sample.scraped_at == 100.0
            assert sample.running == sim.engine.num_running == 2
            assert sample.waiting == sim.engine.num_waiting == 3
            assert sample.kv_usage == pytest.approx(sim.engine.kv_usage) and 0 < sample.kv_usage < 1
            for task in tasks:
                task.cancel()
        finally:
            await scraper.stop()


def test_older_vllm_kv_name_is_the_fallback() -> None:
    text = ('# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{model_name="m"} 3.0\n'
            '# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{model_name="m"} 1.0\n'
            '# TYPE vllm:gpu_cache_usage_perc gauge\nvllm:gpu_cache_usage_perc{model_name="m"} 0.25\n')
    sample = parse_load(text, VLLM.metrics, scraped_at=5.0)
    assert (sample.running, sample.waiting, sample.kv_usage, sample.scraped_at) == (3, 1, 0.25, 5.0)


def test_series_are_summed_and_kv_is_the_fullest() -> None:
    text = ''.join(
        f'vllm:num_requests_running{{engine="{e}",model_name="m"}} {r}\n'
        f'vllm:num_requests_waiting{{engine="{e}",model_name="m"}} {w}\n'
        f'vllm:kv_cache_usage_perc{{engine="{e}",model_name="m"}} {kv}\n'
        f'vllm:gpu_cache_usage_perc{{engine="{e}",model_name="m"}} 0.99\n'  # the newer name wins
        for e, r, w, kv in ((0, 2, 1, 0.5), (1, 4, 0, 0.75))
    ) + 'vllm:time_to_first_token_seconds_bucket{le="0.1",model_name="m"} 7.0\n'
    sample = parse_load(text, VLLM.metrics, scraped_at=0.0)
    assert (sample.running, sample.waiting, sample.kv_usage) == (6, 1, 0.75)


def test_missing_gauges_and_garbage_are_scrape_errors() -> None:
    with pytest.raises(ScrapeError, match="vllm:kv_cache_usage_perc or vllm:gpu_cache_usage_perc"):
        parse_load("vllm:num_requests_running 1\nvllm:num_requests_waiting 0\n", VLLM.metrics, 0.0)
    with pytest.raises(ScrapeError):
        parse_load("vllm:num_requests_running one\n", VLLM.metrics, 0.0)
    with pytest.raises(ScrapeError):
        parse_load("<html>not metrics</html>", VLLM.metrics, 0.0)
    with pytest.raises(ScrapeError, match="finite"):
        parse_load("vllm:num_requests_running NaN\nvllm:num_requests_waiting 0\nvllm:kv_cache_usage_perc 0\n",
                   VLLM.metrics, 0.0)


@given(st.text(alphabet='vlm:_numrequestsingkvcache{}"=,\\ #\n.0123456789eE+-NaInf', max_size=200))
@settings(max_examples=200, deadline=None)
def test_any_text_is_a_sample_or_a_scrape_error(noise: str) -> None:
    base = "vllm:num_requests_running 1\nvllm:num_requests_waiting 0\nvllm:kv_cache_usage_perc 0.5\n"
    for text in (noise, base + noise, noise + base, base[:40] + noise + base[40:]):
        try:
            sample = parse_load(text, VLLM.metrics, 0.0)
        except ScrapeError:
            continue
        assert 0 <= sample.kv_usage <= 1
        assert math.isfinite(sample.running) and math.isfinite(sample.waiting)


async def test_samples_go_stale_on_the_injected_clock() -> None:
    clock = FakeClock()
    async with await SimServer.start(SimSettings(), model_name="m", clock=FakeClock()) as sim:
        scraper = LoadScraper([Replica(sim.url)], clock, max_age_s=1.0)
        assert scraper.fresh(sim.url) is None and scraper.is_stale(sim.url)
        await scraper.scrape_once()
        await scraper.stop()
    sample = scraper.fresh(sim.url)
    assert sample is not None and not scraper.is_stale(sim.url)
    clock.advance(1.0)
    assert scraper.fresh(sim.url) is sample
    clock.advance(0.01)
    assert scraper.is_stale(sim.url) and scraper.fresh(sim.url) is None
    assert scraper.latest(sim.url) is sample  # still there for whoever wants the last known value


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


async def test_a_replica_that_is_down_does_not_stop_the_others() -> None:
    dead = _closed_port_url()
    async with await SimServer.start(SimSettings(speed=1e6), model_name="m") as sim:
        async with LoadScraper([Replica(dead), Replica(sim.url)], MonotonicClock(), interval_s=0.02) as scraper:
            await _until(lambda: scraper.latest(sim.url) is not None and scraper.last_error(dead) is not None)
            first = scraper.latest(sim.url)
            assert first is not None
            await _until(lambda: scraper.latest(sim.url).scraped_at > first.scraped_at)  # type: ignore[union-attr]
            assert scraper.latest(dead) is None and scraper.is_stale(dead)
            assert "ClientConnectorError" in (scraper.last_error(dead) or "")
            assert scraper.last_error(sim.url) is None


async def test_a_replica_that_goes_down_goes_stale_and_comes_back() -> None:
    settings = SimSettings(speed=1e6)
    sim = await SimServer.start(settings, model_name="m")
    port = sim.port
    clock = MonotonicClock()
    async with LoadScraper([Replica(sim.url)], clock, interval_s=0.02, max_age_s=0.2, timeout_s=0.2) as scraper:
        await _until(lambda: scraper.fresh(sim.url) is not None)
        await sim.stop()
        await _until(lambda: scraper.last_error(sim.url) is not None)
        await _until(lambda: scraper.fresh(sim.url) is None)
        sim = await SimServer.start(settings, model_name="m", port=port)
        try:
            await _until(lambda: scraper.fresh(sim.url) is not None)
            assert scraper.last_error(sim.url) is None
        finally:
            await sim.stop()
