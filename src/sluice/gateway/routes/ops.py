from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from sluice.gateway._asgi import RouteSpec
from sluice.gateway.routes._openapi import openapi_document


async def health(request: Request) -> Response:
    """Alive: the process answers."""
    return Response(b'{"status":"ok"}', media_type="application/json")


async def ready(request: Request) -> Response:
    """Ready: every model has at least one engine replica answering its health probe."""
    models = await request.app.state.service.readiness()
    ok = all(models.values())
    return Response(orjson.dumps({"ready": ok, "models": models}), status_code=200 if ok else 503,
                    media_type="application/json")


async def metrics(request: Request) -> Response:
    """Prometheus metrics: of every worker, merged (``?worker=self``: of the worker answering alone)."""
    gateway_metrics = request.app.state.metrics
    workers = getattr(request.app.state, "worker_metrics", None)
    if workers is None or request.query_params.get("worker") == "self":
        return Response(gateway_metrics.render(), media_type=gateway_metrics.content_type)
    return Response(await workers.merged(), media_type=gateway_metrics.content_type)


async def openapi(request: Request) -> Response:
    """This document."""
    app = request.app
    if getattr(app.state, "openapi", None) is None:
        app.state.openapi = orjson.dumps(openapi_document(app.routes))
    return Response(app.state.openapi, media_type="application/json")


ROUTES = [
    RouteSpec("GET", "/health", health, "operations"),
    RouteSpec("GET", "/ready", ready, "operations"),
    RouteSpec("GET", "/metrics", metrics, "monitoring", documented=False),
    RouteSpec("GET", "/openapi.json", openapi, "operations", documented=False),
]
