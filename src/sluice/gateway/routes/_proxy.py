"""What every proxied endpoint does over HTTP: identify, read the body (bounded), run the pipeline, reply."""

from __future__ import annotations

import asyncio
from typing import Protocol

from starlette.requests import Request
from starlette.responses import Response

from sluice.errors import InvalidRequestError, PayloadTooLargeError, RequestTimeoutError
from sluice.gateway._disconnect import ClientDisconnected, DisconnectWatch
from sluice.gateway._responses import reply_response
from sluice.gateway.service import Endpoint, GatewayService, Reply


class Translation(Protocol):
    """An API served through another endpoint's pipeline (``/v1/responses`` through chat): the client's body in
    that endpoint's terms, and its reply back in the client's."""

    def request_body(self, body: bytes) -> bytes: ...

    def reply(self, reply: Reply) -> Reply: ...


_WANTED = (b"authorization", b"api-key", b"x-sluice-priority", b"content-length")


async def proxy(request: Request, endpoint: Endpoint, translation: Translation | None = None) -> Response:
    service: GatewayService = request.app.state.service
    record = request.state.record
    authorization, api_key, priority_hint, declared = _headers(request)
    principal = service.identify(record, authorization, api_key)
    priority = _priority_hint(priority_hint)
    state = request.app.state
    body = await _read_body(request, state.max_body_bytes, state.body_timeout_s, declared)
    if translation is not None:
        body = translation.request_body(body)
    watch = DisconnectWatch(request.receive)
    try:
        with watch.translated():
            reply = await service.proxy(endpoint, principal, body, record, priority)
    except BaseException:
        watch.stop()
        raise
    return reply_response(reply if translation is None else translation.reply(reply), watch)


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The whole body, at most ``limit`` bytes (else 413), all of it within ``timeout_s`` (else 408, and the
    connection closes). A client gone before its body is complete: ``ClientDisconnected`` (recorded as 499)."""
    return await _read_body(request, limit, timeout_s, request.headers.get("content-length"))


async def _read_body(request: Request, limit: int, timeout_s: float, declared: str | None) -> bytes:
    """``read_body``, given the content-length header. The ASGI messages are read straight from ``receive`` (no
    async generator per request: ``Request.stream`` showed in profiles); the body can be read once."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    parts: list[bytes] = []
    size = 0
    receive = request.receive
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientDisconnected
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                parts.append(chunk)
                if not message.get("more_body", False):
                    break
    except TimeoutError as exc:
        raise RequestTimeoutError(f"The request body was not received within {timeout_s:g} s.",
                                  headers={"connection": "close"}) from exc
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _headers(request: Request) -> tuple[str | None, ...]:
    """``_WANTED``'s values (the first of each), in one pass over the request's headers."""
    found: list[str | None] = [None] * len(_WANTED)
    raw: list[tuple[bytes, bytes]] = request.scope["headers"]
    for name, value in raw:
        if name in _WANTED:
            i = _WANTED.index(name)
            if found[i] is None:
                found[i] = value.decode("latin-1")
    return tuple(found)


def _priority_hint(value: str | None) -> int | None:
    """``x-sluice-priority``: an integer a client may use to lower its own priority (never to raise it)."""
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidRequestError(f"x-sluice-priority must be an integer, not {value[:40]!r}.",
                                  param="x-sluice-priority") from None


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"The request body is larger than the limit of {limit} bytes.")
