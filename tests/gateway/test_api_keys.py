"""A gateway with API keys: who gets in, and what they see when they don't."""

from __future__ import annotations

import json
import logging

import httpx
import openai
import pytest

from sluice.config import parse_settings
from sluice.identity import generate_key, hash_key
from tests.conftest import serve_gateway

KEY = generate_key()
MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def keyed_gateway():
    settings = parse_settings({
        "server": {"max_body_bytes": 4096},
        "models": [{"name": "m", "sim": {"speed": 50}}],
        "tiers": {"pro": {"priority": 10}},
        "keys": [{"id": "alice-key", "hash": hash_key(KEY), "user": "alice", "tenant": "acme", "tier": "pro"}],
    })
    with serve_gateway(settings) as live:
        yield live


def sdk(gateway, key):
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)


def test_the_right_key_gets_an_answer(keyed_gateway):
    reply = sdk(keyed_gateway, KEY).chat.completions.create(model="m", messages=MESSAGES, max_tokens=3)
    assert reply.usage.completion_tokens <= 3


@pytest.mark.parametrize("key", [KEY[:-1] + ("x" if KEY[-1] != "x" else "y"), "sk-sluice-wrong", "x"])
def test_a_wrong_key_is_401_invalid_api_key(keyed_gateway, key):
    with pytest.raises(openai.AuthenticationError) as info:
        sdk(keyed_gateway, key).models.list()
    assert info.value.body["code"] == "invalid_api_key"
    assert KEY not in info.value.message


def test_a_missing_key_is_401(keyed_gateway):
    r = httpx.post(keyed_gateway.url + "/v1/chat/completions", json={"model": "m", "messages": MESSAGES})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"


def test_auth_is_checked_before_the_body_is_read(keyed_gateway):
    r = httpx.post(keyed_gateway.url + "/v1/chat/completions", content=b"{not json")
    assert r.status_code == 401


def test_body_over_the_limit_is_413(keyed_gateway):
    big = {"model": "m", "messages": [{"role": "user", "content": "x" * 10_000}]}
    r = httpx.post(keyed_gateway.url + "/v1/chat/completions", json=big, headers={"authorization": f"Bearer {KEY}"})
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"


@pytest.mark.parametrize("body, code", [(b"{not json", "invalid_json"), (b"[1, 2]", "invalid_json"), (b"", "invalid_json")])
def test_malformed_json_is_400(keyed_gateway, body, code):
    r = httpx.post(keyed_gateway.url + "/v1/chat/completions", content=body, headers={"authorization": f"Bearer {KEY}"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == code
    assert "Traceback" not in r.text


def test_unknown_route_is_an_openai_shaped_404(keyed_gateway):
    r = httpx.get(keyed_gateway.url + "/v1/nothing-here")
    assert r.status_code == 404
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_access_log_names_the_key_id_never_the_key(keyed_gateway, caplog):
    caplog.set_level(logging.INFO, logger="sluice.access")
    sdk(keyed_gateway, KEY).chat.completions.create(
        model="m", messages=MESSAGES, max_tokens=2, extra_headers={"x-request-id": "log-me"}
    )
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "sluice.access"]
    line = next(entry for entry in lines if entry["request_id"] == "log-me")
    assert line["key_id"] == "alice-key" and line["tenant"] == "acme" and line["tier"] == "pro"
    assert line["model"] == "m" and line["status"] == 200 and line["tokens_out"] <= 2
    assert KEY not in caplog.text
