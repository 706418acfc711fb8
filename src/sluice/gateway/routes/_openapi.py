"""Request bodies are parsed by the pipeline (once, with pydantic), not by FastAPI; this puts their schemas and
the proxied paths in the OpenAPI document all the same."""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema
from starlette.routing import Route

from sluice.protocol import ErrorResponse

_REF = "#/components/schemas/{model}"


def inference_paths(routes: list[Route], request_models: dict[str, type]) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for route in routes:
        model = request_models[route.path]
        paths[route.path] = {"post": {
            "tags": ["inference"],
            "summary": (route.endpoint.__doc__ or "").strip().split("\n")[0],
            "operationId": route.name,
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": _REF.format(model=model.__name__)}}}},
            "responses": {
                "200": {"description": "The engine's answer (JSON, or text/event-stream when stream is true)."},
                "default": {"description": "An OpenAI-shaped error.", "content": {"application/json": {
                    "schema": {"$ref": _REF.format(model=ErrorResponse.__name__)}}}},
            },
        }}
    return paths


def component_schemas(models: list[type]) -> dict[str, Any]:
    _, top = models_json_schema([(m, "validation") for m in [*models, ErrorResponse]], ref_template=_REF)
    return dict(top.get("$defs", {}))
