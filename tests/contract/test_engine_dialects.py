"""One suite over every engine dialect: the simulator speaking it, behind a real gateway (or read by the gateway's
own scraper), checked against the facts of ``sluice.dialects``.

For each dialect: the probes it answers (and only those), its metrics read by the scraper (queue depth, KV use),
priority sent in its convention (vLLM: lower first; SGLang: higher first; LMDeploy: none), its overload turned
into 503 engine_overloaded, and a stream that ends with usage.
"""

from __future__ import annotations

import ast
import asyncio
import json
import threading
import typing
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import httpx
import orjson
import pytest
from aiohttp import web

from sluice.clock import MonotonicClock
from sluice.config import Dialect, SimSettings, parse_settings
from sluice.dialects import DIALECT_NAMES, DIALECTS, facts_for
from sluice.engines import LoadScraper, Replica, ScrapeError
from sluice.identity import hash_key
from tests.conftest import LiveSim, serve_gateway, wait_until

CHAT = "/v1/chat/completions"
KEY = "sk-sluice-dialect-contract-0123456789"
AUTH = {"authorization": f"Bearer {KEY}"}
LONG = {"messages": [{"role": "user", "content": "go on"}], "max_tokens": 4000, "ignore_eos": True, "stream": True}
SHORT = {"messages": [{"role": "user", "content": "hello there"}], "max_tokens": 5}
SRC = Path(__file__).resolve().parents[2] / "src" / "sluice"

pytestmark = pytest.mark.parametrize("dialect", DIALECT_NAMES)


def gateway_settings(dialect: Dialect, url: str, **admission: object) -> typing.Any:
    return parse_settings({
        "models": [{"name": "m", "engine": {"dialect": dialect, "urls": [url], "served_model": "sim-model"},
                    "admission": {"watch_load": False, **admission}}],
        "tiers": {"t": {"priority": 5}},
        "keys": [{"id": "k", "hash": hash_key(KEY), "tier": "t"}],
    })


def first_line(lines: Iterator[str]) -> str:
    return next(line for line in lines if line.startswith("data: "))


# -- probes ---------------------------------------------------------------------------------------------------


def test_the_simulator_answers_its_dialects_probes_and_no_others(dialect: Dialect) -> None:
    facts = facts_for(dialect)
    others = {p for f in DIALECTS.values() for p in (f.health_path, f.ready_path, f.model_info_path) if p}
    own = {p for p in (facts.health_path, facts.ready_path, facts.model_info_path) if p}
    with LiveSim(SimSettings(dialect=dialect, speed=1e6)) as sim:
        for path in sorted(others):
            status = httpx.get(sim.url + path, timeout=10).status_code
            assert status == (200 if path in own else 404), (dialect, path, status)


def test_the_gateway_is_ready_through_the_dialects_readiness_probe(dialect: Dialect) -> None:
    with LiveSim(SimSettings(dialect=dialect, speed=1e6)) as sim:
        with serve_gateway(gateway_settings(dialect, sim.url)) as gw:
            r = httpx.get(gw.url + "/ready", timeout=10)
            assert r.status_code == 200 and r.json()["models"] == {"m": True}, r.text
        # taken for another dialect, the engine is ready only if it answers that dialect's readiness probe
        other = next(d for d in DIALECT_NAMES if facts_for(d).ready_path != facts_for(dialect).ready_path)
        answers = facts_for(other).ready_path in {facts_for(dialect).health_path, facts_for(dialect).ready_path}
        with serve_gateway(gateway_settings(other, sim.url)) as gw:
            r = httpx.get(gw.url + "/ready", timeout=10)
            assert (r.status_code, r.json()["models"]) == ((200, {"m": True}) if answers else (503, {"m": False}))


# -- metrics --------------------------------------------------------------------------------------------------


def test_the_scraper_reads_queue_depth_and_kv_use_in_the_dialects_names(dialect: Dialect) -> None:
    # one seat: a long stream runs, a second waits; the engine's own state is what the scraper must read
    with LiveSim(SimSettings(dialect=dialect, max_num_seqs=1)) as sim:
        with httpx.Client(base_url=sim.url, timeout=30) as http:
            with http.stream("POST", CHAT, json={"model": "sim-model", **LONG}) as running:
                lines = running.iter_lines()
                first_line(lines)
                with http.stream("POST", CHAT, json={"model": "sim-model", **LONG}) as waiting:
                    assert wait_until(lambda: sim.engine.num_waiting == 1)
                    sample = asyncio.run(scrape(sim.url, dialect))
                    with pytest.raises(ScrapeError):  # another dialect's names are not there
                        other = next(d for d in DIALECT_NAMES if d != dialect)
                        asyncio.run(scrape(sim.url, other))
                    waiting.close()
    assert (sample.running, sample.waiting) == (1.0, 1.0)
    assert 0.0 < sample.kv_usage <= 1.0  # the running stream holds KV blocks


