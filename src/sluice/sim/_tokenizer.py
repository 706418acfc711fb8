"""The simulator's tokenizer: how many tokens a prompt is, and what generated tokens look like.

Rule: a token is a run of word characters or one other non-space character (regex ``\\w+|[^\\w\\s]``), so
``"Hello, world!"`` is 4 tokens. A chat prompt adds ``MESSAGE_OVERHEAD_TOKENS`` per message and
``REPLY_OVERHEAD_TOKENS`` once, as a chat template would. A prompt given as token ids is as long as the list.
Every generated token is one word with a leading space (``" lorem"``), so re-tokenizing a reply gives back
exactly its ``completion_tokens``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from sluice.protocol import ChatMessage

MESSAGE_OVERHEAD_TOKENS = 4  # role markers and separators around each message
REPLY_OVERHEAD_TOKENS = 3  # the assistant header the template appends

_TOKEN = re.compile(r"\w+|[^\w\s]")

VOCABULARY: tuple[str, ...] = tuple(
    " " + w
    for w in (
        "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et "
        "dolore magna aliqua enim ad minim veniam quis nostrud exercitation ullamco laboris nisi aliquip ex ea "
        "commodo consequat duis aute irure in reprehenderit voluptate velit esse cillum fugiat nulla pariatur"
    ).split()
)


def count_text(text: str) -> int:
    return len(_TOKEN.findall(text))


def count_prompt(prompt: str | Sequence[int]) -> int:
    """Tokens in a completions prompt: a string, or a list of token ids."""
    if isinstance(prompt, str):
        return count_text(prompt)
    return len(prompt)


def count_chat(messages: Sequence[ChatMessage]) -> int:
    return REPLY_OVERHEAD_TOKENS + sum(MESSAGE_OVERHEAD_TOKENS + count_text(m.text()) for m in messages)
