"""The request observer: request id in and out, the request record, metrics and the access log.

Pure ASGI (no BaseHTTPMiddleware): it must not buffer or delay streamed bodies.
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sluice.clock import Clock
from sluice.ids import IdSource
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
        self._ids = IdSource()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _client_request_id(scope) or self._ids.next()
        route = scope["path"] if scope["path"] in self.routes else "other"
        record = RequestRecord(request_id, scope["method"], route, self.clock.now(), at=round(self.clock.wall(), 3))
        scope.setdefault("state", {})["record"] = record
        header = (REQUEST_ID_HEADER, request_id.encode())

        async def observed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        in_flight = self.metrics.in_flight_for(route)
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
        self.metrics.request_done(record)
        self.access_log.write(record)


def _client_request_id(scope: Scope) -> str | None:
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for name, value in headers:
        if name == REQUEST_ID_HEADER and _VALID_REQUEST_ID.match(value):
            return value.decode()
    return None
