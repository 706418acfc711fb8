"""The ASGI application: lifespan, the request observer, a table of routes, and errors as OpenAI bodies.

Sluice serves a handful of routes, and every microsecond of the proxy path counts: this is the one layer
between uvicorn and the handlers, in place of a framework's stack of middlewares (FastAPI's measured at about a
quarter of the gateway's CPU per request). Requests and responses are Starlette's.

The hot routes (the inference endpoints: ``RouteSpec.exchange_handler``) do not come through here: the HTTP
protocol hands them to ``serve_exchange`` as an ``Exchange`` (``_exchange``), with the same record, request id,
metrics, access log, port rules and error bodies as every other route.

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

import orjson
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from sluice.clock import Clock
from sluice.errors import InvalidRequestError, NotFoundError, SluiceError
from sluice.gateway._disconnect import ClientDisconnected
from sluice.gateway._exchange import Exchange
from sluice.gateway._http_protocol import HotRoutes
from sluice.gateway._responses import error_headers, error_response
from sluice.gateway.middleware import RequestObserver, failed
from sluice.telemetry import AccessLog, GatewayMetrics, RequestRecord

log = logging.getLogger("sluice")

Handler = Callable[[Request], Awaitable[Response]]
ExchangeHandler = Callable[[Exchange], Awaitable[None]]  # a hot route's: it writes its response on the exchange

OPS_TAGS = frozenset({"admin", "monitoring"})  # routes served only on the operations port, when there is one


@dataclass(frozen=True, slots=True)
class RouteSpec:
    method: str
    path: str
    handler: Handler | None  # None: a hot route, served by ``exchange_handler`` straight from the protocol
    tag: str
    request_model: type[BaseModel] | None = None  # documented body; parsed by the handler, not here
    response_model: type[BaseModel] | None = None
    documented: bool = True
    exchange_handler: ExchangeHandler | None = None

    def __post_init__(self) -> None:
        if (self.handler is None) == (self.exchange_handler is None):
            raise ValueError(f"{self.method} {self.path}: give either an ASGI handler or an exchange handler")

    @property
    def ops_only(self) -> bool:
        return self.tag in OPS_TAGS

    @property
    def function(self) -> Callable[..., Awaitable[object]]:
        """The handler, whichever kind (its name and docstring document the route)."""
        handler = self.handler or self.exchange_handler
        assert handler is not None
        return handler


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
        self.hot_routes = {r.path: r for r in fixed if r.exchange_handler is not None}  # all POST
        if any(r.method != "POST" for r in self.hot_routes.values()):
            raise ValueError("hot routes are POST routes")
        self._handlers = {(r.method, r.path): r for r in fixed}
        self._param_routes = tuple(_ParamRoute.of(r) for r in routes if "{" in r.path)
        self._paths = frozenset(r.path for r in fixed)
        self._by_path: dict[str, list[RouteSpec]] = {}
        for r in fixed:
            self._by_path.setdefault(r.path, []).append(r)
        self._lifespan = lifespan
        self._observed = RequestObserver(self._dispatch, metrics=metrics, access_log=access_log, clock=clock,
                                         routes=self._paths)

    def hot(self) -> HotRoutes:
        """The routes the HTTP protocol serves itself, with ``serve_exchange``."""
        return HotRoutes(frozenset(self.hot_routes), self.serve_exchange, self.state)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._observed(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._run_lifespan(receive, send)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = self
        request = Request(scope, receive)
        method, path = scope["method"], scope["path"]
        try:
            route = self._handlers.get((method, path)) or self._param_route(scope)
            if route is None or (self.ops_port is not None and not self._served_here(route, scope.get("server"))):
                raise self._no_route(method, path, scope.get("server"))
            if route.handler is None:  # only another server than the gateway's own would bring it here
                raise SluiceError("This route is served by Sluice's own HTTP server (sluice serve).", status=501,
                                  code="not_implemented")
            response = await route.handler(request)
        except ClientDisconnected:
            request.state.record.reason = "client_disconnected"
            return
        except Exception as exc:
            response = error_response(_answerable(exc, request.state.record))
        await response(scope, receive, send)

    async def serve_exchange(self, exchange: Exchange) -> None:
        """A hot route's request, from the HTTP protocol: recorded, routed, answered (an error as an OpenAI body;
        a stream already begun is cut, as the client then sees no clean end)."""
        record, in_flight = self._observed.begin(exchange.method, exchange.path, exchange.headers)
        exchange.record = record
        try:
            route = self.hot_routes[exchange.path]
            if self.ops_port is not None and not self._served_here(route, exchange.server):
                raise self._no_route(exchange.method, exchange.path, exchange.server)
            assert route.exchange_handler is not None
            await route.exchange_handler(exchange)
        except ClientDisconnected:
            record.reason = "client_disconnected"
        except Exception as exc:
            error = _answerable(exc, record)
            if exchange.response_started:
                exchange.abort()
            else:
                exchange.respond(error.status, error_headers(error), "application/json", orjson.dumps(error.body()))
        except BaseException:
            failed(record)
            raise
        finally:
            if not exchange.response_complete:
                exchange.abort()
            self._observed.end(record, in_flight)

    def _param_route(self, scope: Scope) -> RouteSpec | None:
        path = scope["path"]
        for route in self._param_routes:
            if route.spec.method == scope["method"] and (value := route.value_in(path)) is not None:
                scope["path_params"] = {route.name: value}
                scope["state"]["record"].route = route.spec.path  # one metrics label for every value
                return route.spec
        return None

    def _served_here(self, route: RouteSpec, server: tuple[str, int | None] | None) -> bool:
        """Without an ops port, every route everywhere. With one: the operations routes there only, the public
        routes on the public port only, and the probes (/health, /ready, /openapi.json: tag ``operations``) on both."""
        if self.ops_port is None or route.tag == "operations":
            return True
        on_ops_port = server is not None and server[1] == self.ops_port
        return route.ops_only == on_ops_port

    def _no_route(self, method: str, path: str, server: tuple[str, int | None] | None) -> SluiceError:
        """405 for a path served here under another method; else 404 (an operations route asked on the public
        port is unknown there, as is any public route on the operations port)."""
        if any(self._served_here(r, server) for r in self._by_path.get(path, ())):
            return InvalidRequestError(f"Method {method} is not allowed on {path}.", status=405,
                                       code="method_not_allowed")
        return NotFoundError(f"Unknown route: {method} {path}", code="not_found")

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


def _answerable(exc: Exception, record: RequestRecord) -> SluiceError:
    """What the client is told of a failure: a ``SluiceError`` as it is (a 500 or 502 quoting the request id, the
    cause being one the client cannot see), anything else as a 500 that names nothing, logged with its traceback
    (call it in the ``except`` block)."""
    if not isinstance(exc, SluiceError):
        log.exception("unhandled error on %s %s", record.method, record.route)
        return SluiceError("The server had an error while processing your request.")
    record.reason = exc.reason
    if exc.status in (500, 502):
        exc.message = f"{exc.message} (request id: {record.request_id})"
    exc.__traceback__ = None  # answered: its traceback would tie the request's frames into a cycle with it
    return exc
