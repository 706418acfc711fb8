"""A gateway with API keys: who gets in, and what they see when they don't."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from sluice.config import parse_settings
from sluice.identity import generate_key, hash_key
from tests.conftest import serve_gateway, wait_until

KEY = generate_key()
MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def access_log_path(tmp_path_factory):
    return tmp_path_factory.mktemp("logs") / "access.jsonl"


@pytest.fixture(scope="module")
def keyed_gateway(access_log_path):
    settings = parse_settings({
        "server": {"max_body_bytes": 4096, "access_log_path": str(access_log_path)},
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


@pytest.mark.parametrize(
    "body, code", [(b"{not json", "invalid_json"), (b"[1, 2]", "invalid_json"), (b"", "invalid_json")]
)
def test_malformed_json_is_400(keyed_gateway, body, code):
    r = httpx.post(keyed_gateway.url + "/v1/chat/completions", content=body, headers={"authorization": f"Bearer {KEY}"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == code
    assert "Traceback" not in r.text


def test_unknown_route_is_an_openai_shaped_404(keyed_gateway):
    r = httpx.get(keyed_gateway.url + "/v1/nothing-here")
    assert r.status_code == 404
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_access_log_names_the_key_id_never_the_key(keyed_gateway, access_log_path):
    sdk(keyed_gateway, KEY).chat.completions.create(
        model="m", messages=MESSAGES, max_tokens=2, extra_headers={"x-request-id": "log-me"}
    )
    with pytest.raises(openai.AuthenticationError):
        sdk(keyed_gateway, "sk-sluice-a-wrong-key-that-must-not-be-logged").models.list()

    def logged(request_id: str) -> dict | None:
        lines = [json.loads(line) for line in access_log_path.read_text().splitlines()]
        return next((entry for entry in lines if entry["request_id"] == request_id), None)

    assert wait_until(lambda: logged("log-me") is not None)
    line = logged("log-me")
    assert line["key_id"] == "alice-key" and line["tenant"] == "acme" and line["tier"] == "pro"
    assert line["model"] == "m" and line["status"] == 200 and line["tokens_out"] <= 2
    assert line["tokens_in"] > 0 and line["duration_s"] > 0 and line["replica"].startswith("http://127.0.0.1:")
    text = access_log_path.read_text()
    assert KEY not in text and "must-not-be-logged" not in text
    assert '"status":401' in text and '"reason":"auth"' in text
