"""Response bodies shaped as vLLM's OpenAI server writes them (chat, completions, their stream chunks, errors).

With ``return_token_ids`` (``ResponseHeader.return_token_ids``) they carry token ids where vLLM 0.32 puts them
(vllm/entrypoints/openai/{chat_completion,completion}/serving.py and protocol.py beside them):

- chat, whole: ``prompt_token_ids`` at the top level, ``token_ids`` in each choice;
- chat, streamed: ``prompt_token_ids`` at the top level of each choice's opening ``role`` chunk, ``token_ids`` (the
  chunk's tokens) in every later choice;
- completions, whole: ``token_ids`` and ``prompt_token_ids`` in each choice;
- completions, streamed: in each choice, ``prompt_token_ids`` (on that choice's first chunk, ``null`` after:
  vLLM sets the field on every chunk) and ``token_ids``.

Without it nothing is added (vLLM would write those fields as ``null``; the simulator keeps its smaller bodies).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from sluice.errors import SluiceError
from sluice.protocol import sse_event
from sluice.sim._logprobs import TokenLogprob, chat_logprobs, completion_logprobs

_ERROR_TYPES = {
    400: "BadRequestError",
    401: "UnauthorizedError",
    403: "ForbiddenError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    413: "RequestEntityTooLargeError",
    429: "TooManyRequestsError",
    503: "ServiceUnavailableError",
}


def error_body(exc: SluiceError) -> bytes:
    """vLLM's error body: ``{"error": {"message", "type", "param", "code": <status>}}``; ``param`` names the field
    at fault, where one is (vLLM's ``VLLMValidationError`` carries it)."""
    kind = _ERROR_TYPES.get(exc.status, "InternalServerError")
    return orjson.dumps({"error": {"message": exc.message, "type": kind, "param": exc.param, "code": exc.status}})


Ids = tuple[int, ...]


@dataclass(frozen=True)
class TokenIds:
    """A response's token ids, per choice: the prompt it answers, the tokens it generated."""

    prompts: list[Ids]
    outputs: list[Ids]


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
    return_token_ids: bool = False
    top_logprobs: int | None = None  # with logprobs: how many of the most likely tokens each position lists

    @classmethod
    def new(
        cls, kind: str, *, created: int, model: str, include_usage: bool = False, return_token_ids: bool = False,
        top_logprobs: int | None = None,
    ) -> ResponseHeader:
        prefix = "chatcmpl-" if kind == "chat" else "cmpl-"
        return cls(kind, prefix + uuid.uuid4().hex, created, model, include_usage, return_token_ids, top_logprobs)

    def _base(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    # -- whole responses --------------------------------------------------------------------------------

    def full(
        self, texts: list[str], reasons: list[str], prompt_tokens: int, completion_tokens: int,
        ids: TokenIds | None = None, logprobs: list[list[TokenLogprob]] | None = None,
    ) -> bytes:
        """The whole response; ``ids`` (per choice) are written only under ``return_token_ids``, ``logprobs`` (per
        choice, per token) when the request asked for them."""
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
        if logprobs is not None:
            for choice, entries in zip(body["choices"], logprobs, strict=True):
                choice["logprobs"] = self._logprobs(entries, 0)
        if self.return_token_ids and ids is not None:
            for choice, output in zip(body["choices"], ids.outputs, strict=True):
                choice["token_ids"] = output
            if self.kind == "chat":
                body["prompt_token_ids"] = ids.prompts[0]
            else:
                for choice, prompt in zip(body["choices"], ids.prompts, strict=True):
                    choice["prompt_token_ids"] = prompt
        return orjson.dumps(body)

    # -- stream chunks (each already framed as an SSE event) ---------------------------------------------

    def role_chunk(self, index: int, prompt_ids: Ids | None = None) -> bytes:
        """A chat choice's opening chunk; under ``return_token_ids`` it carries the prompt's ids."""
        choice = {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                  "finish_reason": None}
        if self.return_token_ids:
            return self._chunk(choice, {"prompt_token_ids": prompt_ids})
        return self._chunk(choice)

    def token_chunk(
        self, index: int, text: str, finish_reason: str | None, token_id: int = 0, prompt_ids: Ids | None = None,
        logprob: TokenLogprob | None = None, text_offset: int = 0,
    ) -> bytes:
        """One token of a choice; under ``return_token_ids`` it carries its id (and a completion's first chunk, the
        prompt's ids); with ``logprob``, its log probability (a completion's at ``text_offset`` in the text)."""
        if self.kind == "chat":
            choice: dict[str, Any] = {"index": index, "delta": {"content": text}, "logprobs": None,
                                      "finish_reason": finish_reason}
        else:
            choice = {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason,
                      "stop_reason": None}
            if self.return_token_ids:
                choice["prompt_token_ids"] = prompt_ids
        if self.return_token_ids:
            choice["token_ids"] = (token_id,)
        if logprob is not None:
            choice["logprobs"] = self._logprobs([logprob], text_offset)
        return self._chunk(choice)

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        body = self._base(self._chunk_object())
        body["choices"] = []
        body["usage"] = usage(prompt_tokens, completion_tokens)
        return sse_event(orjson.dumps(body))

    def _chunk(self, choice: dict[str, Any], extra: dict[str, Any] | None = None) -> bytes:
        body = self._base(self._chunk_object())
        body["choices"] = [choice]
        if self.include_usage:
            body["usage"] = None
        if extra:
            body.update(extra)
        return sse_event(orjson.dumps(body))

    def _logprobs(self, entries: list[TokenLogprob], first_offset: int) -> dict[str, Any]:
        if self.kind == "chat":
            return chat_logprobs(entries)
        return completion_logprobs(entries, first_offset=first_offset)

    def _chunk_object(self) -> str:
        return "chat.completion.chunk" if self.kind == "chat" else "text_completion"
