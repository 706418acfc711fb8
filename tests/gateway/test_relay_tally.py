"""The relay's tally of a stream, two ways: a chunk of whole frames tallied without splitting it (``take_whole``,
the usual chunk) must count exactly what splitting it into frames does (``take``), whatever the frames of a stream
as engines send them (tokens, the role chunk, keep-alives, text that looks like a marker, then the usage frame and
[DONE] last) and however they were chunked. (Frame counts are compared when the stream's usage never came: they
are its charge then, and nothing otherwise.)"""

from __future__ import annotations

import itertools
import json

from hypothesis import given
from hypothesis import strategies as st

from sluice.gateway._relay import StreamTally, has_generated_text
from sluice.protocol import SSEParser


def _frame(doc: dict) -> bytes:
    return b"data: " + json.dumps(doc, separators=(",", ":")).encode() + b"\n\n"


TEXTS = st.sampled_from(["a", " b", "data: [DONE]", '"usage":{', "\n\n", "", "x\r\ny"])
BODY = st.one_of(
    TEXTS.map(lambda t: _frame({"choices": [{"index": 0, "delta": {"content": t}}], "usage": None})),
    st.just(_frame({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})),
    st.just(b": keep-alive\n\n"),
)
USAGE = _frame({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}})
DONE = b"data: [DONE]\n\n"
FRAMES = BODY | st.just(USAGE) | st.just(DONE)


@st.composite
def streams(draw: st.DrawFn) -> list[bytes]:
    """A stream's frames as an engine sends them (or its start, cut off): its usage and [DONE] last."""
    return [*draw(st.lists(BODY, max_size=12)), *([USAGE] if draw(st.booleans()) else []),
            *([DONE] if draw(st.booleans()) else [])]


def _tallied(stream: bytes, cuts: list[int], fast: bool, wants_usage: bool) -> tuple[bytes, int, bool, object]:
    tally, parser, out = StreamTally(wants_usage=wants_usage), SSEParser(), b""
    bounds = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    for start, end in itertools.pairwise(bounds):
        chunk = stream[start:end]
        whole = tally.take_whole(chunk) if fast and not parser.tail() else None
        if whole is not None:
            out += whole
        else:
            out += b"".join(tally.take(parser.feed(chunk)))
    return out, tally.generated if tally.usage is None else None, tally.finished, tally.usage


@given(streams(), st.lists(st.integers(min_value=0, max_value=4000), max_size=8), st.booleans())
def test_a_chunk_of_whole_frames_is_tallied_as_its_frames_would_be(frames, cuts, wants_usage):
    stream = b"".join(frames)
    assert _tallied(stream, cuts, True, wants_usage) == _tallied(stream, cuts, False, wants_usage)


def test_whole_chunks_are_taken_without_splitting_and_the_others_are_not():
    token = _frame({"choices": [{"index": 0, "delta": {"content": "hi"}}], "usage": None})
    tally = StreamTally(wants_usage=False)
    assert tally.take_whole(token + token) == token + token and tally.generated == 2 and not tally.finished
    assert tally.take_whole(token + b"data: [DONE]\n\n") and tally.generated == 3 and tally.finished
    assert StreamTally(wants_usage=False).take_whole(token[:-1]) is None  # a frame cut across chunks
    usage = _frame({"choices": [], "usage": {"completion_tokens": 1}})
    only_usage = StreamTally(wants_usage=False)
    assert only_usage.take_whole(token + usage + token) == token + token  # the usage frame alone is taken apart
    assert only_usage.usage == {"completion_tokens": 1} and only_usage.generated == 2
    assert StreamTally(wants_usage=False).take_whole(usage + usage) is None  # usage twice: frame by frame
    ticking = StreamTally(wants_usage=False)  # a keep-alive is no token
    assert ticking.take_whole(b": keep-alive\n\n" + token) and ticking.generated == 1


@given(st.lists(FRAMES, max_size=12))
def test_the_first_token_is_found_in_a_chunk_as_in_its_frames(frames):
    stream = b"".join(frames)
    assert has_generated_text(stream) == any(map(has_generated_text, frames))
