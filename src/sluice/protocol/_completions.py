"""``POST /v1/completions`` request (legacy text completions)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from sluice.protocol._fields import (
    REQUEST_CONFIG,
    Choices,
    JsonValue,
    Prompt,
    Seed,
    Stop,
    Temperature,
    TokenCount,
    TopP,
)
from sluice.protocol._usage import StreamOptions


class CompletionRequest(BaseModel):
    model_config = REQUEST_CONFIG

    model: str = Field(min_length=1)
    prompt: Prompt
    max_tokens: TokenCount | None = 16
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Choices = 1
    temperature: Temperature | None = None
    top_p: TopP | None = None
    seed: Seed | None = None
    stop: Stop | None = None
    echo: bool = False
    ignore_eos: bool = False
    user: str | None = None
    __pydantic_extra__: dict[str, JsonValue] = Field(init=False)

    def output_cap(self) -> int | None:
        return self.max_tokens

    def wants_usage_chunk(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def prompts(self) -> list[str | list[int]]:
        """The prompt as a list of prompts, each a string or a list of token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and isinstance(p[0], int):  # one prompt of token ids (the union is decided by its first item)
            return [p]
        return list(p)  # type: ignore[arg-type]
