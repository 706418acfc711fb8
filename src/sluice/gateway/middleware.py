"""The request observer: request id in and out, the request record, metrics and the access log.

Pure ASGI (no BaseHTTPMiddleware): it must not buffer or delay streamed bodies. The hot routes, served without
ASGI (``_exchange``), open and close their records with the same ``begin`` and ``end``.
"""

from __future__ import annotations

import re
from typing import Any

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
        record, in_flight = self.begin(scope["method"], scope["path"], scope["headers"])
        scope.setdefault("state", {})["record"] = record
        header = (REQUEST_ID_HEADER, record.request_id.encode())

        async def observed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        except BaseException:
            failed(record)
            raise
        finally:
            self.end(record, in_flight)

    def begin(self, method: str, path: str, headers: list[tuple[bytes, bytes]]) -> tuple[RequestRecord, Any]:
        """A request's record (its id: the client's ``x-request-id`` if valid, else a new one), and the in-flight
        gauge it counts in until ``end``."""
        request_id = _client_request_id(headers) or self._ids.next()
        route = path if path in self.routes else "other"
        record = RequestRecord(request_id, method, route, self.clock.now(), at=round(self.clock.wall(), 3))
        in_flight = self.metrics.in_flight_for(route)
        in_flight.inc()
        return record, in_flight

    def end(self, record: RequestRecord, in_flight: Any) -> None:
        """The request is over, however it ended: counted and logged."""
        in_flight.dec()
        if not record.status:
            record.status, record.reason = CLIENT_CLOSED_STATUS, record.reason or "client_disconnected"
        record.duration_s = self.clock.now() - record.started_s
        self.metrics.request_done(record)
        self.access_log.write(record)


def failed(record: RequestRecord) -> None:
    """What a request that ended in an exception nobody answered is recorded as."""
    record.status = record.status or 500
    record.reason = record.reason or "internal_error"


def _client_request_id(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == REQUEST_ID_HEADER and _VALID_REQUEST_ID.match(value):
            return value.decode()
    return None
