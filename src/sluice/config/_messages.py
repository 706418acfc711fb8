"""pydantic's validation errors said in plain words: ``models.0.engine.dialect: must be one of 'vllm', 'sglang'
or 'lmdeploy' (got 'vlm')``; an unknown setting names the closest known one."""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from sluice.config.schema import Settings

_PLAIN: dict[str, str] = {  # pydantic error type -> what the user reads (``{name}``: the error's context)
    "missing": "required setting is missing",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number, not a fraction",
    "int_type": "must be a whole number",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be text",
    "list_type": "must be a list (- item, or [a, b])",
    "dict_type": "must be settings (key: value)",
    "model_type": "must be settings (key: value)",
    "model_attributes_type": "must be settings (key: value)",
    "greater_than": "must be more than {gt}",
    "greater_than_equal": "must be at least {ge}",
    "less_than": "must be less than {lt}",
    "less_than_equal": "must be at most {le}",
    "too_short": "must have at least {min_length} item(s)",
    "too_long": "must have at most {max_length} item(s)",
    "string_too_short": "must have at least {min_length} character(s)",
    "string_too_long": "must have at most {max_length} character(s)",
    "string_pattern_mismatch": "does not have the expected form ({pattern})",
    "literal_error": "must be one of {expected}",
    "enum": "must be one of {expected}",
    "url_parsing": "is not a URL ({error})",
    "url_scheme": "must be a URL of scheme {expected_schemes}",
}
_SHOWN_INPUT = (str, int, float, bool)
_SECRET_WORDS = ("hash", "secret", "key", "token", "password")


def describe(err: Mapping[str, Any]) -> str:
    """``field.path: what is wrong`` for one of pydantic's ``errors()``."""
    loc = tuple(err["loc"])
    where = ".".join(str(p) for p in loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        msg = "unknown setting" + _did_you_mean(loc)
    elif kind in _PLAIN:
        msg = _PLAIN[kind].format_map(_Context(err.get("ctx") or {}))
        if kind != "missing" and isinstance(err.get("input"), _SHOWN_INPUT) and not _secret(loc):
            msg += f" (got {err['input']!r})"
    else:
        msg = str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return f"{where}: {msg}" if where else msg


def _secret(loc: Sequence[str | int]) -> bool:
    """A value that may be a secret (a key pasted where its hash goes, a JWT secret) is never echoed."""
    return bool(loc) and any(word in str(loc[-1]).lower() for word in _SECRET_WORDS)


class _Context(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "?"


def _did_you_mean(loc: Sequence[str | int]) -> str:
    if not loc or not isinstance(loc[-1], str):
        return ""
    known = known_settings(loc[:-1])
    close = difflib.get_close_matches(loc[-1], sorted(known), n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]}?)"
    return f" (known here: {', '.join(sorted(known))})" if 0 < len(known) <= 12 else ""


def known_settings(loc: Sequence[str | int]) -> set[str]:
    """The setting names allowed at ``loc`` (a path into ``Settings``); empty when ``loc`` is not a settings block."""
    annotation: Any = Settings
    for part in loc:
        annotation = _step(annotation, part)
        if annotation is None:
            return set()
    model = _model(annotation)
    if model is None:
        return set()
    return {field.alias or name for name, field in model.model_fields.items()}


def _step(annotation: Any, part: str | int) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return next((s for a in typing.get_args(annotation) if (s := _step(a, part)) is not None), None)
    if origin in (list, tuple, Sequence) and isinstance(part, int):
        return typing.get_args(annotation)[0]
    if origin in (dict, Mapping):
        return typing.get_args(annotation)[1]
    model = _model(annotation)
    if model is not None and isinstance(part, str) and part in model.model_fields:
        return model.model_fields[part].annotation
    return None


def _model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return next((m for a in typing.get_args(annotation) if (m := _model(a)) is not None), None)
    return None
