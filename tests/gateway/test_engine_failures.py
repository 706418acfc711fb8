"""The gateway in front of a separate engine: streaming, disconnects, and engines that fail."""

from __future__ import annotations

import json

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sluice.config import SimSettings, parse_settings
from tests.conftest import LiveSim, metric_value, serve_gateway, wait_until
from tests.redis_server import free_port

CHAT = "/v1/chat/completions"
LONG = {"messages": [{"role": "user", "content": "go on"}], "max_tokens": 4000, "ignore_eos": True}


def gateway_for(urls, name="public-name", served_model=None):
    engine = {"urls": urls}
    if served_model:
        engine["served_model"] = served_model
    return serve_gateway(parse_settings({"auth": {"mode": "open"}, "models": [{"name": name, "engine": engine}]}))


@pytest.fixture(scope="module")
def slow_sim():
    # Real-time engine (about 8 ms a token): a 4000-token answer takes half a minute, far longer than the tests.
    with LiveSim(SimSettings(max_num_seqs=1, max_waiting=0), model_name="engine-name") as sim:
        yield sim


@pytest.fixture(scope="module")
def gateway(slow_sim):
    with gateway_for([slow_sim.url], served_model="engine-name") as live:
        yield live


def test_stream_is_passed_through_as_it_is_generated(gateway, slow_sim):
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        with client.stream("POST", CHAT, json={"model": "public-name", "stream": True, **LONG}) as r:
            assert r.status_code == 200
            lines = r.iter_lines()  # kept referenced: a dropped line iterator closes the stream
            for line in lines:
                if _has_content(line):
                    break
            e = slow_sim.engine
            assert e.num_running == 1, (e.num_running, e.num_waiting, e.generation_tokens_total, e.num_preemptions)
    assert wait_until(lambda: slow_sim.engine.num_running == 0), "closing the stream did not abort the engine request"


def _has_content(line: str) -> bool:
    if not line.startswith("data: {"):
        return False
    return bool(json.loads(line[6:])["choices"][0]["delta"].get("content"))


def test_disconnect_while_waiting_for_a_full_answer_aborts_the_engine_request(gateway, slow_sim):
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(gateway.url + CHAT, json={"model": "public-name", **LONG}, timeout=httpx.Timeout(30, read=0.5))
    assert wait_until(lambda: slow_sim.engine.num_running == 0), "the engine kept working for a client that left"
    assert wait_until(lambda: metric_value(gateway.url, "sluice_rejections_total", reason="client_disconnected",
                                           model="public-name"))


def test_engine_overload_is_503_never_429(gateway, slow_sim):
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        with client.stream("POST", CHAT, json={"model": "public-name", "stream": True, **LONG}) as r:
            lines = r.iter_lines()  # kept referenced: a dropped line iterator closes the stream
            next(lines)  # the engine's only seat is taken, and its queue holds nothing
            refused = client.post(CHAT, json={"model": "public-name", **LONG})
    assert refused.status_code == 503
    assert refused.headers["x-sluice-reason"] == "engine_overloaded"
    assert refused.json()["error"]["code"] == "engine_overloaded"
    assert wait_until(lambda: slow_sim.engine.num_running == 0)


