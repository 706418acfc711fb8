"""``create_app``: the ASGI application, from settings."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from sluice import __version__
from sluice.clock import Clock, MonotonicClock
from sluice.config import Settings
from sluice.errors import InvalidRequestError, NotFoundError, SluiceError
from sluice.gateway._banner import OPEN_ACCESS_WARNING, banner
from sluice.gateway._disconnect import ClientDisconnected
from sluice.gateway._reload import ConfigReloader
from sluice.gateway._responses import error_response
from sluice.gateway._runtime import open_service
from sluice.gateway.middleware import RequestObserver
from sluice.gateway.routes import INFERENCE_ROUTES, ROUTERS
from sluice.gateway.routes._openapi import component_schemas, inference_paths
from sluice.gateway.service import CHAT, COMPLETIONS, EMBEDDINGS
from sluice.telemetry import AccessLog, GatewayMetrics

log = logging.getLogger("sluice")


def create_app(settings: Settings, *, config_path: str | Path | None = None, clock: Clock | None = None) -> FastAPI:
    """The gateway for ``settings``. With ``config_path``, edits to that file (tiers, limits, keys) apply live."""
    clock = clock or MonotonicClock()
    metrics = GatewayMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_service(settings, clock, metrics) as service:
            app.state.service = service
            for line in banner(settings):
                log.info(line)
            if settings.auth.mode == "open":
                log.warning(OPEN_ACCESS_WARNING)
            reloader = None
            if config_path is not None:
                app.state.reloader = ConfigReloader(Path(config_path), settings, service, clock)
                reloader = asyncio.get_running_loop().create_task(app.state.reloader.run())
            try:
                yield
            finally:
                if reloader is not None:
                    reloader.cancel()

    app = FastAPI(title="Sluice", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.metrics = metrics
    app.state.max_body_bytes = settings.server.max_body_bytes
    app.router.routes.extend(INFERENCE_ROUTES)
    for router in ROUTERS:
        app.include_router(router)
    routes = frozenset([r.path for r in INFERENCE_ROUTES] + [r.path for router in ROUTERS for r in router.routes])
    app.add_middleware(
        RequestObserver,
        metrics=metrics,
        access_log=AccessLog(enabled=settings.server.access_log),
        clock=clock,
        routes=routes,
    )
    _install_error_handlers(app)
    _install_openapi(app)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    async def on_sluice_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, SluiceError)
        request.state.record.reason = exc.reason
        return error_response(exc)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            err: SluiceError = NotFoundError(f"Unknown route: {request.method} {request.url.path}", code="not_found")
        else:
            err = InvalidRequestError(str(exc.detail), status=exc.status_code, code="method_not_allowed"
                                      if exc.status_code == 405 else None)
        return await on_sluice_error(request, err)

    async def on_disconnect(request: Request, exc: Exception) -> Response:
        request.state.record.reason = "client_disconnected"
        return Response(status_code=499)  # nobody reads it; uvicorn drops it

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return await on_sluice_error(request, SluiceError("The server had an error while processing your request."))

    app.add_exception_handler(SluiceError, on_sluice_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(ClientDisconnected, on_disconnect)
    app.add_exception_handler(Exception, on_unexpected)


def _install_openapi(app: FastAPI) -> None:
    generate = app.openapi
    request_models = {e.path: e.request_model for e in (CHAT, COMPLETIONS, EMBEDDINGS)}

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            schema["paths"] = {**inference_paths(INFERENCE_ROUTES, request_models), **schema.get("paths", {})}
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(component_schemas(list(request_models.values())))
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
