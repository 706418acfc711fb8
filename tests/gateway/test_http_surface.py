"""The HTTP surface an OpenAI client meets: model retrieval, what 5xx bodies reveal, the operations port."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Awaitable, Callable, Iterator

import httpx
import openai
import pytest
from aiohttp import web

from sluice.config import parse_settings
from sluice.errors import ConfigError
from sluice.identity import generate_key, hash_key
from tests.conftest import serve_gateway
from tests.redis_server import free_port

KEY = generate_key()
ADMIN_KEY = generate_key()
CHAT = "/v1/chat/completions"
HELLO = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}
ADDRESS = re.compile(r"127\.0\.0\.1|localhost|:\d{2,5}\b")


@pytest.fixture(scope="module")
def keyed_gateway():
    settings = parse_settings({
        "models": [{"name": "m", "sim": {"speed": 50}}, {"name": "acme/tiny-chat", "sim": {"speed": 50}}],
        "keys": [{"id": "alice-key", "hash": hash_key(KEY), "user": "alice", "tenant": "acme"}],
    })
    with serve_gateway(settings) as live:
        yield live


def sdk(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


# --- GET /v1/models/{id} -----------------------------------------------------------------------------------------

def test_the_sdk_retrieves_a_model_by_its_id(keyed_gateway):
    with sdk(keyed_gateway.url, KEY) as client:
        model = client.models.retrieve("m")
        assert (model.id, model.object) == ("m", "model")
        assert client.models.retrieve("acme/tiny-chat").id == "acme/tiny-chat"  # an id with a slash


def test_an_unknown_model_is_404_model_not_found_in_openai_shape(keyed_gateway):
    with sdk(keyed_gateway.url, KEY) as client, pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("no-such-model")
    assert info.value.body["code"] == "model_not_found"
    assert info.value.body["param"] == "model"
    assert info.value.response.headers["x-sluice-reason"] == "not_found"


def test_retrieving_a_model_needs_the_same_key_as_listing_them(keyed_gateway):
    with sdk(keyed_gateway.url, "sk-sluice-wrong") as client, pytest.raises(openai.AuthenticationError):
        client.models.retrieve("m")
    assert httpx.get(keyed_gateway.url + "/v1/models/m").status_code == 401


def test_the_model_route_is_one_metrics_label_and_in_the_openapi_document(keyed_gateway):
    httpx.get(keyed_gateway.url + "/v1/models/m", headers={"authorization": f"Bearer {KEY}"})
    metrics = httpx.get(keyed_gateway.url + "/metrics").text
    assert 'route="/v1/models/{model:path}"' in metrics
    assert 'route="/v1/models/m"' not in metrics
    paths = httpx.get(keyed_gateway.url + "/openapi.json").json()["paths"]
    assert paths["/v1/models/{model}"]["get"]["parameters"][0]["name"] == "model"


# --- 5xx bodies never show where the engines are ------------------------------------------------------------------

class FakeEngine:
    """An engine on a real socket answering chat completions with ``handler``."""

    def __init__(self, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> None:
        self.handler = handler
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    def __enter__(self) -> str:
        async def start() -> web.AppRunner:
            app = web.Application()
            app.router.add_post(CHAT, self.handler)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            return runner

        self.runner = asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        return f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


def open_gateway(urls: list[str]):
    settings = parse_settings({"auth": {"mode": "open"}, "models": [{"name": "m", "engine": {"urls": urls}}]})
    return serve_gateway(settings)


def assert_no_address(body: str, url: str) -> None:
    port = url.rsplit(":", 1)[1]
    assert port not in body and "127.0.0.1" not in body, body
    assert not ADDRESS.search(body), body


def test_an_unreachable_engine_is_502_without_its_address():
    url = f"http://127.0.0.1:{free_port()}"
    with open_gateway([url]) as gw:
        r = httpx.post(gw.url + CHAT, json={"model": "m", **HELLO}, timeout=10)
    assert r.status_code == 502 and r.json()["error"]["code"] == "engine_unreachable"
    assert_no_address(r.text, url)
    assert r.headers["x-request-id"] in r.json()["error"]["message"]  # what to quote to the operator


def test_an_engine_500_is_502_without_its_address_or_its_words():
    async def failing(request: web.Request) -> web.StreamResponse:
        host = request.host  # an engine's error may well name itself
        return web.json_response({"error": {"message": f"worker at {host} crashed", "code": 500}}, status=500)

    with FakeEngine(failing) as url, open_gateway([url]) as gw:
        r = httpx.post(gw.url + CHAT, json={"model": "m", **HELLO}, timeout=10)
    assert r.status_code == 502 and r.json()["error"]["code"] == "engine_error"
    assert r.headers["x-sluice-reason"] == "engine_error"
    assert_no_address(r.text, url)
    assert "crashed" not in r.text


def test_an_engine_dying_mid_stream_ends_it_without_its_address():
    async def dying(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"choices":[{"index":0,"delta":{"content":"hel"}}]}\n\n')
        assert request.transport is not None
        request.transport.close()
        return resp

    with FakeEngine(dying) as url, open_gateway([url]) as gw:
        with httpx.stream("POST", gw.url + CHAT, json={"model": "m", "stream": True, **HELLO}, timeout=10) as r:
            events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert json.loads(events[-1][6:])["error"]["code"] == "engine_died"
    assert_no_address("\n".join(events), url)


def test_an_engines_own_too_long_refusal_reaches_the_client_as_context_length_exceeded():
    async def too_long(request: web.Request) -> web.StreamResponse:  # vLLM's answer: its status as the code
        message = ("This model's maximum context length is 2048 tokens. However, your prompt contains 3000 input "
                   "tokens, which exceeds this limit even without any output tokens.")
        return web.json_response({"error": {"message": message, "type": "BadRequestError", "param": "input_tokens",
                                            "code": 400}}, status=400)

    with FakeEngine(too_long) as url, open_gateway([url]) as gw, sdk(gw.url, "anything") as client:
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model="m", messages=HELLO["messages"], max_tokens=2)
    assert info.value.body["code"] == "context_length_exceeded"
    assert (info.value.body["type"], info.value.body["param"]) == ("invalid_request_error", "messages")


# --- the operations port -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def split_gateway() -> Iterator[tuple[str, str]]:
    ops_port = free_port()
    settings = parse_settings({
        "server": {"ops_port": ops_port},
        "auth": {"admin_key_hash": hash_key(ADMIN_KEY)},
        "models": [{"name": "m", "sim": {"speed": 50}}],
        "keys": [{"id": "alice-key", "hash": hash_key(KEY), "user": "alice", "tenant": "acme"}],
    })
    with serve_gateway(settings) as live:
        yield live.url, f"http://127.0.0.1:{ops_port}"


def test_metrics_and_admin_answer_on_the_ops_port_only(split_gateway):
    public, ops = split_gateway
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    for path in ("/metrics", "/admin/keys", "/admin/replicas"):
        refused = httpx.get(public + path, headers=admin)
        assert refused.status_code == 404, (path, refused.text)
        assert refused.json()["error"]["code"] == "not_found"
        assert httpx.get(ops + path, headers=admin).status_code == 200, path
    assert "sluice_requests_total" in httpx.get(ops + "/metrics").text
    assert httpx.post(public + "/metrics").status_code == 404  # not even a 405 telling the route is there
    assert httpx.post(ops + "/metrics").status_code == 405


def test_probes_answer_on_both_ports_and_inference_on_the_public_one_only(split_gateway):
    public, ops = split_gateway
    for base in (public, ops):
        assert httpx.get(base + "/health").status_code == 200
        assert httpx.get(base + "/ready").status_code == 200
        assert httpx.get(base + "/openapi.json").status_code == 200
    auth = {"authorization": f"Bearer {KEY}"}
    assert httpx.post(public + CHAT, json={"model": "m", **HELLO}, headers=auth, timeout=10).status_code == 200
    assert httpx.post(ops + CHAT, json={"model": "m", **HELLO}, headers=auth, timeout=10).status_code == 404


def test_the_ops_port_must_differ_from_the_public_one():
    with pytest.raises(ConfigError, match="is the public port"):
        parse_settings({"server": {"port": 9000, "ops_port": 9000}, "models": [{"name": "m", "sim": {}}]})


# --- x-ratelimit-* in open mode ----------------------------------------------------------------------------------

@pytest.mark.parametrize("limits, expected", [
    ({"tiers": {"default": {"requests": "10/minute", "tokens": "10000/minute"}}},
     {"requests": "10", "tokens": "10000"}),
    ({"quota": {"limits": [{"per": "global", "requests": "100/minute"}]}}, {"requests": "100"}),
    ({}, {}),  # no limit, no budget to report
])
def test_open_mode_callers_get_the_headers_of_the_limits_that_apply_to_them(limits, expected):
    settings = parse_settings({"auth": {"mode": "open"}, "models": [{"name": "m", "sim": {"speed": 50}}], **limits})
    with serve_gateway(settings) as gw:
        for stream in (False, True):
            r = httpx.post(gw.url + CHAT, json={"model": "m", "stream": stream, **HELLO}, timeout=10)
            assert r.status_code == 200, r.text
            told = {k.removeprefix("x-ratelimit-limit-"): v for k, v in r.headers.items()
                    if k.startswith("x-ratelimit-limit-")}
            assert told == expected
            assert all(f"x-ratelimit-remaining-{kind}" in r.headers for kind in expected)
