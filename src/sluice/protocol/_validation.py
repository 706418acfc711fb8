"""Body parsing for every endpoint: one place turns bad JSON or a schema violation into a 400 naming the field."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError

from sluice.errors import InvalidRequestError

M = TypeVar("M", bound=BaseModel)


def parse_request(model: type[M], body: bytes) -> M:
    if not body:
        raise InvalidRequestError("The request body is empty; expected a JSON object.", code="invalid_json")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        if err["type"] in ("json_invalid", "json_type"):
            raise InvalidRequestError(
                f"The request body is not valid JSON: {err['msg']}", code="invalid_json"
            ) from exc
        param = ".".join(str(p) for p in err["loc"]) or None
        if err["type"] == "model_type":
            raise InvalidRequestError("The request body must be a JSON object.", code="invalid_json") from exc
        raise InvalidRequestError(f"Invalid value for '{param}': {err['msg']}", param=param) from exc
