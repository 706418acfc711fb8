"""Body parsing for every endpoint: one place turns bad JSON or a schema violation into a 400 naming the field."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from sluice.errors import InvalidRequestError
from sluice.protocol._fields import UNION_TAGS

M = TypeVar("M", bound=BaseModel)


def parse_request(model: type[M], body: bytes) -> M:
    if not body:
        raise InvalidRequestError("The request body is empty; expected a JSON object.", code="invalid_json")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        # the deepest error is the most precise one (a union reports one per alternative: the one that got
        # furthest into the value names the bad item); the arrays stop at their first bad item, so they are few
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        err = max(errors, key=_depth)
        if err["type"] in ("json_invalid", "json_type"):
            raise InvalidRequestError(
                f"The request body is not valid JSON: {err['msg']}", code="invalid_json"
            ) from exc
        if err["type"] == "model_type" and not err["loc"]:
            raise InvalidRequestError("The request body must be a JSON object.", code="invalid_json") from exc
        param = _param(err)
        # a value that fits no alternative of a union: say what each one expected
        said = [e["msg"] for e in errors if len(e["loc"]) == len(err["loc"]) and _param(e) == param]
        message = ", or ".join(dict.fromkeys([said[0]] + [m[:1].lower() + m[1:] for m in said[1:]]))
        raise InvalidRequestError(f"Invalid value for '{param}': {message}", param=param) from exc


def _param(error: ErrorDetails) -> str | None:
    """The field's dotted path, without the tags naming a union's alternatives."""
    return ".".join(str(p) for p in error["loc"] if p not in UNION_TAGS) or None


def _depth(error: ErrorDetails) -> int:
    return len(error["loc"])
