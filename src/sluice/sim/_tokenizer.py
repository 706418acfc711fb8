"""The simulator's tokenizer: how many tokens a prompt is, which token ids they are, and what generated tokens are.

Rule: a token is a run of word characters or one other non-space character (regex ``\\w+|[^\\w\\s]``), so
``"Hello, world!"`` is 4 tokens. A chat prompt adds ``MESSAGE_OVERHEAD_TOKENS`` per message and
``REPLY_OVERHEAD_TOKENS`` once, as a chat template would. A prompt given as token ids is as long as the list.
Every generated token is one word of ``VOCABULARY`` with a leading space (``" lorem"``), so re-tokenizing a reply
gives back exactly its ``completion_tokens``.

Token ids (what ``return_token_ids`` shows, and what the engine's prefix cache hashes), deterministic in every
process:

- ``1``-``15``: the chat template's own tokens. A message is ``<|im_start|> <role> \\n ... <|im_end|>`` (the 4 of
  ``MESSAGE_OVERHEAD_TOKENS``: ``IM_START``, the role's id, ``NEWLINE``, ``IM_END``), and the reply header
  ``<|im_start|> assistant \\n`` (the 3 of ``REPLY_OVERHEAD_TOKENS``), ChatML's shape;
- ``GENERATED_ID_BASE + i`` (100 and up): the word ``VOCABULARY[i]``, whether generated or read in a prompt's
  text, so a reply's ids, its text re-tokenized, and an assistant message quoting it all give the same ids;
- ``TEXT_ID_BASE`` .. ``TEXT_ID_BASE + TEXT_ID_SPAN - 1``: any other text token, by a stable hash (blake2b);
- a prompt given as token ids is those ids, each below ``VOCAB_SIZE`` (others are refused, as vLLM refuses ids
  outside its vocabulary).

So a chat prompt's ids number ``count_chat(messages)``, a text prompt's ``count_text(text)``, and a request whose
prompt is an earlier request's ``prompt_token_ids`` followed by the ``token_ids`` it generated carries exactly the
tokens the earlier sequence had in the engine (what a gateway sends to resume an aborted stream).
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Sequence

from sluice.errors import InvalidRequestError
from sluice.protocol import ChatMessage

MESSAGE_OVERHEAD_TOKENS = 4  # role markers and separators around each message
REPLY_OVERHEAD_TOKENS = 3  # the assistant header the template appends

IM_START, IM_END, NEWLINE = 1, 2, 3
ROLE_IDS = {"system": 10, "developer": 11, "user": 12, "assistant": 13, "tool": 14, "function": 15}
GENERATED_ID_BASE = 100
TEXT_ID_BASE = 1000
TEXT_ID_SPAN = 150_000  # the size of a real model's vocabulary, give or take
VOCAB_SIZE = TEXT_ID_BASE + TEXT_ID_SPAN  # a prompt's token ids are below it

_TOKEN = re.compile(r"\w+|[^\w\s]")

VOCABULARY: tuple[str, ...] = tuple(
    " " + w
    for w in (
        "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et "
        "dolore magna aliqua enim ad minim veniam quis nostrud exercitation ullamco laboris nisi aliquip ex ea "
        "commodo consequat duis aute irure in reprehenderit voluptate velit esse cillum fugiat nulla pariatur"
    ).split()
)
_VOCABULARY_IDS = {word.strip(): GENERATED_ID_BASE + i for i, word in enumerate(VOCABULARY)}


def count_text(text: str) -> int:
    return len(_TOKEN.findall(text))


def count_prompt(prompt: str | Sequence[int]) -> int:
    """Tokens in a completions prompt: a string, or a list of token ids."""
    if isinstance(prompt, str):
        return count_text(prompt)
    return len(prompt)


def count_chat(messages: Sequence[ChatMessage]) -> int:
    return REPLY_OVERHEAD_TOKENS + sum(MESSAGE_OVERHEAD_TOKENS + count_text(m.text()) for m in messages)


def text_ids(text: str) -> tuple[int, ...]:
    """The ids of a text's tokens: ``count_text(text)`` of them."""
    return tuple(_token_id(token) for token in _TOKEN.findall(text))


def prompt_ids(prompt: str | Sequence[int]) -> tuple[int, ...]:
    """The ids of a completions prompt: its text's, or the ids it is made of."""
    if isinstance(prompt, str):
        return text_ids(prompt)
    return tuple(prompt)


def check_ids(prompt: str | Sequence[int], param: str = "prompt") -> None:
    """A prompt given as token ids must hold ids of the vocabulary (vLLM: "Token id ... is out of vocabulary")."""
    if isinstance(prompt, str) or not prompt:
        return
    highest, lowest = max(prompt), min(prompt)
    if highest >= VOCAB_SIZE or lowest < 0:
        bad = highest if highest >= VOCAB_SIZE else lowest
        raise InvalidRequestError(f"Token id {bad} is out of vocabulary (ids are 0 to {VOCAB_SIZE - 1}).", param=param)


def chat_ids(messages: Sequence[ChatMessage]) -> tuple[int, ...]:
    """The ids of a chat prompt as the template lays it out: ``count_chat(messages)`` of them."""
    ids: list[int] = []
    for m in messages:
        ids += (IM_START, ROLE_IDS[m.role], NEWLINE, *text_ids(m.text()), IM_END)
    ids += (IM_START, ROLE_IDS["assistant"], NEWLINE)
    return tuple(ids)


def generated_word(token_id: int) -> str:
    """The generated token (``" lorem"``) an id in the vocabulary range stands for."""
    return VOCABULARY[token_id - GENERATED_ID_BASE]


CACHED_TOKEN_CHARS = 32  # longer tokens are hashed every time: the cache must not keep a client's huge words


def _token_id(token: str) -> int:
    return _cached_token_id(token) if len(token) <= CACHED_TOKEN_CHARS else _hashed_id(token)


@functools.lru_cache(maxsize=1 << 16)  # prompts repeat their words: hash each once
def _cached_token_id(token: str) -> int:
    known = _VOCABULARY_IDS.get(token)
    return known if known is not None else _hashed_id(token)


def _hashed_id(token: str) -> int:
    digest = hashlib.blake2b(token.encode(), digest_size=8).digest()
    return TEXT_ID_BASE + int.from_bytes(digest, "little") % TEXT_ID_SPAN
