"""Token ids: the tokenizer's mapping, and ``return_token_ids`` in the bodies, shaped as vLLM 0.32 writes them.

The expected shapes are those of vLLM's own models (vllm/entrypoints/openai/{chat_completion,completion}/protocol.py)
as its serving code fills them and dumps a stream chunk (``model_dump_json(exclude_unset=True)``):

    {"id":..,"object":"chat.completion.chunk",..,"choices":[{"index":0,"delta":{"role":"assistant","content":""},
     "logprobs":null,"finish_reason":null}],"prompt_token_ids":[1,2],"prompt_text":null}
    {..,"choices":[{"index":0,"delta":{"content":" a"},"logprobs":null,"finish_reason":null,"token_ids":[5]}]}
    {"id":..,"object":"text_completion",..,"choices":[{"index":0,"text":" a","logprobs":null,"finish_reason":null,
     "stop_reason":null,"prompt_token_ids":[1,2],"token_ids":[5]}]}

(``prompt_text: null``, and the ``null`` token id fields vLLM writes without ``return_token_ids``, are left out by
the simulator.)
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest

from sluice.protocol import ChatMessage, SSEParser, sse_data
from sluice.sim import SimServer, chat_ids, count_chat, count_prompt, count_text, prompt_ids, text_ids
from sluice.sim._sampler import Sampler
from sluice.sim._tokenizer import GENERATED_ID_BASE, TEXT_ID_BASE, TEXT_ID_SPAN, VOCABULARY, generated_word
from tests.sim.test_sim_http import FAST, MESSAGES, MODEL, http, post, server  # noqa: F401 - fixtures

PROMPT = "Once upon a time,"


# -- the mapping ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text",
                         ["", "Hello, world!", "  tabs\tand\nnewlines ", "lorem ipsum dolor", "Ünïcödé 123 ..."])
def test_text_ids_number_count_text(text: str) -> None:
    assert len(text_ids(text)) == count_text(text)
    assert len(prompt_ids(text)) == count_prompt(text)


def test_chat_ids_number_count_chat_and_follow_the_template() -> None:
    messages = [ChatMessage(**m) for m in MESSAGES]
    ids = chat_ids(messages)
    assert len(ids) == count_chat(messages) == 3 + 2 * 4 + count_text("Be brief.") + count_text("Hello, how are you?")
    system, user = text_ids("Be brief."), text_ids("Hello, how are you?")
    # <|im_start|> role \n ... <|im_end|> per message, then <|im_start|> assistant \n
    assert ids == (1, 10, 3, *system, 2, 1, 12, 3, *user, 2, 1, 13, 3)
    multipart = ChatMessage(role="user", content=[{"type": "text", "text": "Hello, "}, {"type": "text", "text": "x"}])
    assert len(chat_ids([multipart])) == count_chat([multipart])


def test_a_prompt_of_ids_is_itself() -> None:
    assert prompt_ids([5, 7, 123456, 0]) == (5, 7, 123456, 0)
    assert len(prompt_ids([])) == count_prompt([]) == 0


def test_ids_are_fixed_in_every_process() -> None:
    # a stable hash (blake2b), not Python's salted str hash: the same ids in every run and every process
    assert text_ids("Hello, world! lorem") == (90580, 138126, 67552, 126839, GENERATED_ID_BASE)
    assert text_ids("Hello, world! lorem") == text_ids("Hello , world !lorem")  # tokens, not spacing
    assert all(TEXT_ID_BASE <= i < TEXT_ID_BASE + TEXT_ID_SPAN for i in text_ids("some other words here"))


def test_generated_ids_map_back_to_their_words() -> None:
    out = Sampler(FAST).plan(prompt_key="k", seed=3, index=0, cap=200, ignore_eos=True)
    assert len(out.token_ids) == len(out.words) == 200
    assert all(GENERATED_ID_BASE <= i < GENERATED_ID_BASE + len(VOCABULARY) for i in out.token_ids)
    assert tuple(map(generated_word, out.token_ids)) == out.words
    # the reply's text, re-tokenized (as a prompt quoting it would be), gives back the same ids
    assert text_ids("".join(out.words)) == out.token_ids
    again = Sampler(FAST).plan(prompt_key="k", seed=3, index=0, cap=200, ignore_eos=True)
    assert again == out


# -- over HTTP --------------------------------------------------------------------------------------------


async def stream(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> list[Any]:
    """The stream's JSON chunks (the [DONE] that ends it checked and dropped)."""
    parser = SSEParser()
    async with http.post(url, json=body | {"stream": True}) as resp:
        assert resp.status == 200
        events = [d for d in map(sse_data, parser.feed(await resp.read())) if d is not None]
    assert events[-1] == b"[DONE]"
    return [orjson.loads(e) for e in events[:-1]]


