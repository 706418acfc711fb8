"""Log probabilities of generated tokens, as the OpenAI API shapes them for chat and for text completions.

The simulator has no model, so the numbers are made up, but consistently: the token it generated is always the most
likely one at its position (probability between 0.5 and 0.99), and the alternatives are other words of the
vocabulary sharing what is left, each half the one before. They depend only on the token and its position, so a
streamed and a whole answer give the same numbers, and ``top_logprobs`` of a position sum to at most 1 in
probability.

Shapes (OpenAI's API reference, and vLLM's ``_create_completion_logprobs`` / ``_create_chat_logprobs``):

- chat (``logprobs: true``, ``top_logprobs: 0..20``): ``choices[].logprobs = {"content": [{"token", "logprob",
  "bytes", "top_logprobs": [{"token", "logprob", "bytes"}, ...]}, ...]}``, one entry per generated token, the
  ``top_logprobs`` list the n most likely (the generated token first). A stream chunk carries its tokens' entries.
- completions (``logprobs: 0..20``): ``choices[].logprobs = {"tokens", "token_logprobs", "top_logprobs",
  "text_offset"}``, ``top_logprobs`` a ``{token: logprob}`` per position holding the n most likely and the
  generated token, ``text_offset`` each token's character offset in the completion's text (a stream chunk
  continues the offsets of the chunks before it, as vLLM's ``initial_text_offset``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sluice.sim._tokenizer import GENERATED_ID_BASE, VOCABULARY

MAX_TOP_LOGPROBS = 20  # vLLM's default ``--max-logprobs``; OpenAI's chat ``top_logprobs`` maximum


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...]  # the most likely tokens at this position, most likely first


def token_logprobs(token_ids: Sequence[int], *, first_position: int, top_n: int) -> list[TokenLogprob]:
    """The log probabilities of generated tokens (ids in the vocabulary range) at positions from ``first_position``,
    each with its ``top_n`` most likely tokens."""
    return [_at(token_id, first_position + k, top_n) for k, token_id in enumerate(token_ids)]


def _at(token_id: int, position: int, top_n: int) -> TokenLogprob:
    rng = random.Random(f"logprob:{token_id}:{position}")
    chosen = VOCABULARY[token_id - GENERATED_ID_BASE]
    p = rng.uniform(0.5, 0.99)
    others = [w for w in VOCABULARY if w != chosen]
    alternatives = rng.sample(others, min(max(top_n - 1, 0), len(others)))
    top = [(chosen, math.log(p))]
    top += [(word, math.log((1 - p) * 0.5 ** (j + 1))) for j, word in enumerate(alternatives)]
    return TokenLogprob(chosen, math.log(p), tuple(top[:top_n]))


def _bytes(token: str) -> list[int]:
    return list(token.encode())


def chat_logprobs(entries: Sequence[TokenLogprob]) -> dict[str, Any]:
    """A chat choice's (or a chunk's) ``logprobs``."""
    return {"content": [
        {"token": e.token, "logprob": e.logprob, "bytes": _bytes(e.token),
         "top_logprobs": [{"token": t, "logprob": lp, "bytes": _bytes(t)} for t, lp in e.top]}
        for e in entries
    ]}


def completion_logprobs(entries: Sequence[TokenLogprob], *, first_offset: int) -> dict[str, Any]:
    """A completion choice's (or a chunk's) ``logprobs``; offsets count from ``first_offset``."""
    offsets, at = [], first_offset
    for e in entries:
        offsets.append(at)
        at += len(e.token)
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [{**dict(e.top), e.token: e.logprob} for e in entries],
        "text_offset": offsets,
    }
