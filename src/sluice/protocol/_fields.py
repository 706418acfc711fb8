"""The field types of the request models: strict, bounded, and cheap to reject.

Every request model validates with ``REQUEST_CONFIG``: pydantic's strict mode (``"10"`` is not an integer, ``1`` is
not a boolean; an integer is still a valid number, as JSON has it) and no infinities or NaN in a number field.
Bounds are OpenAI's where it documents them (``n``, ``seed``, embeddings ``input``), the engines' where they are
stricter (``max_tokens >= 1``, as vLLM), and 32 bits for counts and token ids (no model has more).

Fields Sluice does not type (``extra="allow"``: ``top_k``, ``logit_bias``, ``tools`` ...) pass through to the engine,
re-serialised when the gateway must rewrite the body; ``JsonValue`` admits only what survives that: finite numbers
and integers within 64 bits (pydantic reads ``1e400`` as an infinity and ``2**70`` exactly; orjson refuses the
first and turns the second into a float).

Every array stops at its first bad item (``fail_fast``), and a prompt-like union (four alternatives) is decided
by the value's shape and checked against that alternative only: a hostile body costs one pass, however many items
are wrong. Union alternatives are named by shape tags, which are not part of a field's path: ``parse_request``
drops them (``UNION_TAGS``).
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import AfterValidator, ConfigDict, Discriminator, Field, GetCoreSchemaHandler, GetPydanticSchema, Tag
from pydantic_core import PydanticCustomError, core_schema

REQUEST_CONFIG = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

INT32_MAX = 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
UINT64_MAX = 2**64 - 1
TOKEN_ID_LIMIT = 2**31  # token ids are 0 <= id < 2**31
MAX_BATCH_ITEMS = 2048  # OpenAI: an embeddings input array has 1 to 2048 items

# shape tags of the unions below; parse_request leaves them out of the parameter it names
TEXT, TEXTS, IDS, ID_ARRAYS, PARTS = "string", "array of strings", "array of token ids", "array of arrays", "parts"
UNION_TAGS = frozenset({TEXT, TEXTS, IDS, ID_ARRAYS, PARTS})


def _faithful(value: Any) -> Any:
    """Accept a JSON value whose numbers the gateway can re-serialise as they came (orjson's range)."""
    pending = [value]
    while pending:
        item = pending.pop()
        kind = type(item)
        if kind is float:
            if not math.isfinite(item):
                raise PydanticCustomError("finite_number", "Numbers must be finite (not NaN, Infinity or 1e400)")
        elif kind is int:
            if not INT64_MIN <= item <= UINT64_MAX:
                raise PydanticCustomError("int_range", "Integers must fit in 64 bits")
        elif kind is list:
            pending.extend(item)
        elif kind is dict:
            pending.extend(item.values())
    return value


JsonValue = Annotated[Any, AfterValidator(_faithful)]
"""Any JSON value whose numbers are finite and whose integers fit in 64 bits."""

TokenCount = Annotated[int, Field(ge=1, le=INT32_MAX)]
Seed = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]  # OpenAI's seed is an int64
Choices = Annotated[int, Field(ge=1, le=128)]  # OpenAI's n
TokenId = Annotated[int, Field(ge=0, lt=TOKEN_ID_LIMIT)]
TokenIds = Annotated[list[TokenId], Field(min_length=1, fail_fast=True)]
Temperature = Annotated[float, Field(ge=0, le=2)]
TopP = Annotated[float, Field(gt=0, le=1)]


def token_shape(value: Any) -> str | None:
    """Which alternative of a prompt-like union a JSON value is (None: none of them)."""
    if isinstance(value, str):
        return TEXT
    if not isinstance(value, list):
        return None
    first = value[0] if value else None
    if isinstance(first, str):
        return TEXTS
    if isinstance(first, list):
        return ID_ARRAYS
    return IDS  # token ids, or empty (rejected there: at least one item)


def _one_of(what: str) -> Discriminator:
    """Decide a prompt-like union by ``token_shape``: the value is checked against that alternative only."""
    return Discriminator(token_shape, custom_error_type="invalid_shape", custom_error_message=f"Expected {what}")


Prompt = Annotated[
    Annotated[str, Tag(TEXT)]
    | Annotated[list[str], Tag(TEXTS), Field(min_length=1, fail_fast=True)]
    | Annotated[TokenIds, Tag(IDS)]
    | Annotated[list[TokenIds], Tag(ID_ARRAYS), Field(min_length=1, fail_fast=True)],
    _one_of("a string, an array of strings, an array of token ids or an array of arrays of token ids"),
]
"""A completions prompt. An empty string is the engine's to judge (a tokenizer may add a BOS token to it)."""

NonEmptyText = Annotated[str, Field(min_length=1)]
EmbeddingInput = Annotated[
    Annotated[NonEmptyText, Tag(TEXT)]
    | Annotated[list[NonEmptyText], Tag(TEXTS), Field(min_length=1, max_length=MAX_BATCH_ITEMS, fail_fast=True)]
    | Annotated[TokenIds, Tag(IDS)]
    | Annotated[list[TokenIds], Tag(ID_ARRAYS), Field(min_length=1, max_length=MAX_BATCH_ITEMS, fail_fast=True)],
    _one_of("a non-empty string, an array of strings, an array of token ids or an array of arrays of token ids"),
]
"""An embeddings input, as OpenAI documents it: never an empty string, at most 2048 inputs in one request."""


def labelled(*members: tuple[Any, str]) -> GetPydanticSchema:
    """A plain (smart) union whose alternatives are named by shape tags: no Python call per value, which matters
    for ``content`` (one per message). Its errors are one per alternative; ``parse_request`` reports the deepest."""
    def build(source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.union_schema([(handler.generate_schema(member), tag) for member, tag in members])

    return GetPydanticSchema(build)


Stop = Annotated[
    str | list[str], labelled((str, TEXT), (Annotated[list[str], Field(fail_fast=True)], TEXTS))
]

ContentPart = dict[str, JsonValue]
Content = Annotated[
    str | list[ContentPart], labelled((str, TEXT), (Annotated[list[ContentPart], Field(fail_fast=True)], PARTS))
]
