"""Response bodies shaped as vLLM's OpenAI server writes them (chat, completions, their stream chunks, errors)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from sluice.errors import SluiceError
from sluice.protocol import sse_event

_ERROR_TYPES = {
    400: "BadRequestError",
    401: "UnauthorizedError",
    403: "ForbiddenError",
    404: "NotFoundError",
    413: "RequestEntityTooLargeError",
    429: "TooManyRequestsError",
    503: "ServiceUnavailableError",
}


def error_body(exc: SluiceError) -> bytes:
    """vLLM's error body: ``{"error": {"message", "type", "param", "code": <status>}}``."""
    kind = _ERROR_TYPES.get(exc.status, "InternalServerError")
    return orjson.dumps({"error": {"message": exc.message, "type": kind, "param": None, "code": exc.status}})


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
    }


@dataclass(frozen=True)
class ResponseHeader:
    """What every body of one response shares."""

    kind: str  # "chat" or "completion"
    id: str
    created: int
    model: str
    include_usage: bool = False

    @classmethod
    def new(cls, kind: str, *, created: int, model: str, include_usage: bool = False) -> ResponseHeader:
        prefix = "chatcmpl-" if kind == "chat" else "cmpl-"
        return cls(kind, prefix + uuid.uuid4().hex, created, model, include_usage)

    def _base(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    # -- whole responses --------------------------------------------------------------------------------

    def full(self, texts: list[str], reasons: list[str], prompt_tokens: int, completion_tokens: int) -> bytes:
        if self.kind == "chat":
            body = self._base("chat.completion")
            body["choices"] = [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": text, "tool_calls": []},
                    "logprobs": None,
                    "finish_reason": reason,
                    "stop_reason": None,
                }
                for i, (text, reason) in enumerate(zip(texts, reasons, strict=True))
            ]
        else:
            body = self._base("text_completion")
            body["choices"] = [
                {"index": i, "text": text, "logprobs": None, "finish_reason": reason, "stop_reason": None}
                for i, (text, reason) in enumerate(zip(texts, reasons, strict=True))
            ]
        body["usage"] = usage(prompt_tokens, completion_tokens)
        return orjson.dumps(body)

    # -- stream chunks (each already framed as an SSE event) ---------------------------------------------

    def role_chunk(self, index: int) -> bytes:
        return self._chunk({"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                            "finish_reason": None})

    def token_chunk(self, index: int, text: str, finish_reason: str | None) -> bytes:
        if self.kind == "chat":
            choice: dict[str, Any] = {"index": index, "delta": {"content": text}, "logprobs": None,
                                      "finish_reason": finish_reason}
        else:
            choice = {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason,
                      "stop_reason": None}
        return self._chunk(choice)

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        body = self._base(self._chunk_object())
        body["choices"] = []
        body["usage"] = usage(prompt_tokens, completion_tokens)
        return sse_event(orjson.dumps(body))

    def _chunk(self, choice: dict[str, Any]) -> bytes:
        body = self._base(self._chunk_object())
        body["choices"] = [choice]
        if self.include_usage:
            body["usage"] = None
        return sse_event(orjson.dumps(body))

    def _chunk_object(self) -> str:
        return "chat.completion.chunk" if self.kind == "chat" else "text_completion"