def chat(**kw: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": MESSAGES, "seed": 11, "max_tokens": 30} | kw


def completion(**kw: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": PROMPT, "seed": 11, "max_tokens": 30} | kw


def expected_chat_prompt() -> list[int]:
    return list(chat_ids([ChatMessage(**m) for m in MESSAGES]))


async def test_chat_non_streamed_returns_token_ids(server: SimServer, http: aiohttp.ClientSession) -> None:
    status, body = await post(http, server.url + "/v1/chat/completions", chat(return_token_ids=True))
    assert status == 200
    assert list(body) == ["id", "object", "created", "model", "choices", "usage", "prompt_token_ids"]
    assert body["prompt_token_ids"] == expected_chat_prompt()
    assert len(body["prompt_token_ids"]) == body["usage"]["prompt_tokens"]
    [choice] = body["choices"]
    assert list(choice) == ["index", "message", "logprobs", "finish_reason", "stop_reason", "token_ids"]
    assert len(choice["token_ids"]) == body["usage"]["completion_tokens"]
    assert choice["token_ids"] == list(text_ids(choice["message"]["content"]))
    # the same request without the flag: the same answer, and not a token id in it
    _, plain = await post(http, server.url + "/v1/chat/completions", chat())
    assert plain["choices"][0]["message"] == choice["message"]
    assert "prompt_token_ids" not in plain and "token_ids" not in plain["choices"][0]


async def test_chat_stream_returns_token_ids(server: SimServer, http: aiohttp.ClientSession) -> None:
    url = server.url + "/v1/chat/completions"
    opts = {"stream_options": {"include_usage": True}}
    role, *tokens, last = await stream(http, url, chat(return_token_ids=True, **opts))
    assert list(role) == ["id", "object", "created", "model", "choices", "usage", "prompt_token_ids"]
    assert role["choices"] == [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                "finish_reason": None}]
    assert role["prompt_token_ids"] == expected_chat_prompt()
    for chunk in tokens:
        assert "prompt_token_ids" not in chunk
        [choice] = chunk["choices"]
        assert list(choice) == ["index", "delta", "logprobs", "finish_reason", "token_ids"]
        assert choice["token_ids"] == list(text_ids(choice["delta"]["content"])) and len(choice["token_ids"]) == 1
    streamed = [i for c in tokens for i in c["choices"][0]["token_ids"]]
    assert len(streamed) == last["usage"]["completion_tokens"]
    _, whole = await post(http, url, chat(return_token_ids=True))
    assert streamed == whole["choices"][0]["token_ids"]  # same seed, same tokens
    plain = await stream(http, url, chat())
    assert not any("token_ids" in orjson.dumps(c).decode() for c in plain)


async def test_completion_non_streamed_returns_token_ids(server: SimServer, http: aiohttp.ClientSession) -> None:
    url = server.url + "/v1/completions"
    status, body = await post(http, url, completion(return_token_ids=True, n=2))
    assert status == 200 and "prompt_token_ids" not in body  # in each choice, not at the top
    for choice in body["choices"]:
        assert list(choice) == ["index", "text", "logprobs", "finish_reason", "stop_reason", "token_ids",
                                "prompt_token_ids"]
        assert choice["prompt_token_ids"] == list(text_ids(PROMPT))
        assert choice["token_ids"] == list(text_ids(choice["text"]))
    assert sum(len(c["token_ids"]) for c in body["choices"]) == body["usage"]["completion_tokens"]
    # a prompt of ids comes back as given; several prompts, each its own
    _, body = await post(http, url, completion(prompt=[[7, 8, 9], [1000, 1001]], return_token_ids=True))
    assert [c["prompt_token_ids"] for c in body["choices"]] == [[7, 8, 9], [1000, 1001]]
    _, plain = await post(http, url, completion())
    assert b"token_ids" not in orjson.dumps(plain)


async def test_completion_stream_returns_token_ids(server: SimServer, http: aiohttp.ClientSession) -> None:
    url = server.url + "/v1/completions"
    chunks = await stream(http, url, completion(return_token_ids=True, n=2, max_tokens=6, ignore_eos=True))
    assert len(chunks) == 12
    seen: dict[int, list[int]] = {0: [], 1: []}
    for chunk in chunks:
        assert "prompt_token_ids" not in chunk
        [choice] = chunk["choices"]
        assert list(choice) == ["index", "text", "logprobs", "finish_reason", "stop_reason", "prompt_token_ids",
                                "token_ids"]
        i = choice["index"]
        # the prompt's ids on each choice's first chunk, null on its later ones (vLLM sets the field every time)
        assert choice["prompt_token_ids"] == (list(text_ids(PROMPT)) if not seen[i] else None)
        assert choice["token_ids"] == list(text_ids(choice["text"]))
        seen[i] += choice["token_ids"]
    _, whole = await post(http, url, completion(return_token_ids=True, n=2, max_tokens=6, ignore_eos=True))
    assert [seen[0], seen[1]] == [c["token_ids"] for c in whole["choices"]]


async def test_return_token_ids_must_be_a_boolean(server: SimServer, http: aiohttp.ClientSession) -> None:
    status, body = await post(http, server.url + "/v1/completions", completion(return_token_ids="yes"))
    assert status == 400 and body["error"]["message"] == "return_token_ids must be a boolean."
    status, body = await post(http, server.url + "/v1/completions", completion(return_token_ids=None))
    assert status == 200 and "token_ids" not in body["choices"][0]
