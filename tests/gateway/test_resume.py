"""The transcript of a resumable stream: which requests qualify, what the client sees, what the rest asks for."""

from __future__ import annotations

import orjson
import pytest

from sluice.gateway._resume import COMPLETIONS_PATH, Transcript, resumes_exactly
from sluice.protocol import sse_data, sse_event

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 10,
        "temperature": 0.7, "top_p": 0.9, "priority": -10, "stream_options": {"include_usage": True}}


def frame(doc) -> bytes:
    return sse_event(orjson.dumps(doc))


def chat_chunk(content=None, ids=None, finish=None, role=False, prompt_ids=None):
    delta = {"role": "assistant", "content": ""} if role else {"content": content}
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish, "token_ids": ids}
    doc = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m", "choices": [choice]}
    if prompt_ids is not None:
        doc["prompt_token_ids"] = prompt_ids
    return frame(doc)


def completion_chunk(text, ids, finish=None, id_="cmpl-2", prompt_ids=None):
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish, "stop_reason": None,
              "token_ids": ids}
    if prompt_ids is not None:
        choice["prompt_token_ids"] = prompt_ids
    return frame({"id": id_, "object": "text_completion", "created": 9, "model": "m", "choices": [choice]})


def seen(out: bytes) -> dict:
    return orjson.loads(sse_data(out))


@pytest.mark.parametrize("change", [
    {}, {"seed": 3, "temperature": 0}, {"stop": None}, {"chat_template_kwargs": {"x": 1}},
])
def test_streams_whose_rest_is_the_same_computation_are_resumable(change):
    assert resumes_exactly({**CHAT, **change})


@pytest.mark.parametrize("change", [
    {"stream": False}, {"n": 2}, {"stop": ["\n"]}, {"logprobs": True}, {"presence_penalty": 0.5},
    {"seed": 3}, {"tools": [{"type": "function"}]}, {"response_format": {"type": "json_object"}},
    {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
])
def test_streams_whose_rest_would_differ_are_not(change):
    assert not resumes_exactly({**CHAT, **change})


def test_a_completions_request_with_several_prompts_is_not_resumable():
    body = {"model": "m", "prompt": ["a", "b"], "stream": True}
    assert not resumes_exactly(body)
    assert resumes_exactly({**body, "prompt": [1, 2, 3]}) and resumes_exactly({**body, "prompt": "a"})


def test_the_client_sees_no_token_ids_and_the_rest_asks_for_what_is_left():
    t = Transcript(CHAT, client_wants_ids=False)
    first = seen(t.rewrite(chat_chunk(role=True, prompt_ids=[1, 2, 3])))
    assert "prompt_token_ids" not in first
    out = seen(t.rewrite(chat_chunk(" a", [10])))
    assert out["choices"][0]["delta"] == {"content": " a"} and "token_ids" not in out["choices"][0]
    t.rewrite(chat_chunk(" b", [11]))
    t.rewrite(chat_chunk("", [12]))  # its text is held back (half a character): it is not kept
    path, body = t.next_request()
    rest = orjson.loads(body)
    assert path == COMPLETIONS_PATH
    assert rest["prompt"] == [1, 2, 3, 10, 11] and rest["max_tokens"] == 8
    assert rest["temperature"] == 0.7 and rest["top_p"] == 0.9 and rest["priority"] == -10
    assert rest["stream"] is True and rest["return_token_ids"] is True and rest["stream_options"]["include_usage"]
    assert "messages" not in rest


def test_the_rest_is_written_in_the_original_shape_and_its_usage_counts_everything():
    t = Transcript(CHAT, client_wants_ids=False)
    t.rewrite(chat_chunk(role=True, prompt_ids=[1, 2, 3]))
    t.rewrite(chat_chunk(" a", [10]))
    t.next_request()
    out = seen(t.rewrite(completion_chunk(" b", [11], prompt_ids=[1, 2, 3, 10])))
    assert out["id"] == "chatcmpl-1" and out["object"] == "chat.completion.chunk" and out["created"] == 7
    assert out["choices"] == [{"index": 0, "delta": {"content": " b"}, "logprobs": None, "finish_reason": None}]
    usage = seen(t.rewrite(frame({"id": "cmpl-2", "object": "text_completion", "created": 9, "model": "m",
                                  "choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 1,
                                                           "total_tokens": 5}})))
    assert usage["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert usage["id"] == "chatcmpl-1" and usage["choices"] == []
    assert t.prompt_ids == [1, 2, 3]  # the continuation's longer prompt is not the client's


def test_a_stream_stopped_twice_asks_for_the_rest_of_the_rest():
    t = Transcript({"model": "m", "prompt": "x", "stream": True, "max_tokens": 5}, client_wants_ids=False)
    t.rewrite(completion_chunk(" a", [10], id_="cmpl-1", prompt_ids=[1]))
    t.next_request()
    out = seen(t.rewrite(completion_chunk(" b", [11])))
    assert out["id"] == "cmpl-1" and out["choices"][0]["text"] == " b" and "token_ids" not in out["choices"][0]
    _, body = t.next_request()
    assert orjson.loads(body)["prompt"] == [1, 10, 11] and orjson.loads(body)["max_tokens"] == 3


def test_a_client_that_asked_for_token_ids_keeps_them():
    t = Transcript({**CHAT, "return_token_ids": True}, client_wants_ids=True)
    assert seen(t.rewrite(chat_chunk(role=True, prompt_ids=[1, 2])))["prompt_token_ids"] == [1, 2]
    assert seen(t.rewrite(chat_chunk(" a", [10])))["choices"][0]["token_ids"] == [10]


def test_stopped_before_any_chunk_the_original_is_sent_again_still_asking_for_token_ids():
    t = Transcript(CHAT, client_wants_ids=False)
    path, body = t.next_request()
    assert path is None and orjson.loads(body) == {**CHAT, "return_token_ids": True} == orjson.loads(t.first_request())


def test_a_parser_at_work_on_the_engine_side_makes_it_not_resumable():
    t = Transcript(CHAT, client_wants_ids=False)
    t.rewrite(frame({"id": "c", "created": 1, "model": "m", "choices": [
        {"index": 0, "delta": {"reasoning_content": "hmm"}, "finish_reason": None, "token_ids": [5]}]}))
    assert not t.can_continue


def test_stopped_after_its_finish_reason_it_ends_with_usage_and_done():
    t = Transcript(CHAT, client_wants_ids=False)
    t.rewrite(chat_chunk(role=True, prompt_ids=[1, 2, 3]))
    t.rewrite(chat_chunk(" a", [10], finish="length"))
    assert t.finished
    usage, done = t.ending(wants_usage=True).split(b"\n\n")[:2]
    assert orjson.loads(usage[6:])["usage"] == {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    assert done == b"data: [DONE]"
    assert t.ending(wants_usage=False) == b"data: [DONE]\n\n"


def test_error_events_and_done_pass_as_they_are():
    t = Transcript(CHAT, client_wants_ids=False)
    error = frame({"error": {"message": "x", "type": "BadRequestError", "code": 400}})
    assert t.rewrite(error) == error and t.rewrite(b"data: [DONE]\n\n") == b"data: [DONE]\n\n"
