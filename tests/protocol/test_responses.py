"""The Responses API as chat: the request translated, and a chat stream told as Responses events."""

from __future__ import annotations

import json

import orjson
import pytest

from sluice.errors import InvalidRequestError
from sluice.protocol import ResponseEvents, ResponsesRequest, chat_body, parse_request, response_from_chat


def request(**fields):
    return parse_request(ResponsesRequest, orjson.dumps({"model": "m", "input": "hi", **fields}))


def events_of(raw: bytes) -> list[dict]:
    frames = [f for f in raw.decode().split("\n\n") if f]
    out = []
    for frame in frames:
        kind, data = frame.split("\n")
        doc = json.loads(data.removeprefix("data: "))
        assert kind == f"event: {doc['type']}"
        out.append(doc)
    return out


def test_a_request_becomes_the_chat_completion_it_means():
    req = request(input=[{"role": "developer", "content": "terse"},
                         {"role": "user", "content": [{"type": "input_text", "text": "a"},
                                                      {"type": "input_text", "text": "b"}]}],
                  instructions="be kind", max_output_tokens=7, temperature=0.5, top_p=0.9, stream=True)
    chat = orjson.loads(chat_body(req))
    assert chat["messages"] == [{"role": "system", "content": "be kind"}, {"role": "system", "content": "terse"},
                                {"role": "user", "content": "ab"}]
    assert (chat["max_tokens"], chat["temperature"], chat["top_p"]) == (7, 0.5, 0.9)
    assert chat["stream_options"] == {"include_usage": True}  # the stream must end with usage
    assert "stream_options" not in orjson.loads(chat_body(request()))


def test_fields_set_to_nothing_are_accepted_and_the_rest_refused():
    request(tools=[], store=False, previous_response_id=None, text={"format": {"type": "text"}}).refuse_unsupported()
    with pytest.raises(InvalidRequestError, match="`store` is not supported"):
        request(store=True).refuse_unsupported()
    with pytest.raises(InvalidRequestError, match="`text` is not supported"):
        request(text={"format": {"type": "json_schema"}}).refuse_unsupported()


def test_a_chat_answer_becomes_a_response():
    chat = {"choices": [{"message": {"role": "assistant", "content": "yes"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}
    doc = response_from_chat(request(), chat, "abc", 1_750_000_000)
    assert (doc["id"], doc["object"], doc["status"], doc["created_at"]) == ("resp_abc", "response", "completed",
                                                                           1_750_000_000)
    assert doc["output"][0]["content"][0] == {"type": "output_text", "text": "yes", "annotations": [], "logprobs": []}
    usage = doc["usage"]
    assert (usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]) == (5, 1, 6)
    cut = response_from_chat(request(), {**chat, "choices": [{**chat["choices"][0], "finish_reason": "length"}]},
                             "abc", 0)
    assert cut["status"] == "incomplete" and cut["incomplete_details"] == {"reason": "max_output_tokens"}


CHAT_STREAM = (b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
               b'data: {"choices":[{"index":0,"delta":{"content":"Hel"}}]}\n\n'
               b'data: {"choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"stop"}]}\n\n'
               b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}\n\n'
               b'data: [DONE]\n\n')


@pytest.mark.parametrize("cut", [1, 7, 50, len(CHAT_STREAM)])
def test_a_chat_stream_cut_anywhere_is_told_as_response_events(cut):
    events = ResponseEvents(request(stream=True), "abc", 0)
    raw = events.opening() + b"".join(events.feed(CHAT_STREAM[i:i + cut]) for i in range(0, len(CHAT_STREAM), cut))
    told = events_of(raw + events.closing())
    assert [e["type"] for e in told] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
    assert [e["sequence_number"] for e in told] == list(range(10))
    assert [e["delta"] for e in told if e["type"] == "response.output_text.delta"] == ["Hel", "lo"]
    completed = told[-1]["response"]
    assert completed["output"][0]["content"][0]["text"] == "Hello"
    assert completed["usage"]["output_tokens"] == 2


def test_an_error_in_the_stream_fails_the_response_and_ends_it():
    events = ResponseEvents(request(stream=True), "abc", 0)
    raw = events.feed(b'data: {"choices":[{"index":0,"delta":{"content":"Hel"}}]}\n\n'
                      b'data: {"error":{"message":"The engine stopped","type":"server_error","param":null,'
                      b'"code":"engine_died"}}\n\n')
    told = events_of(raw + events.closing())
    assert [e["type"] for e in told] == ["response.output_text.delta", "error", "response.failed"]
    assert told[-1]["response"]["error"]["code"] == "engine_died"