async def scrape(url: str, dialect: Dialect) -> typing.Any:
    replica = Replica(url, dialect)
    scraper = LoadScraper([replica], MonotonicClock())
    async with scraper:
        return await scraper.scrape(replica)


# -- priority -------------------------------------------------------------------------------------------------


class RecordingProxy:
    """Forwards every request to the simulator, keeping the JSON bodies it is sent (whole answers only)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.bodies: list[dict[str, typing.Any]] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _forward(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.method == "POST":
            self.bodies.append(orjson.loads(body))
        async with aiohttp.ClientSession() as http:
            async with http.request(request.method, self.upstream + request.path_qs, data=body,
                                    headers={"content-type": request.content_type}) as resp:
                return web.Response(body=await resp.read(), status=resp.status, content_type=resp.content_type)

    async def _start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        return f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    def __enter__(self) -> RecordingProxy:
        self.thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


def test_priority_reaches_the_engine_in_the_dialects_convention(dialect: Dialect) -> None:
    expected = {"vllm": (-5, 3), "sglang": (5, -3), "lmdeploy": (None, None)}[dialect]  # (tier's 5, hint -3)
    settings = SimSettings(dialect=dialect, speed=1e6, scheduling_policy="priority")
    with LiveSim(settings) as sim, RecordingProxy(sim.url) as proxy:
        with serve_gateway(gateway_settings(dialect, proxy.url, priority_to_engine=True)) as gw:
            plain = httpx.post(gw.url + CHAT, headers=AUTH, json={"model": "m", **SHORT, "priority": 99}, timeout=30)
            hinted = httpx.post(gw.url + CHAT, headers={**AUTH, "x-sluice-priority": "-3"},
                                json={"model": "m", **SHORT}, timeout=30)
    assert plain.status_code == 200 and hinted.status_code == 200, (plain.text, hinted.text)
    sent = [b.get("priority") for b in proxy.bodies]
    assert tuple(sent) == expected, sent


# -- overload -------------------------------------------------------------------------------------------------


def test_the_engines_overload_is_503_engine_overloaded(dialect: Dialect) -> None:
    with LiveSim(SimSettings(dialect=dialect, max_num_seqs=1, max_waiting=0)) as sim:
        with serve_gateway(gateway_settings(dialect, sim.url, enabled=False)) as gw:
            with httpx.Client(base_url=gw.url, headers=AUTH, timeout=30) as http:
                with http.stream("POST", CHAT, json={"model": "m", **LONG}) as running:
                    lines = running.iter_lines()
                    first_line(lines)  # the engine's only seat is taken, and its queue holds nothing
                    direct = httpx.post(sim.url + CHAT, json={"model": "sim-model", **SHORT}, timeout=30)
                    refused = http.post(CHAT, json={"model": "m", **SHORT})
    message = direct.json()["error"]["message"]
    assert direct.status_code == 503 and facts_for(dialect).overload.matches(direct.status_code, message)
    assert refused.status_code == 503, refused.text
    assert refused.headers["x-sluice-reason"] == "engine_overloaded"
    assert refused.json()["error"]["code"] == "engine_overloaded"


# -- streams --------------------------------------------------------------------------------------------------


def test_a_stream_ends_with_usage(dialect: Dialect) -> None:
    with LiveSim(SimSettings(dialect=dialect, speed=1e6)) as sim:
        with serve_gateway(gateway_settings(dialect, sim.url)) as gw:
            with httpx.Client(base_url=gw.url, headers=AUTH, timeout=30) as http:
                body = {"model": "m", **SHORT, "ignore_eos": True, "stream": True,
                        "stream_options": {"include_usage": True}}
                with http.stream("POST", CHAT, json=body) as r:
                    assert r.status_code == 200
                    frames = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    content = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == [] and usage["completion_tokens"] == len(content) == SHORT["max_tokens"]
    assert usage["prompt_tokens"] > 0 and usage["total_tokens"] == usage["prompt_tokens"] + len(content)


# -- one source -----------------------------------------------------------------------------------------------


def _code_strings(path: Path) -> Iterator[str]:
    """The string constants of a module, without its docstrings."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.value


def test_the_dialects_facts_are_written_only_in_the_table(dialect: Dialect) -> None:
    facts = facts_for(dialect)
    distinctive = {*facts.metrics.all_names(), *(p for p in (facts.ready_path, facts.model_info_path)
                                                 if p and p != "/health")}
    distinctive |= {f for f in (facts.flags.module, *facts.flags.always) if f}
    found = [(str(path.relative_to(SRC)), s) for path in SRC.rglob("*.py") if path != SRC / "dialects.py"
             for s in _code_strings(path) if any(fact in s for fact in distinctive)]
    assert found == []


def test_the_config_accepts_exactly_the_tables_dialects(dialect: Dialect) -> None:
    assert typing.get_args(Dialect) == DIALECT_NAMES
    assert SimSettings(dialect=dialect).dialect == dialect
