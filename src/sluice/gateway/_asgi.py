"""The ASGI application: lifespan, the request observer, a table of routes, and errors as OpenAI bodies.

Sluice serves a handful of fixed routes, and every microsecond of the proxy path counts: this is the one layer
between uvicorn and the handlers, in place of a framework's stack of middlewares (FastAPI's measured at about a
quarter of the gateway's CPU per request). Requests and responses are Starlette's.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import SimpleNamespace

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from sluice.clock import Clock
from sluice.errors import InvalidRequestError, NotFoundError, SluiceError
from sluice.gateway._disconnect import ClientDisconnected
from sluice.gateway._responses import error_response
from sluice.gateway.middleware import RequestObserver
from sluice.telemetry import AccessLog, GatewayMetrics

log = logging.getLogger("sluice")

Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class RouteSpec:
    method: str
    path: str
    handler: Handler
    tag: str
    request_model: type[BaseModel] | None = None  # documented body; parsed by the handler, not here
    response_model: type[BaseModel] | None = None
    documented: bool = True


Lifespan = Callable[["GatewayApp"], AbstractAsyncContextManager[None]]


class GatewayApp:
    def __init__(self, routes: Sequence[RouteSpec], *, lifespan: Lifespan, metrics: GatewayMetrics,
                 access_log: AccessLog, clock: Clock) -> None:
        self.state = SimpleNamespace(metrics=metrics)
        self.routes = tuple(routes)
        self._handlers = {(r.method, r.path): r.handler for r in routes}
        self._paths = frozenset(r.path for r in routes)
        self._lifespan = lifespan
        self._observed = RequestObserver(self._dispatch, metrics=metrics, access_log=access_log, clock=clock,
                                         routes=self._paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._observed(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._run_lifespan(receive, send)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = self
        request = Request(scope, receive)
        try:
            handler = self._handlers.get((scope["method"], scope["path"]))
            if handler is None:
                raise self._no_route(scope)
            response = await handler(request)
        except SluiceError as exc:
            request.state.record.reason = exc.reason
            response = error_response(exc)
            exc.__traceback__ = None  # answered: its traceback would tie the request's frames into a cycle with it
        except ClientDisconnected:
            request.state.record.reason = "client_disconnected"
            return
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            response = error_response(SluiceError("The server had an error while processing your request."))
        await response(scope, receive, send)

    def _no_route(self, scope: Scope) -> SluiceError:
        if scope["path"] in self._paths:
            return InvalidRequestError(f"Method {scope['method']} is not allowed on {scope['path']}.", status=405,
                                       code="method_not_allowed")
        return NotFoundError(f"Unknown route: {scope['method']} {scope['path']}", code="not_found")

    async def _run_lifespan(self, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        started = False
        try:
            async with self._lifespan(self):
                started = True
                await send({"type": "lifespan.startup.complete"})
                await receive()  # lifespan.shutdown
        except BaseException as exc:
            kind = "shutdown" if started else "startup"
            if isinstance(exc, SluiceError):  # said in our words (e.g. Redis unreachable at startup): no traceback
                log.error("gateway %s failed: %s", kind, exc)
            else:
                log.exception("gateway %s failed", kind)
            await send({"type": f"lifespan.{kind}.failed", "message": f"{type(exc).__name__}: {exc}"})
            return
        await send({"type": "lifespan.shutdown.complete"})
