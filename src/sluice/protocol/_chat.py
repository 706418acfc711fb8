"""``POST /v1/chat/completions`` request.

Only the fields Sluice acts on are typed (strictly: ``protocol/_fields.py``); everything else an engine accepts
(``top_k``, ``guided_json``, ...) passes through untouched (``extra="allow"``), provided its numbers can be
forwarded as they came.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from sluice.protocol._fields import (
    REQUEST_CONFIG,
    Choices,
    Content,
    JsonValue,
    Seed,
    Stop,
    Temperature,
    TokenCount,
    TopP,
)
from sluice.protocol._usage import StreamOptions

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class ChatMessage(BaseModel):
    model_config = REQUEST_CONFIG

    role: Role
    content: Content | None = None
    name: str | None = None
    __pydantic_extra__: dict[str, JsonValue] = Field(init=False)

    def text(self) -> str:
        """The message's text: the string content, or the text parts of a multi-part content."""
        if isinstance(self.content, str):
            return self.content
        if not self.content:
            return ""
        return "".join(str(part.get("text", "")) for part in self.content if part.get("type") == "text")


class ChatCompletionRequest(BaseModel):
    model_config = REQUEST_CONFIG

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1, fail_fast=True)
    max_tokens: TokenCount | None = None
    max_completion_tokens: TokenCount | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Choices = 1
    temperature: Temperature | None = None
    top_p: TopP | None = None
    seed: Seed | None = None
    stop: Stop | None = None
    ignore_eos: bool = False
    user: str | None = None
    __pydantic_extra__: dict[str, JsonValue] = Field(init=False)

    def output_cap(self) -> int | None:
        """The most tokens the client allows per choice (``max_completion_tokens`` wins over ``max_tokens``)."""
        return self.max_completion_tokens or self.max_tokens

    def wants_usage_chunk(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)
