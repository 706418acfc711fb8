"""Hostile input (issue 15): strict types, bounds, numbers that cannot be forwarded, and bodies built to be costly.

Three layers: the request models alone; a fuzz pass over every field of every endpoint, through the models, the
pricer, the cache key and the body rewriting; and the observed bugs again through a running gateway (real
sockets), with a bounded fuzz pass there too, asserting "a 4xx with an OpenAI body, never a 5xx".
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, cast

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluice.cache import cache_key
from sluice.config import Settings, SimSettings, parse_settings
from sluice.engines.dialects import PriorityConvention
from sluice.errors import InvalidRequestError, SluiceError
from sluice.gateway.service import ModelRoute, _upstream_body
from sluice.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, parse_request
from sluice.quota._pricing import Pricer
from sluice.quota._tokenizer import EstimateCounter
from tests.conftest import LiveServer, LiveSim, serve_gateway

CHAT_PATH, COMPLETIONS_PATH, EMBEDDINGS_PATH = "/v1/chat/completions", "/v1/completions", "/v1/embeddings"
MODELS = {CHAT_PATH: ChatCompletionRequest, COMPLETIONS_PATH: CompletionRequest, EMBEDDINGS_PATH: EmbeddingRequest}


def invalid(model: type[Any], body: bytes | str) -> InvalidRequestError:
    raw = body.encode() if isinstance(body, str) else body
    with pytest.raises(InvalidRequestError) as info:
        parse_request(model, raw)
    return info.value


def completion_body(**fields: str) -> str:
    """A completions body whose fields are given as JSON text (so numbers orjson cannot write can be written)."""
    return "{" + ",".join(f'"{k}":{v}' for k, v in {"model": '"m"', "prompt": '"hi"', **fields}.items()) + "}"


# --- strict types: what the schema says is what is accepted ----------------------------------------------------


@pytest.mark.parametrize("field, value", [
    ("max_tokens", '"10"'), ("max_tokens", "true"), ("max_tokens", "10.0"), ("max_tokens", "0"),
    ("max_tokens", str(2**31)), ("echo", '"yes"'), ("echo", "1"), ("stream", "1"), ("ignore_eos", '"true"'),
    ("n", "0"), ("n", "129"), ("n", '"2"'), ("seed", str(2**63)), ("seed", str(-(2**63) - 1)), ("seed", "1.5"),
    ("temperature", '"0.5"'), ("temperature", "NaN"), ("temperature", "1e400"), ("top_p", "Infinity"),
    ("user", "5"), ("stop", "3"), ("stop", "[1]"), ("stream_options", '{"include_usage": "yes"}'),
])
def test_a_wrong_type_or_an_out_of_bounds_value_is_a_400_naming_the_field(field: str, value: str) -> None:
    error = invalid(CompletionRequest, completion_body(**{field: value}))
    assert error.status == 400 and error.param is not None and error.param.split(".")[0] == field
    assert error.body()["error"]["type"] == "invalid_request_error" and field in error.body()["error"]["message"]


def test_what_openai_accepts_is_still_accepted() -> None:
    req = parse_request(CompletionRequest, completion_body(
        max_tokens="null", temperature="1", top_p="1", seed=str(-(2**63)), n="128", echo="false", stop='["a", "b"]',
        stream_options='{"include_usage": null}', logit_bias='{"50256": -100}', top_k=str(2**64 - 1),
    ).encode())
    assert req.max_tokens is None and req.temperature == 1.0 and isinstance(req.temperature, float)
    assert req.seed == -(2**63) and req.model_extra == {"logit_bias": {"50256": -100}, "top_k": 2**64 - 1}
    chat = parse_request(ChatCompletionRequest, b'{"model": "m", "messages": [{"role": "assistant", "content": null, '
                                                  b'"tool_calls": [{"id": "x"}]}, {"role": "user", "content": []}]}')
    assert chat.messages[0].content is None and chat.messages[1].content == []


@pytest.mark.parametrize("prompt, param", [
    (f"[1, {2**70}]", "prompt.1"), ("[-1]", "prompt.0"), (f"[{2**31}]", "prompt.0"), ("[[1], [2, 3.0]]", "prompt.1.1"),
    ("[]", "prompt"), ("[[]]", "prompt.0"), ("[[1], []]", "prompt.1"), ("5", "prompt"), ('{"a": 1}', "prompt"),
    ('["a", 1]', "prompt.1"), ("[true]", "prompt.0"),
])
def test_token_ids_are_ints_below_2_to_the_31(prompt: str, param: str) -> None:
    assert invalid(CompletionRequest, completion_body(prompt=prompt)).param == param


def test_token_ids_up_to_the_bound_are_accepted() -> None:
    req = parse_request(CompletionRequest, completion_body(prompt=f"[[0, {2**31 - 1}], [5]]").encode())
    assert req.prompts() == [[0, 2**31 - 1], [5]]


@pytest.mark.parametrize("value", ["1e400", "-1e400", "NaN", "Infinity", "-Infinity", str(2**64), str(-(2**63) - 1),
                                   "[1, [2, {\"x\": 1e999}]]", "{\"a\": {\"b\": [NaN]}}"])
def test_a_passed_through_field_must_hold_numbers_the_gateway_can_forward(value: str) -> None:
    assert invalid(CompletionRequest, completion_body(top_k=value)).param == "top_k"
    chat = (b'{"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "x", "w": %s}], '
            b'"tool_calls": 1}]}' % value.encode())
    assert invalid(ChatCompletionRequest, chat).param == "messages.0.content.0.w"
    options = completion_body(stream_options='{"include_usage": true, "x": %s}' % value)
    assert invalid(CompletionRequest, options).param == "stream_options.x"


@pytest.mark.parametrize("body, param", [
    ('{"model": "m", "input": ""}', "input"),
    ('{"model": "m", "input": []}', "input"),
    ('{"model": "m", "input": ["a", ""]}', "input.1"),
    ('{"model": "m", "input": [%s]}' % ",".join(['"a"'] * 2049), "input"),
    ('{"model": "m", "input": [%s]}' % ",".join(["[1]"] * 2049), "input"),
    ('{"model": "m", "input": "a", "dimensions": 0}', "dimensions"),
    ('{"model": "m", "input": "a", "dimensions": %d}' % 2**31, "dimensions"),
    ('{"model": "m", "input": "a", "dimensions": "8"}', "dimensions"),
    ('{"model": "m", "input": [[1, %d]]}' % 2**64, "input.0.1"),
])
def test_embeddings_are_held_to_openai_documented_bounds(body: str, param: str) -> None:
    assert invalid(EmbeddingRequest, body).param == param


def test_embeddings_within_the_bounds_are_accepted() -> None:
    body = '{"model": "m", "input": [%s], "dimensions": 8}' % ",".join(['"a"'] * 2048)
    assert len(parse_request(EmbeddingRequest, body.encode()).input) == 2048


def test_a_hostile_body_is_rejected_at_its_first_bad_item() -> None:
    """Each array stops at its first bad item and a union tries one alternative: a few errors, not one per item
    per alternative (a 4 MB prompt of 1M arrays ending in a string built 2M errors and took ~9 s)."""
    batch = "[" + ",".join(["[0]"] * 100_000) + ',"x"]'
    error = invalid(CompletionRequest, completion_body(prompt=batch))
    assert error.param == "prompt.100000"
    assert cast(Any, error.__cause__).error_count() == 1
    messages = '{"model": "m", "messages": [%s]}' % ",".join(['{"role": "x"}'] * 100_000)
    error = invalid(ChatCompletionRequest, messages)
    assert error.param == "messages.0.role" and cast(Any, error.__cause__).error_count() == 1


def test_the_rewriting_path_turns_what_it_cannot_forward_into_a_400() -> None:
    """The last line of defence, behind the models: a body orjson cannot read is a 400, not a 500."""
    request = CompletionRequest.model_construct(model="m", prompt="hi", stream=True, stream_options=None)
    with pytest.raises(InvalidRequestError) as info:
        _upstream_body(request, b'{"model": "m", "prompt": "hi", "x": 1e400}', _route("engine-name"), True, 0)
    assert info.value.status == 400 and info.value.code == "invalid_json"


# --- fuzz: arbitrary JSON in each field, through the models, pricing, cache key and rewriting ------------------

_SPECIAL = ["1e400", "-1e400", "NaN", "Infinity", "-Infinity", str(2**64), str(2**64 - 1), str(2**70),
            str(-(2**63)), str(-(2**63) - 1), str(2**31), str(2**31 - 1), "-0", "1E-400", "10.0", '"\\ud800"',
            '"10"', "true", "0", "-1", "[]", "{}", '""']
_SCALARS = st.one_of(
    st.sampled_from(_SPECIAL),
    st.none().map(json.dumps), st.booleans().map(json.dumps),
    st.integers().map(json.dumps), st.integers(min_value=-(2**80), max_value=2**80).map(json.dumps),
    st.floats(allow_nan=False, allow_infinity=False).map(json.dumps), st.text(max_size=12).map(json.dumps),
)
JSON_TEXT = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4).map(lambda xs: "[" + ",".join(xs) + "]")
    | st.dictionaries(st.sampled_from(["type", "text", "role", "content", "x", "include_usage"]), inner,
                      max_size=3).map(lambda d: "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in d.items()) + "}"),
    max_leaves=10,
)

BASES: dict[str, dict[str, str]] = {
    CHAT_PATH: {"model": '"m"', "messages": '[{"role": "user", "content": "hello there"}]', "max_tokens": "4"},
    COMPLETIONS_PATH: {"model": '"m"', "prompt": '"once upon a time"', "max_tokens": "4"},
    EMBEDDINGS_PATH: {"model": '"m"', "input": '"hello"'},
}
FIELDS: dict[str, list[str]] = {
    CHAT_PATH: ["messages", "messages.0", "messages.0.content", "messages.0.role", "messages.0.tool_calls",
                "max_tokens", "max_completion_tokens", "stream", "stream_options", "n", "temperature", "top_p",
                "seed", "stop", "ignore_eos", "user", "priority", "top_k", "logit_bias", "return_token_ids"],
    COMPLETIONS_PATH: ["prompt", "max_tokens", "stream", "stream_options", "n", "temperature", "top_p", "seed",
                       "stop", "echo", "ignore_eos", "user", "priority", "top_k", "logit_bias", "return_token_ids"],
    EMBEDDINGS_PATH: ["input", "dimensions", "encoding_format", "user", "priority", "extra_field"],
}
ENDPOINT_FIELDS = [(path, name) for path, names in FIELDS.items() for name in names]


def fuzzed_body(path: str, field: str, value: str, *, stream: bool = False) -> bytes:
    fields = dict(BASES[path])
    if stream and path != EMBEDDINGS_PATH:
        fields["stream"] = "true"
    if field.startswith("messages.0"):
        message = {"role": '"user"', "content": '"hi"'}
        if field == "messages.0":
            fields["messages"] = f"[{value}]"
        else:
            message[field.split(".")[2]] = value
            fields["messages"] = "[{" + ",".join(f'"{k}":{v}' for k, v in message.items()) + "}]"
    else:
        fields[field] = value
    return ("{" + ",".join(f'"{k}":{v}' for k, v in fields.items()) + "}").encode()


def _route(served_name: str = "m", priority: PriorityConvention | None = None) -> ModelRoute:
    return ModelRoute(name="m", served_name=served_name, pool=cast(Any, None), priority=priority)


REWRITING_ROUTES = [_route(), _route("engine-name"), _route(priority=PriorityConvention(higher_first=True))]
PRICER = Pricer({"m": EstimateCounter()}, 256, {"m": 8192})


def assert_openai_error(error: SluiceError, field: str) -> None:
    body = error.body()["error"]
    assert 400 <= error.status < 500 and set(body) == {"message", "type", "param", "code"}
    assert body["type"] == "invalid_request_error" and isinstance(body["message"], str)
    if body["code"] != "invalid_json":  # a value no JSON parser reads (a lone surrogate) spoils the whole body
        assert body["param"] is not None and body["param"].split(".")[0] == field.split(".")[0], body


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(ENDPOINT_FIELDS), JSON_TEXT, st.booleans())
def test_fuzz_any_value_in_any_field_is_a_4xx_or_goes_through_every_step(
    endpoint_field: tuple[str, str], value: str, stream: bool
) -> None:
    path, field = endpoint_field
    body = fuzzed_body(path, field, value, stream=stream)
    try:
        request: Any = parse_request(MODELS[path], body)
    except InvalidRequestError as exc:
        assert_openai_error(exc, field)
        return
    price = {CHAT_PATH: PRICER.price_chat, COMPLETIONS_PATH: PRICER.price_completion,
             EMBEDDINGS_PATH: PRICER.price_embedding}[path](request)
    assert price.total >= 0
    cache_key("m", "tenant", request)
    original = orjson.loads(body)  # the models admitted it: orjson reads it too
    is_stream = bool(getattr(request, "stream", False))
    for route in REWRITING_ROUTES:
        sent = orjson.loads(_upstream_body(request, body, route, is_stream, 7))
        kept = {k: v for k, v in original.items() if k not in ("model", "stream_options", "priority")}
        assert {k: v for k, v in sent.items() if k in kept} == kept  # passed-through fields arrive as they came
        if is_stream and path != EMBEDDINGS_PATH:  # every upstream stream carries usage, to be accounted
            assert sent["stream_options"]["include_usage"] is True


@pytest.mark.parametrize("extra", ['', ', "stream_options": null', ', "stream_options": {}',
                                   ', "stream_options": {"include_usage": false}', ', "user": "stream_options"'])
def test_every_upstream_stream_asks_for_usage_however_the_client_wrote_its_options(extra: str) -> None:
    body = ('{"model": "m", "stream": true, "messages": [{"role": "user", "content": "say \\"stream_options\\""}]'
            + extra + "}").encode()
    request: Any = parse_request(MODELS[CHAT_PATH], body)
    sent = orjson.loads(_upstream_body(request, body, _route(), True, 0))
    assert sent["stream_options"]["include_usage"] is True
    assert {k: v for k, v in sent.items() if k != "stream_options"} == \
        {k: v for k, v in orjson.loads(body).items() if k != "stream_options"}


# --- through a running gateway (real sockets) ------------------------------------------------------------------


def test_observed_bugs_against_the_embedded_default() -> None:
    """Each observed bug, against ``Settings.embedded()`` as served: a 400 naming the field (the engine's checks
    name it in the message; the gateway relays the engine's message), and the engine keeps serving."""
    settings_ = Settings.embedded()
    model = settings_.models[0].name
    with serve_gateway(settings_) as live, httpx.Client(base_url=live.url, timeout=30) as client:
        def post(path: str, raw: str) -> httpx.Response:
            return client.post(path, content=raw.replace('"m"', json.dumps(model)),
                               headers={"content-type": "application/json"})

        for raw, param in [
            (completion_body(max_tokens='"10"'), "max_tokens"),
            (completion_body(max_tokens="true"), "max_tokens"),
            (completion_body(echo='"yes"'), "echo"),
            (completion_body(prompt=f"[{2**70}, 5]"), "prompt.0"),
            (completion_body(stream="true", top_k="1e400"), "top_k"),  # a rewritten body (stream_options added)
            (completion_body(top_k="1e400"), "top_k"),  # the same refusal when the body would pass untouched
            ('{"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": true, "seed": 1e400}', "seed"),
        ]:
            path = CHAT_PATH if "messages" in raw else COMPLETIONS_PATH
            r = post(path, raw)
            assert r.status_code == 400 and r.headers["x-sluice-reason"] == "invalid_request", (raw, r.text)
            assert r.json()["error"]["param"] == param and r.json()["error"]["type"] == "invalid_request_error"

        r = post(COMPLETIONS_PATH, completion_body(prompt='""'))
        assert r.status_code == 400 and "prompt cannot be empty" in r.json()["error"]["message"], r.text
        assert r.headers["x-sluice-reason"] == "engine_rejected"
        assert r.json()["error"]["param"] == "prompt", r.text  # the engine's param, relayed
        r = post(EMBEDDINGS_PATH, '{"model": "m", "input": "x", "dimensions": 1000000000}')
        assert r.status_code == 400 and "dimensions" in r.json()["error"]["message"], r.text
        r = post(COMPLETIONS_PATH, completion_body(prompt=f"[{2**31 - 1}]"))
        assert r.status_code == 400 and "out of vocabulary" in r.json()["error"]["message"], r.text

        # the engine loop is alive and the gateway ready: an ordinary request is served
        assert client.get("/ready").status_code == 200
        r = post(COMPLETIONS_PATH, completion_body(max_tokens="3"))
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1, r.text


@pytest.fixture(scope="module")
def fuzz_gateway() -> Iterator[LiveServer]:
    """Two models: ``m`` (an in-process simulator, with the response cache on) and ``renamed`` (a separate
    simulator that calls it ``engine-name`` and schedules by priority): every rewriting of the body happens."""
    fast = {"speed": 1e9, "output_len_min": 1, "output_len_max": 8}
    with LiveSim(SimSettings(**fast, scheduling_policy="priority"), model_name="engine-name") as sim:
        config = {"auth": {"mode": "open"}, "models": [
            {"name": "m", "sim": fast, "cache": {"enabled": True}},
            {"name": "renamed", "engine": {"urls": [sim.url], "served_model": "engine-name"},
             "admission": {"priority_to_engine": True}},
        ]}
        with serve_gateway(parse_settings(config)) as live:
            yield live


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(ENDPOINT_FIELDS), JSON_TEXT, st.booleans(), st.sampled_from(["m", "renamed"]))
def test_fuzz_through_the_gateway_never_a_5xx(
    fuzz_gateway: LiveServer, endpoint_field: tuple[str, str], value: str, stream: bool, model: str
) -> None:
    path, field = endpoint_field
    body = fuzzed_body(path, field, value, stream=stream)
    body = body.replace(b'"model":"m"', b'"model":"%s"' % model.encode(), 1)
    with httpx.Client(base_url=fuzz_gateway.url, timeout=30) as client:
        with client.stream("POST", path, content=body, headers={"content-type": "application/json"}) as r:
            raw = r.read()
    assert r.status_code < 500, (body, r.status_code, raw)
    if r.status_code >= 400:
        error = orjson.loads(raw)["error"]
        assert set(error) == {"message", "type", "param", "code"} and r.headers.get("x-sluice-reason"), raw
    elif r.headers["content-type"].startswith("text/event-stream"):
        assert raw.endswith(b"data: [DONE]\n\n") and b'"error"' not in raw, raw
    else:
        assert "usage" in orjson.loads(raw)
