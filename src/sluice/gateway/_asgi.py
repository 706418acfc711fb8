"""The ASGI application: lifespan, the request observer, a table of routes, and errors as OpenAI bodies.

Sluice serves a handful of routes, and every microsecond of the proxy path counts: this is the one layer
between uvicorn and the handlers, in place of a framework's stack of middlewares (FastAPI's measured at about a
quarter of the gateway's CPU per request). Requests and responses are Starlette's.

A fixed path is one dict lookup. A path with a parameter at its end (``/v1/models/{model}``, or ``{model:path}``
for a value that may hold slashes) is tried only when no fixed path matched, by prefix. With an operations port,
the operations routes (``OPS_TAGS``: admin API, metrics) answer only on that port, and 404 on the public one.
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

OPS_TAGS = frozenset({"admin", "monitoring"})  # routes served only on the operations port, when there is one


@dataclass(frozen=True, slots=True)
class RouteSpec:
    method: str
    path: str
    handler: Handler
    tag: str
    request_model: type[BaseModel] | None = None  # documented body; parsed by the handler, not here
    response_model: type[BaseModel] | None = None
    documented: bool = True

    @property
    def ops_only(self) -> bool:
        return self.tag in OPS_TAGS


@dataclass(frozen=True, slots=True)
class _ParamRoute:
    """A route with one parameter: ``prefix{name}`` (one segment) or ``prefix{name:path}`` (the rest), possibly
    followed by a fixed ``suffix`` (``/admin/tiers/{name}/shadow``)."""

    spec: RouteSpec
    prefix: str
    name: str
    whole_rest: bool
    suffix: str = ""

    @classmethod
    def of(cls, spec: RouteSpec) -> _ParamRoute:
        prefix, _, param = spec.path.partition("{")
        param, _, suffix = param.partition("}")
        name, _, kind = param.partition(":")
        return cls(spec, prefix, name, kind == "path", suffix)

    def value_in(self, path: str) -> str | None:
        if not path.startswith(self.prefix) or not path.endswith(self.suffix):
            return None
        value = path[len(self.prefix):len(path) - len(self.suffix)]
        if not value or (not self.whole_rest and "/" in value):
            return None
        return value


Lifespan = Callable[["GatewayApp"], AbstractAsyncContextManager[None]]


class GatewayApp:
    def __init__(self, routes: Sequence[RouteSpec], *, lifespan: Lifespan, metrics: GatewayMetrics,
                 access_log: AccessLog, clock: Clock, ops_port: int | None = None) -> None:
        """``ops_port``: the port serving the operations routes alone (None: every route on every port)."""
        self.state = SimpleNamespace(metrics=metrics)
        self.routes = tuple(routes)
        self.ops_port = ops_port
        fixed = [r for r in routes if "{" not in r.path]
        self._handlers = {(r.method, r.path): r for r in fixed}
        self._param_routes = tuple(_ParamRoute.of(r) for r in routes if "{" in r.path)
        self._paths = frozenset(r.path for r in fixed)
        self._by_path: dict[str, list[RouteSpec]] = {}
        for r in fixed:
            self._by_path.setdefault(r.path, []).append(r)
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
            route = self._handlers.get((scope["method"], scope["path"])) or self._param_route(scope)
            if route is None or (self.ops_port is not None and not self._served_here(route, scope)):
                raise self._no_route(scope)
            response = await route.handler(request)
        except SluiceError as exc:
            request.state.record.reason = exc.reason
            if exc.status in (500, 502):  # a failure the client cannot see the cause of: what to quote to an operator
                exc.message = f"{exc.message} (request id: {request.state.record.request_id})"
            response = error_response(exc)
            exc.__traceback__ = None  # answered: its traceback would tie the request's frames into a cycle with it
        except ClientDisconnected:
            request.state.record.reason = "client_disconnected"
            return
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            response = error_response(SluiceError("The server had an error while processing your request."))
        await response(scope, receive, send)

    def _param_route(self, scope: Scope) -> RouteSpec | None:
        path = scope["path"]
        for route in self._param_routes:
            if route.spec.method == scope["method"] and (value := route.value_in(path)) is not None:
                scope["path_params"] = {route.name: value}
                scope["state"]["record"].route = route.spec.path  # one metrics label for every value
                return route.spec
        return None

    def _served_here(self, route: RouteSpec, scope: Scope) -> bool:
        """Without an ops port, every route everywhere. With one: the operations routes there only, the public
        routes on the public port only, and the probes (/health, /ready, /openapi.json: tag ``operations``) on both."""
        if self.ops_port is None or route.tag == "operations":
            return True
        server = scope.get("server")
        on_ops_port = server is not None and server[1] == self.ops_port
        return route.ops_only == on_ops_port

    def _no_route(self, scope: Scope) -> SluiceError:
        """405 for a path served here under another method; else 404 (an operations route asked on the public
        port is unknown there, as is any public route on the operations port)."""
        if any(self._served_here(r, scope) for r in self._by_path.get(scope["path"], ())):
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
