from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from sluice.protocol._fields import REQUEST_CONFIG, JsonValue


class StreamOptions(BaseModel):
    model_config = REQUEST_CONFIG

    include_usage: bool | None = None
    __pydantic_extra__: dict[str, JsonValue] = Field(init=False)


class Usage(BaseModel):
    model_config = ConfigDict(extra="allow")

    prompt_tokens: int = Field(0, ge=0)
    completion_tokens: int = Field(0, ge=0)
    total_tokens: int = Field(0, ge=0)
