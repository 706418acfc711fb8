"""``POST /v1/embeddings`` request."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from sluice.protocol._fields import INT32_MAX, REQUEST_CONFIG, EmbeddingInput, JsonValue


class EmbeddingRequest(BaseModel):
    model_config = REQUEST_CONFIG

    model: str = Field(min_length=1)
    input: EmbeddingInput
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, le=INT32_MAX)  # the engine holds it to its model's own size
    user: str | None = None
    __pydantic_extra__: dict[str, JsonValue] = Field(init=False)
