"""``POST /v1/responses`` (OpenAI's Responses API) for text, as a chat completion and back.

The gateway serves a Responses request by turning it into a chat completion (``chat_body``), sending that through
the chat pipeline, and turning the chat answer into a Response (``response_from_chat``; streams: ``_response_events``).
What it supports: ``input`` (a string, or messages whose content is a string or text parts), ``instructions``,
``max_output_tokens``, ``temperature``, ``top_p``, ``stream``, ``user``, ``metadata``. Anything that needs state
or tools (``previous_response_id``, ``store: true``, ``tools``, ``reasoning``, ...) is refused with a 400 naming it:
Sluice stores no responses and runs no tools.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from sluice.errors import InvalidRequestError
from sluice.protocol._fields import (
    PARTS,
    REQUEST_CONFIG,
    TEXT,
    JsonValue,
    Temperature,
    TokenCount,
    TopP,
    labelled,
)

_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
_WHY_REFUSED = {
    "previous_response_id": "Sluice stores no responses: send the whole conversation in `input`.",
    "store": "Sluice stores no responses: leave `store` out or set it to false.",
    "conversation": "Sluice stores no conversations: send the whole conversation in `input`.",
    "background": "Sluice runs responses in the foreground only.",
}
_PLAIN_TEXT = {"format": {"type": "text"}}


class InputText(BaseModel):
    model_config = _STRICT

    type: Literal["input_text", "output_text"]
    text: str


class InputMessage(BaseModel):
    model_config = _STRICT

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: Annotated[str | list[InputText],
                       labelled((str, TEXT), (Annotated[list[InputText], Field(fail_fast=True)], PARTS))]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class ResponsesRequest(BaseModel):
    model_config = REQUEST_CONFIG

    model: str = Field(min_length=1)
    input: Annotated[str | list[InputMessage], labelled(
        (Annotated[str, Field(min_length=1)], TEXT),
        (Annotated[list[InputMessage], Field(min_length=1, fail_fast=True)], PARTS))]
    instructions: str | None = None
    max_output_tokens: TokenCount | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    stream: bool = False
    user: str | None = None
    metadata: dict[str, str] | None = None
    __pydantic_extra__: dict[str, JsonValue] = Field(init=False)

    def refuse_unsupported(self) -> None:
        """A 400 naming the first field this gateway cannot honour (a field set to null or empty is left out)."""
        for name, value in (self.model_extra or {}).items():
            if value in (None, [], {}, False) or (name == "text" and value == _PLAIN_TEXT):
                continue
            why = _WHY_REFUSED.get(name, "Sluice's /v1/responses serves text only (input, instructions, "
                                         "max_output_tokens, temperature, top_p, stream); use /v1/chat/completions "
                                         "for more.")
            raise InvalidRequestError(f"`{name}` is not supported: {why}", param=name, code="unsupported_parameter")


def chat_body(req: ResponsesRequest) -> bytes:
    """The chat completion request that answers ``req`` (a stream carries usage, for ``response.completed``)."""
    messages: list[dict[str, str]] = []
    if req.instructions:
        messages.append({"role": "system", "content": req.instructions})
    if isinstance(req.input, str):
        messages.append({"role": "user", "content": req.input})
    else:
        messages += [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.input]
    doc: dict[str, Any] = {"model": req.model, "messages": messages, "stream": req.stream}
    if req.stream:
        doc["stream_options"] = {"include_usage": True}
    optional = {"max_tokens": req.max_output_tokens, "temperature": req.temperature, "top_p": req.top_p,
                "user": req.user}
    doc.update({name: value for name, value in optional.items() if value is not None})
    return orjson.dumps(doc)


def response_object(req: ResponsesRequest, response_id: str, created_at: int, *, status: str,
                    text: str | None = None, usage: Any = None, finish_reason: str | None = None) -> dict[str, Any]:
    """A Response as OpenAI shapes it: ``text`` None is no output yet (a stream's first event)."""
    output = [] if text is None else [output_message(response_id, text, "completed")]
    return {
        "id": f"resp_{response_id}", "object": "response", "created_at": created_at, "status": status,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if finish_reason == "length" else None,
        "instructions": req.instructions, "max_output_tokens": req.max_output_tokens, "model": req.model,
        "output": output, "parallel_tool_calls": False, "previous_response_id": None, "store": False,
        "temperature": req.temperature, "top_p": req.top_p, "text": _PLAIN_TEXT, "tool_choice": "none",
        "tools": [], "truncation": "disabled", "user": req.user, "metadata": req.metadata or {},
        "usage": response_usage(usage),
    }


def output_message(response_id: str, text: str, status: str) -> dict[str, Any]:
    content = [] if status == "in_progress" else [output_text(text)]
    return {"type": "message", "id": f"msg_{response_id}", "status": status, "role": "assistant", "content": content}


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def response_usage(usage: Any) -> dict[str, Any] | None:
    """A chat ``usage`` as a Response's: input and output tokens."""
    if not isinstance(usage, dict):
        return None
    prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + completion}


def response_from_chat(req: ResponsesRequest, chat: Any, response_id: str, created_at: int) -> dict[str, Any]:
    """The Response for a chat completion's answer ``chat`` (its first choice)."""
    choices = chat.get("choices") if isinstance(chat, dict) else None
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    message = _object(choice.get("message"))
    finish_reason = choice.get("finish_reason")
    return response_object(req, response_id, created_at, status=_status(finish_reason),
                           text=str(message.get("content") or ""), usage=_object(chat).get("usage"),
                           finish_reason=finish_reason)


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _status(finish_reason: Any) -> str:
    return "incomplete" if finish_reason == "length" else "completed"
