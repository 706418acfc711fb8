"""The gateway on its embedded default, driven by the official openai package, as a user would."""

from __future__ import annotations

import openai
import pytest

from sluice.config import DEFAULT_MODEL

MESSAGES = [{"role": "user", "content": "Say something about sluice gates."}]


@pytest.fixture(scope="module")
def client(embedded_gateway):
    with openai.OpenAI(base_url=embedded_gateway.url + "/v1", api_key="anything", max_retries=0) as c:
        yield c


def test_models_list_names_the_simulated_model(client):
    assert [m.id for m in client.models.list().data] == [DEFAULT_MODEL]


def test_chat_completion_with_exact_length(client):
    reply = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=MESSAGES, max_tokens=7, extra_body={"ignore_eos": True}
    )
    assert reply.choices[0].finish_reason == "length"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content
    assert reply.usage.completion_tokens == 7
    assert reply.usage.prompt_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 7


def test_chat_stream_without_usage_hides_the_usage_chunk(client):
    chunks = list(client.chat.completions.create(
        model=DEFAULT_MODEL, messages=MESSAGES, max_tokens=5, stream=True, extra_body={"ignore_eos": True}
    ))
    assert chunks, "no chunks"
    assert all(c.choices for c in chunks), "a usage-only chunk reached a client that did not ask for it"
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"
    assert "".join(c.choices[0].delta.content or "" for c in chunks)


def test_chat_stream_with_usage_ends_with_the_usage_chunk(client):
    chunks = list(client.chat.completions.create(
        model=DEFAULT_MODEL, messages=MESSAGES, max_tokens=6, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    ))
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 6
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) == 6


def test_same_seed_same_answer(client):
    a, b = (client.chat.completions.create(model=DEFAULT_MODEL, messages=MESSAGES, max_tokens=12, seed=42)
            for _ in range(2))
    assert a.choices[0].message.content == b.choices[0].message.content


def test_completions_streamed_and_not(client):
    full = client.completions.create(model=DEFAULT_MODEL, prompt="Once upon a time", max_tokens=4,
                                     extra_body={"ignore_eos": True})
    assert full.usage.completion_tokens == 4
    assert full.choices[0].text
    streamed = list(client.completions.create(model=DEFAULT_MODEL, prompt="Once upon a time", max_tokens=4,
                                              stream=True, extra_body={"ignore_eos": True}))
    assert sum(1 for c in streamed if c.choices and c.choices[0].text) == 4


def test_embeddings_pass_through(client):
    result = client.embeddings.create(model=DEFAULT_MODEL, input=["a sluice", "a gate"])
    assert len(result.data) == 2
    assert result.data[0].embedding != result.data[1].embedding
    assert result.usage.prompt_tokens > 0


def test_request_id_is_kept_and_returned(client):
    raw = client.chat.completions.with_raw_response.create(
        model=DEFAULT_MODEL, messages=MESSAGES, max_tokens=2, extra_headers={"x-request-id": "trace-123"}
    )
    assert raw.headers["x-request-id"] == "trace-123"
    generated = client.models.with_raw_response.list()
    assert len(generated.headers["x-request-id"]) == 32


def test_unknown_model_is_the_sdks_not_found_error(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert info.value.body["code"] == "model_not_found"
    assert info.value.response.headers["x-sluice-reason"] == "not_found"


def test_schema_violation_is_a_bad_request_naming_the_field(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=DEFAULT_MODEL, messages=[{"role": "wizard", "content": "hi"}])
    assert info.value.body["param"] == "messages.0.role"


def test_prompt_longer_than_the_model_is_the_engines_bad_request(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=DEFAULT_MODEL, messages=MESSAGES, max_tokens=1_000_000)
    assert "maximum context length" in info.value.message
    assert info.value.response.headers["x-sluice-reason"] == "engine_rejected"


def test_openapi_documents_the_request_bodies(embedded_gateway):
    import httpx

    schema = httpx.get(embedded_gateway.url + "/openapi.json").json()
    body = schema["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    name = body["$ref"].rsplit("/", 1)[-1]
    assert "messages" in schema["components"]["schemas"][name]["properties"]
