"""What a request asks of its generation besides a prompt and a length: log probabilities, and what the simulator
does not do, refused plainly (400, the field named) rather than ignored.

The simulator generates words, nothing else. So it refuses:

- ``tools`` (unless ``tool_choice`` is ``"none"``), a ``tool_choice`` that demands a call, and the older
  ``functions`` / ``function_call``: it never calls a tool;
- ``response_format`` other than ``{"type": "text"}``, and the engines' own structured-output fields (vLLM's
  ``guided_json``, ``guided_regex``, ``guided_choice``, ``guided_grammar``, ``structured_outputs``; SGLang's ``regex``,
  ``json_schema``, ``ebnf``), in every dialect: its text would not follow the format.

Stop sequences are honoured (``_stops``), and log probabilities are returned (``_logprobs``).
"""

from __future__ import annotations

from collections.abc import Mapping

from sluice.errors import InvalidRequestError
from sluice.sim._logprobs import MAX_TOP_LOGPROBS

STRUCTURED_OUTPUT_FIELDS = ("guided_json", "guided_regex", "guided_choice", "guided_grammar", "structured_outputs",
                            "regex", "json_schema", "ebnf")


def refuse_unsupported(extra: Mapping[str, object]) -> None:
    """Raise 400 for a field asking for what the simulator cannot do."""
    tool_choice = extra.get("tool_choice")
    if extra.get("tools") and tool_choice != "none":
        raise InvalidRequestError("The simulator does not call tools: it only generates text. Send the request "
                                  'without tools, or with tool_choice: "none".', param="tools")
    if tool_choice not in (None, "none", "auto"):
        raise InvalidRequestError("The simulator does not call tools, so tool_choice can only be \"none\" or "
                                  '"auto".', param="tool_choice")
    if extra.get("functions") and extra.get("function_call") != "none":
        raise InvalidRequestError("The simulator does not call functions: it only generates text.",
                                  param="functions")
    if extra.get("function_call") not in (None, "none", "auto"):
        raise InvalidRequestError("The simulator does not call functions.", param="function_call")
    response_format = extra.get("response_format")
    if response_format is not None and response_format != {"type": "text"}:
        raise InvalidRequestError("The simulator generates free text only: response_format can only be "
                                  '{"type": "text"}.', param="response_format")
    for name in STRUCTURED_OUTPUT_FIELDS:
        if extra.get(name) is not None:
            raise InvalidRequestError(f"The simulator generates free text only: it does not support {name}.",
                                      param=name)


def chat_top_logprobs(extra: Mapping[str, object]) -> int | None:
    """Chat's ``logprobs: true`` (and ``top_logprobs: n``): how many alternatives each token lists, or None."""
    logprobs, top = extra.get("logprobs"), extra.get("top_logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        raise InvalidRequestError("logprobs must be a boolean.", param="logprobs")
    if top is not None:
        _check_count(top, "top_logprobs")
        if not logprobs:
            raise InvalidRequestError("top_logprobs needs logprobs: true.", param="top_logprobs")
    if not logprobs:
        return None
    return top if isinstance(top, int) else 0


def completion_top_logprobs(extra: Mapping[str, object]) -> int | None:
    """Completions' ``logprobs: n``: how many alternatives each token lists, or None."""
    logprobs = extra.get("logprobs")
    if logprobs is None:
        return None
    return _check_count(logprobs, "logprobs")


def _check_count(value: object, param: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_TOP_LOGPROBS:
        raise InvalidRequestError(f"{param} must be an integer from 0 to {MAX_TOP_LOGPROBS}.", param=param)
    return value
