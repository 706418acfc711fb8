"""``POST /v1/responses`` through the gateway, driven by the official openai package: text in, text out, through the
same pipeline (and the same quotas) as chat."""

from __future__ import annotations

import httpx
import openai
import pytest

from sluice.config import parse_settings
from sluice.identity import generate_key, hash_key
from tests.conftest import serve_gateway

KEY = generate_key()


@pytest.fixture(scope="module")
def gateway():
    settings = parse_settings({
        "models": [{"name": "m", "sim": {"speed": 50}}],
        "tiers": {"small": {"requests": "1000/minute", "tokens": "300/minute"}},
        "keys": [{"id": "k", "hash": hash_key(KEY), "user": "u", "tenant": "t", "tier": "small"}],
    })
    with serve_gateway(settings) as live:
        yield live


@pytest.fixture
def client(gateway):
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0) as c:
        yield c


def test_a_text_response_with_its_usage(client):
    reply = client.responses.create(model="m", input="Say something.", instructions="Be brief.", max_output_tokens=4)
    assert reply.object == "response" and reply.id.startswith("resp_")
    assert reply.output_text and reply.output[0].role == "assistant"
    assert 1 <= reply.usage.output_tokens <= 4
    assert reply.usage.input_tokens > 0
    assert reply.usage.total_tokens == reply.usage.input_tokens + reply.usage.output_tokens
    if reply.usage.output_tokens == 4:  # cut by max_output_tokens, unless the model ended exactly there
        assert reply.status in ("incomplete", "completed")
    else:
        assert reply.status == "completed" and reply.incomplete_details is None


def test_messages_as_input_and_a_stream_of_events(client):
    events = list(client.responses.create(
        model="m", stream=True, max_output_tokens=3,
        input=[{"role": "developer", "content": "Be brief."},
               {"role": "user", "content": [{"type": "input_text", "text": "Hello"}]}],
    ))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert 1 <= len(deltas) <= 3
    done = next(e for e in events if e.type == "response.output_text.done")
    assert done.text == "".join(deltas)
    assert events[-1].response.usage.output_tokens == len(deltas)  # the simulator sends a token per chunk
    assert events[-1].response.output[0].content[0].text == done.text
    assert [e.sequence_number for e in events] == list(range(len(events)))


@pytest.mark.parametrize("field, value", [("tools", [{"type": "web_search"}]), ("previous_response_id", "resp_1"),
                                          ("store", True), ("reasoning", {"effort": "low"})])
def test_what_needs_state_or_tools_is_a_clear_400(client, field, value):
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="m", input="x", extra_body={field: value})
    assert info.value.body["param"] == field
    assert info.value.body["code"] == "unsupported_parameter"
    assert f"`{field}` is not supported" in info.value.body["message"]


def test_non_text_input_is_a_400_naming_the_part(gateway):
    r = httpx.post(gateway.url + "/v1/responses", headers={"authorization": f"Bearer {KEY}"},
                   json={"model": "m", "input": [{"role": "user", "content": [{"type": "input_image",
                                                                                "image_url": "http://x/y.png"}]}]})
    assert r.status_code == 400 and r.headers["x-sluice-reason"] == "invalid_request"
    assert r.json()["error"]["param"].startswith("input.0.content.0")


def test_it_needs_a_key_and_spends_the_tiers_quota_like_chat(gateway, client):
    assert httpx.post(gateway.url + "/v1/responses", json={"model": "m", "input": "x"}).status_code == 401
    r = httpx.post(gateway.url + "/v1/responses", headers={"authorization": f"Bearer {KEY}"},
                   json={"model": "m", "input": "x", "max_output_tokens": 2})
    assert r.status_code == 200 and r.headers["x-ratelimit-limit-tokens"] == "300"
    with pytest.raises(openai.RateLimitError) as info:  # more than the tier's tokens per minute: priced as chat
        client.responses.create(model="m", input="x", max_output_tokens=1000)
    assert info.value.response.headers["x-sluice-reason"] == "quota_tokens"


def test_an_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(model="nope", input="x")
    assert info.value.body["code"] == "model_not_found"
