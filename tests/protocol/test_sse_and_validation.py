from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluice.errors import InvalidRequestError
from sluice.protocol import ChatCompletionRequest, CompletionRequest, SSEParser, parse_request, sse_data, sse_event

EVENTS = st.lists(st.binary(min_size=1, max_size=40).filter(lambda b: b"\n" not in b and b"\r" not in b), max_size=8)


@given(EVENTS, st.lists(st.integers(min_value=1, max_value=17), min_size=1, max_size=20))
def test_sse_events_survive_any_chunking(payloads, cuts):
    wire = b"".join(sse_event(p) for p in payloads)
    parser, got, pos, i = SSEParser(), [], 0, 0
    while pos < len(wire):
        step = cuts[i % len(cuts)]
        got += [sse_data(frame) for frame in parser.feed(wire[pos:pos + step])]
        pos, i = pos + step, i + 1
    assert got == payloads
    assert parser.tail() == b""


def test_sse_keeps_frames_byte_exact_and_handles_crlf_and_comments():
    parser = SSEParser()
    frames = parser.feed(b": keep-alive\r\n\r\ndata: {\"a\":1}\r")
    frames += parser.feed(b"\n\r\ndata:[DONE]\n\n")
    assert frames == [b": keep-alive\n\n", b'data: {"a":1}\n\n', b"data:[DONE]\n\n"]
    assert [sse_data(f) for f in frames] == [None, b'{"a":1}', b"[DONE]"]
    assert sse_data(b"data: line one\ndata: line two\n\n") == b"line one\nline two"


@pytest.mark.parametrize("body, param", [
    (b'{"model": "m", "messages": []}', "messages"),
    (b'{"model": "", "messages": [{"role": "user", "content": "x"}]}', "model"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 3}', "temperature"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}', "stream"),
])
def test_schema_violations_name_the_field(body, param):
    with pytest.raises(InvalidRequestError) as info:
        parse_request(ChatCompletionRequest, body)
    assert info.value.param == param and info.value.status == 400


def test_unknown_fields_pass_through_and_caps_resolve():
    req = parse_request(ChatCompletionRequest, b'{"model": "m", "messages": [{"role": "user", "content": "x"}], '
                                               b'"max_tokens": 5, "max_completion_tokens": 9, "top_k": 3}')
    assert req.output_cap() == 9 and req.model_extra == {"top_k": 3}
    assert parse_request(CompletionRequest, b'{"model": "m", "prompt": [1, 2, 3]}').prompts() == [[1, 2, 3]]