def test_model_name_is_mapped_to_the_engines_own(gateway):
    r = httpx.post(gateway.url + CHAT, json={"model": "public-name", "messages": [{"role": "user", "content": "x"}],
                                             "max_tokens": 2}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "public-name"
    assert r.json()["usage"]["completion_tokens"] <= 2


def test_metrics_count_requests_by_route_model_and_status(gateway):
    wanted = {"model": "public-name", "route": "/v1/chat/completions", "tier": "default", "status": "200"}

    def count() -> float:
        for family in text_string_to_metric_families(httpx.get(gateway.url + "/metrics").text):
            for sample in family.samples:
                if sample.name == "sluice_requests_total" and sample.labels == wanted:
                    return sample.value
        return 0.0

    before = count()
    r = httpx.post(gateway.url + CHAT, json={"model": "public-name", "messages": [{"role": "user", "content": "x"}],
                                         "max_tokens": 1}, timeout=30)
    assert r.status_code == 200, r.text
    assert wait_until(lambda: count() == before + 1)  # recorded once the answer is sent
    text = httpx.get(gateway.url + "/metrics").text
    assert "sluice_request_duration_seconds_bucket" in text
    assert "sluice_tokens_total" in text


def test_ready_when_the_engine_answers(gateway):
    r = httpx.get(gateway.url + "/ready")
    assert r.status_code == 200
    assert r.json() == {"ready": True, "models": {"public-name": True}}


def test_unreachable_engine_is_502_and_not_ready():
    with gateway_for([f"http://127.0.0.1:{free_port()}"]) as live:
        r = httpx.post(live.url + CHAT, json={"model": "public-name", "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 502
        assert r.headers["x-sluice-reason"] == "engine_unreachable"
        assert r.json()["error"]["code"] == "engine_unreachable"
        assert httpx.get(live.url + "/ready").status_code == 503
        assert httpx.get(live.url + "/health").status_code == 200


def test_a_dead_replica_is_skipped_for_a_live_one(slow_sim):
    with gateway_for([f"http://127.0.0.1:{free_port()}", slow_sim.url], served_model="engine-name") as live:
        for _ in range(3):
            r = httpx.post(live.url + CHAT, json={"model": "public-name", "max_tokens": 1,
                                                  "messages": [{"role": "user", "content": "x"}]}, timeout=30)
            assert r.status_code == 200, r.text


def test_an_engine_dying_mid_stream_ends_the_stream_with_an_error_event():
    import asyncio
    import threading

    from aiohttp import web

    async def dying(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"choices":[{"index":0,"delta":{"content":"hel"}}]}\n\n')
        request.transport.close()  # the engine process dies
        return resp

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    async def start() -> web.AppRunner:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", dying)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return runner

    runner = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        with gateway_for([url]) as gw:
            with httpx.stream("POST", gw.url + CHAT, json={"model": "public-name", "stream": True,
                              "messages": [{"role": "user", "content": "x"}]}, timeout=10) as r:
                lines = [line for line in r.iter_lines() if line.startswith("data: ")]
            assert '"content":"hel"' in lines[0]
            assert json.loads(lines[-1][6:])["error"]["code"] == "engine_died"
            assert wait_until(lambda: metric_value(gw.url, "sluice_rejections_total", reason="engine_died",
                                                   model="public-name"))
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)


def test_time_to_first_token_starts_at_generated_text_not_at_the_role_chunk():
    from sluice.gateway._relay import has_generated_text

    assert not has_generated_text(b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n')
    assert has_generated_text(b'data: {"choices":[{"delta":{"content":" Hello"}}]}\n\n')
    assert has_generated_text(b'data: {"choices":[{"text":"x","index":0}]}\n\n')
    assert not has_generated_text(b'data: [DONE]\n\n')


async def test_a_stream_abandoned_before_it_began_still_gives_back_what_it_held():
    import asyncio

    from uvicorn.protocols.http.flow_control import FlowControl

    from sluice.gateway._disconnect import ClientDisconnected
    from sluice.gateway._exchange import Exchange
    from sluice.gateway._responses import write_reply
    from sluice.gateway.service import StreamReply

    relay_closed, given_back, written = [], [], []

    async def relay():
        try:
            yield b"data: {}\n\n"
            await asyncio.sleep(3600)
        finally:
            relay_closed.append(True)

    class Transport(asyncio.Transport):
        def write(self, data):
            written.append(data)

        def close(self):
            pass

        def is_closing(self):
            return True

    transport = Transport()
    exchange = Exchange(method="POST", path="/v1/chat/completions", headers=[], server=None, keep_alive=True,
                        expect_continue=False, transport=transport, flow=FlowControl(transport), default_headers=[],
                        on_complete=lambda: None, serve=None, app_state=None)
    exchange.connection_lost()  # the client is already gone
    with pytest.raises(ClientDisconnected):
        await write_reply(exchange, StreamReply(relay(), {}, on_close=lambda: given_back.append(True)))
    assert given_back == [True] and relay_closed == [True] and written == []
