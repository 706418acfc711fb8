"""The request observer: request id in and out, the request record, metrics and the access log.

Pure ASGI (no BaseHTTPMiddleware): it must not buffer or delay streamed bodies.
"""

from __future__ import annotations

import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sluice.clock import Clock
from sluice.telemetry import AccessLog, GatewayMetrics, RequestRecord

REQUEST_ID_HEADER = b"x-request-id"
_VALID_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")
CLIENT_CLOSED_STATUS = 499  # nginx's convention: the client went away before the answer started


class RequestObserver:
    def __init__(
        self, app: ASGIApp, *, metrics: GatewayMetrics, access_log: AccessLog, clock: Clock, routes: frozenset[str]
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log
        self.clock = clock
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        route = scope["path"] if scope["path"] in self.routes else "other"
        record = RequestRecord(request_id, scope["method"], route, self.clock.now())
        scope.setdefault("state", {})["record"] = record
        header = (REQUEST_ID_HEADER, request_id.encode())

        async def observed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        in_flight = self.metrics.in_flight.labels(route)
        in_flight.inc()
        try:
            await self.app(scope, receive, observed_send)
        except BaseException:
            record.status = record.status or 500
            record.reason = record.reason or "internal_error"
            raise
        finally:
            in_flight.dec()
            self._finish(record)

    def _finish(self, record: RequestRecord) -> None:
        if not record.status:
            record.status, record.reason = CLIENT_CLOSED_STATUS, record.reason or "client_disconnected"
        record.duration_s = self.clock.now() - record.started_s
        model = record.model or ""
        m = self.metrics
        m.requests.labels(record.route, model, str(record.status)).inc()
        m.latency.labels(record.route, model).observe(record.duration_s)
        if record.reason and (record.status >= 400 or record.reason == "client_disconnected"):
            m.rejections.labels(record.reason).inc()
        if record.ttft_s is not None:
            m.ttft.labels(model).observe(record.ttft_s)
        if record.tokens_in:
            m.tokens.labels(model, "input").inc(record.tokens_in)
        if record.tokens_out:
            m.tokens.labels(model, "output").inc(record.tokens_out)
        self.access_log.write(record)


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER and _VALID_REQUEST_ID.match(value):
            return value.decode()
    return uuid.uuid4().hex
