"""Prompt counters: how many tokens a model will see for a piece of prompt text.

Two kinds behind one protocol, one counter per model:

- ``ExactCounter`` encodes with the model's own HuggingFace ``tokenizer.json`` (the ``tokenizers`` package).
- ``EstimateCounter`` divides characters by a characters-per-token ratio, rounding up, and calibrates that ratio
  from the prompt token counts engines report (an exponentially weighted moving average, clamped).

A chat is rendered by the model's chat template before it is tokenized: role headers, separators and the
assistant header the reply starts from. Sluice does not render templates (they are Jinja programs shipped with
each model); it counts each message's text and adds ``ChatOverhead``: a constant per message plus a constant for the
reply header. For the usual templates (ChatML, Llama 3) that is within a few tokens of the engine's count, and
it is the part that ``EstimateCounter`` leaves out of calibration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from sluice.errors import ConfigError

if TYPE_CHECKING:
    from tokenizers import Tokenizer


@dataclass(frozen=True, slots=True)
class ChatOverhead:
    """Tokens a chat template adds around the messages' text."""

    per_message_tokens: int = 4
    reply_tokens: int = 3

    def __post_init__(self) -> None:
        if self.per_message_tokens < 0 or self.reply_tokens < 0:
            raise ConfigError("chat template overhead must not be negative")

    def tokens(self, messages: int) -> int:
        return messages * self.per_message_tokens + self.reply_tokens


class PromptCounter(Protocol):
    """Counts prompt tokens for one model."""

    def count_text(self, text: str) -> int: ...

    def count_ids(self, ids: list[int]) -> int: ...

    def chat_overhead(self, messages: int) -> int:
        """Tokens the chat template adds to a chat of ``messages`` messages."""
        ...

    def observe(self, chars: int, prompt_tokens: int) -> None:
        """An engine counted ``prompt_tokens`` for ``chars`` characters of text (calibration; may be a no-op)."""
        ...


class ExactCounter:
    """Counts with the model's own tokenizer. ``count_text`` adds the tokenizer's special tokens (BOS ...)
    as an engine does for a text completion."""

    def __init__(self, tokenizer: Tokenizer, chat: ChatOverhead | None = None) -> None:
        self._tokenizer = tokenizer
        self._chat = chat or ChatOverhead()

    @classmethod
    def from_file(cls, path: str | Path, chat: ChatOverhead | None = None) -> ExactCounter:
        """Load a HuggingFace ``tokenizer.json``."""
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise ConfigError("exact token counting needs the 'tokenizers' package") from exc
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises plain Exception for a missing or malformed file
            raise ConfigError(f"cannot load tokenizer {str(path)!r}: {exc}") from exc
        return cls(tokenizer, chat)

    def count_text(self, text: str) -> int:
        if not text:
            return 0
        return len(self._tokenizer.encode(text).ids)

    def count_ids(self, ids: list[int]) -> int:
        return len(ids)

    def chat_overhead(self, messages: int) -> int:
        return self._chat.tokens(messages)

    def observe(self, chars: int, prompt_tokens: int) -> None:
        """Nothing to calibrate: the count is exact."""


class EstimateCounter:
    """``ceil(characters / chars_per_token)``, with the ratio learnt from what the engine reports.

    Each ``observe`` moves the ratio by ``weight`` toward the observed one; samples without characters or
    tokens are ignored, and the ratio stays within ``[min_chars_per_token, max_chars_per_token]``.
    Give each model its own counter: the ratio is the model's tokenizer's.
    """

    def __init__(
        self,
        chars_per_token: float = 4.0,
        *,
        weight: float = 0.1,
        min_chars_per_token: float = 1.0,
        max_chars_per_token: float = 10.0,
        chat: ChatOverhead | None = None,
    ) -> None:
        if not 0 < min_chars_per_token <= chars_per_token <= max_chars_per_token:
            raise ConfigError(
                f"chars_per_token {chars_per_token} must lie within [{min_chars_per_token}, {max_chars_per_token}]"
                " and the bounds must be positive"
            )
        if not 0 < weight <= 1:
            raise ConfigError(f"calibration weight {weight} must lie in (0, 1]")
        self._ratio = float(chars_per_token)
        self._weight = weight
        self._min = min_chars_per_token
        self._max = max_chars_per_token
        self._chat = chat or ChatOverhead()

    @property
    def chars_per_token(self) -> float:
        return self._ratio

    def count_text(self, text: str) -> int:
        return math.ceil(len(text) / self._ratio)

    def count_ids(self, ids: list[int]) -> int:
        return len(ids)

    def chat_overhead(self, messages: int) -> int:
        return self._chat.tokens(messages)

    def observe(self, chars: int, prompt_tokens: int) -> None:
        if chars <= 0 or prompt_tokens <= 0:
            return
        ratio = (1 - self._weight) * self._ratio + self._weight * (chars / prompt_tokens)
        self._ratio = min(self._max, max(self._min, ratio))
