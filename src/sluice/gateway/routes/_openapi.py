"""The OpenAPI document, made from the route table and the pydantic models of the bodies."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic.json_schema import models_json_schema

from sluice import __version__
from sluice.protocol import ErrorResponse

if TYPE_CHECKING:
    from sluice.gateway._asgi import RouteSpec

_REF = "#/components/schemas/{model}"


def openapi_document(routes: Sequence[RouteSpec]) -> dict[str, Any]:
    documented = [r for r in routes if r.documented]
    models = {m for r in documented for m in (r.request_model, r.response_model) if m is not None}
    _, top = models_json_schema([(m, "validation") for m in sorted(models | {ErrorResponse}, key=lambda m: m.__name__)],
                                ref_template=_REF)
    paths: dict[str, Any] = {}
    for route in documented:
        operation: dict[str, Any] = {
            "tags": [route.tag],
            "summary": (route.function.__doc__ or "").strip().split("\n")[0],
            "operationId": route.function.__name__,
            "responses": {
                "200": _ok(route),
                "default": {"description": "An OpenAI-shaped error.", "content": _json(ErrorResponse.__name__)},
            },
        }
        if route.request_model is not None:
            operation["requestBody"] = {"required": True, "content": _json(route.request_model.__name__)}
        path = route.path.replace(":path}", "}")
        if "{" in path:
            name = path[path.index("{") + 1:path.index("}")]
            operation["parameters"] = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}]
        paths.setdefault(path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "Sluice", "version": __version__,
                 "description": "An OpenAI-compatible gateway that controls the traffic reaching LLM engines."},
        "paths": paths,
        "components": {"schemas": top.get("$defs", {})},
    }


def _ok(route: RouteSpec) -> dict[str, Any]:
    if route.response_model is not None:
        return {"description": "OK", "content": _json(route.response_model.__name__)}
    if route.request_model is not None:
        return {"description": "The engine's answer (JSON, or text/event-stream when stream is true)."}
    return {"description": "OK"}


def _json(model_name: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": _REF.format(model=model_name)}}}
