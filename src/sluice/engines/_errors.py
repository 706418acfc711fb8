"""What engines' error answers mean, translated once into Sluice's exception tree.

An engine's 4xx is the client's fault (prompt too long, bad parameter) and is relayed with the engine's status
and message; a prompt longer than the model's context gets OpenAI's ``code: "context_length_exceeded"`` whatever
the engine called it. An engine's 503 or 429 means the engine is overloaded: that is a 503 ``engine_overloaded`` to
the client, never a 429, which Sluice keeps for its own quotas. Any other 5xx is a 502 ``engine_error`` whose
message names no engine (the replica's address and the engine's own words go to the log, not to API clients).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import orjson

from sluice.engines.dialects import OverloadSignature
from sluice.errors import EngineUnavailableError, NotFoundError, SluiceError, UpstreamError

log = logging.getLogger("sluice")

_DEFAULT_OVERLOAD = OverloadSignature()

# How engines say "the prompt (plus max_tokens) does not fit the context": vLLM ("This model's maximum context
# length is N tokens", "The decoder prompt (length N) is longer than the maximum model length of M"; renderers/
# params.py, v1/engine/input_processor.py), SGLang ("The input (N tokens) is longer than the model's context length
# (M tokens)"), the simulator (OpenAI's own wording).
_CONTEXT_LENGTH = re.compile(r"maximum context length|longer than the (?:maximum model length|model's context length)",
                             re.IGNORECASE)


def engine_error(status: int, body: bytes, replica: str, overload: OverloadSignature | None = None,
                 path: str = "") -> SluiceError:
    """``overload``: what the replica's dialect calls "too busy" (its statuses and messages); default 429 and 503.
    ``replica`` is logged, never put in the error; ``path`` (the endpoint) names the input a too-long error blames."""
    doc = _json(body)
    message = _message_of(doc, body) or f"The engine answered {status}."
    if (overload or _DEFAULT_OVERLOAD).matches(status, message):
        return EngineUnavailableError(
            f"The engine is overloaded: {message}", status=503, code="engine_overloaded", reason="engine_overloaded"
        )
    if status == 404:
        return NotFoundError(message)
    if 400 <= status < 500:
        if _CONTEXT_LENGTH.search(message):
            return UpstreamError(message, status=status, param=_input_param(path), code="context_length_exceeded")
        param, code = _field_of(doc, "param"), _field_of(doc, "code")
        return UpstreamError(message, status=status, param=param, code=code)
    log.warning("engine %s failed (%d): %s", replica, status, message[:500])
    return EngineUnavailableError(
        f"The model's engine failed ({status}) while processing your request.", status=502, code="engine_error",
        reason="engine_error",
    )


def _input_param(path: str) -> str:
    """The request field holding the input, as OpenAI names it in a ``context_length_exceeded`` error."""
    if path.endswith("/chat/completions"):
        return "messages"
    if path.endswith("/completions"):
        return "prompt"
    if path.endswith("/embeddings"):
        return "input"
    return "messages"


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def _field_of(doc: Any, name: str) -> str | None:
    """``param`` or ``code`` of an OpenAI-shaped error body, when it is a string (vLLM sends its status as code)."""
    inner = doc.get("error") if isinstance(doc, dict) else None
    value = inner.get(name) if isinstance(inner, dict) else None
    return value if isinstance(value, str) else None


def _message_of(doc: Any, body: bytes) -> str | None:
    """The message in vLLM's ``{"error": {"message"}}``, its older ``{"object": "error", "message"}``, or text."""
    if doc is None:
        text = body.decode(errors="replace").strip()
        return text[:500] or None
    if isinstance(doc, dict):
        inner = doc.get("error")
        if isinstance(inner, dict) and isinstance(inner_message := inner.get("message"), str):
            return inner_message
        if isinstance(inner, str):
            return inner
        if isinstance(message := doc.get("message"), str):
            return message
        if isinstance(detail := doc.get("detail"), str):
            return detail
    return None
