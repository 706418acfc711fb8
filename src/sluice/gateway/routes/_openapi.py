"""Request bodies are parsed by the pipeline (once, with pydantic), not by FastAPI; this puts their schemas in
the OpenAPI document all the same."""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

from sluice.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, ErrorResponse

_REF = "#/components/schemas/{model}"
DOCUMENTED = (ChatCompletionRequest, CompletionRequest, EmbeddingRequest, ErrorResponse)


def json_body(schema_name: str) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": _REF.format(model=schema_name)}}},
        }
    }


def component_schemas() -> dict[str, Any]:
    _, top = models_json_schema([(m, "validation") for m in DOCUMENTED], ref_template=_REF)
    return dict(top.get("$defs", {}))
