"""The price step: how many tokens a request may cost, reserved before it runs.

A price is the prompt's tokens plus the most the engine may generate: the output cap per choice (the request's,
else ``default_max_tokens``, never past the model's context: ``max_model_len - prompt``) times ``n`` choices,
summed over the prompts of a multi-prompt completion. When the request ends, ``Pricer.observe`` compares the
engine's reported prompt tokens with the price, which calibrates estimating counters.

What is not counted: image, audio and other non-text content parts (their token cost depends on the model's
processor). A price that left them out is marked ``calibrates=False`` so it does not skew calibration.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

from sluice.errors import NotFoundError
from sluice.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from sluice.quota._tokenizer import PromptCounter

PromptPart = str | list[int]


@dataclass(frozen=True, slots=True)
class Price:
    """Tokens reserved for one request.

    ``prompt_tokens`` is counted once whatever ``n``; ``max_output_tokens`` is already summed over choices and
    prompts. ``prompt_chars`` is the characters of text the prompt count was derived from, and ``fixed_tokens`` the
    prompt tokens that were not (token-id prompts, chat template overhead): the engine's reported prompt tokens
    minus ``fixed_tokens``, against ``prompt_chars``, is a calibration sample.
    """

    prompt_tokens: int
    max_output_tokens: int
    prompt_chars: int = 0
    fixed_tokens: int = 0
    calibrates: bool = True
    sequences: int = 1  # answers generated (choices times prompts): what max_output_tokens is summed over

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.max_output_tokens


@dataclass(slots=True)
class _Prompt:
    """A running count of one prompt: tokens from text, characters of that text, tokens from elsewhere."""

    text_tokens: int = 0
    chars: int = 0
    fixed_tokens: int = 0

    @property
    def tokens(self) -> int:
        return self.text_tokens + self.fixed_tokens

    def add(self, counter: PromptCounter, part: PromptPart) -> None:
        if isinstance(part, str):
            self.text_tokens += counter.count_text(part)
            self.chars += len(part)
        else:
            self.fixed_tokens += counter.count_ids(part)


class Pricer:
    """Prices requests per model with that model's ``PromptCounter``.

    ``max_model_len`` maps a model to its context length; a model missing from it (or mapped to ``None``)
    has no known limit.
    """

    def __init__(
        self,
        counters: Mapping[str, PromptCounter],
        default_max_tokens: int,
        max_model_len: Mapping[str, int | None] | None = None,
    ) -> None:
        self._counters = counters
        self._default_max_tokens = default_max_tokens
        self._max_model_len = max_model_len or {}

    def counter(self, model: str) -> PromptCounter:
        try:
            return self._counters[model]
        except KeyError:
            raise NotFoundError(f"The model '{model}' does not exist.", param="model") from None

    def price_chat(self, req: ChatCompletionRequest) -> Price:
        counter = self.counter(req.model)
        prompt = _Prompt(fixed_tokens=counter.chat_overhead(len(req.messages)))
        for text in _chat_texts(req):
            prompt.add(counter, text)
        cap = self._output_cap(req.model, req.output_cap(), prompt.tokens)
        return Price(prompt.tokens, req.n * cap, prompt.chars, prompt.fixed_tokens, not _has_media(req), req.n)

    def price_completion(self, req: CompletionRequest) -> Price:
        counter = self.counter(req.model)
        prompt_tokens = output_tokens = chars = fixed = 0
        prompts = req.prompts()
        for part in prompts:
            prompt = _Prompt()
            prompt.add(counter, part)
            prompt_tokens += prompt.tokens
            output_tokens += req.n * self._output_cap(req.model, req.output_cap(), prompt.tokens)
            chars += prompt.chars
            fixed += prompt.fixed_tokens
        return Price(prompt_tokens, output_tokens, chars, fixed, sequences=req.n * len(prompts))

    def price_embedding(self, req: EmbeddingRequest) -> Price:
        counter = self.counter(req.model)
        prompt = _Prompt()
        for part in _as_prompts(req.input):
            prompt.add(counter, part)
        return Price(prompt.tokens, 0, prompt.chars, prompt.fixed_tokens)

    def observe(self, model: str, price: Price, usage_prompt_tokens: int) -> None:
        """The engine reported ``usage_prompt_tokens`` for a request priced ``price``: calibrate the model's counter."""
        if not price.calibrates:
            return
        self.counter(model).observe(price.prompt_chars, usage_prompt_tokens - price.fixed_tokens)

    def _output_cap(self, model: str, requested: int | None, prompt_tokens: int) -> int:
        cap = requested if requested is not None else self._default_max_tokens
        limit = self._max_model_len.get(model)
        if limit is not None:
            cap = min(cap, limit - prompt_tokens)
        return max(0, cap)


def _chat_texts(req: ChatCompletionRequest) -> Iterable[str]:
    """Every piece of text the chat template renders: message contents, names, tool calls and tool schemas."""
    for message in req.messages:
        yield message.text()
        if message.name:
            yield message.name
        extra = message.model_extra or {}
        if extra.get("tool_calls"):
            yield json.dumps(extra["tool_calls"])
    extra = req.model_extra or {}
    if extra.get("tools"):
        yield json.dumps(extra["tools"])


def _has_media(req: ChatCompletionRequest) -> bool:
    return any(
        isinstance(m.content, list) and any(part.get("type") != "text" for part in m.content) for m in req.messages
    )


def _as_prompts(value: str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]]) -> list[PromptPart]:
    """An embedding ``input`` as a list of prompts, each a string or a list of token ids."""
    if isinstance(value, str):
        return [value]
    items: list[str | int | Sequence[int]] = list(value)
    if items and all(isinstance(x, int) for x in items):
        return [cast("list[int]", items)]
    return [x if isinstance(x, str) else list(cast("Sequence[int]", x)) for x in items]
