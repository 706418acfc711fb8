"""What every proxied endpoint does over HTTP: identify, read the body (bounded), run the pipeline, reply; and the
bounded body read of the ASGI routes (admin API, console)."""

from __future__ import annotations

import asyncio
from typing import Protocol

from starlette.requests import Request

from sluice.errors import InvalidRequestError
from sluice.gateway._disconnect import ClientDisconnected
from sluice.gateway._exchange import Exchange, body_timeout, too_large
from sluice.gateway._responses import write_reply
from sluice.gateway.service import Endpoint, GatewayService, Reply


class Translation(Protocol):
    """An API served through another endpoint's pipeline (``/v1/responses`` through chat): the client's body in
    that endpoint's terms, and its reply back in the client's."""

    def request_body(self, body: bytes) -> bytes: ...

    def reply(self, reply: Reply) -> Reply: ...


_WANTED = (b"authorization", b"api-key", b"x-sluice-priority", b"content-length")


async def proxy(exchange: Exchange, endpoint: Endpoint, translation: Translation | None = None) -> None:
    state = exchange.app_state
    service: GatewayService = state.service
    record = exchange.record
    assert record is not None
    authorization, api_key, priority_hint, declared = exchange.header_values(_WANTED)
    principal = service.identify(record, authorization, api_key)
    priority = _priority_hint(priority_hint)
    body = await exchange.read_body(state.max_body_bytes, state.body_timeout_s, declared)
    if translation is not None:
        body = translation.request_body(body)
    with exchange.watching():
        reply = await service.proxy(endpoint, principal, body, record, priority)
        await write_reply(exchange, reply if translation is None else translation.reply(reply))


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The whole body of an ASGI route's request, at most ``limit`` bytes (else 413), all of it within
    ``timeout_s`` (else 408, and the connection closes). A client gone before its body is complete:
    ``ClientDisconnected`` (recorded as 499). The ASGI messages are read straight from ``receive``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
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
                    raise too_large(limit)
                parts.append(chunk)
                if not message.get("more_body", False):
                    break
    except TimeoutError as exc:
        raise body_timeout(timeout_s) from exc
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _priority_hint(value: str | None) -> int | None:
    """``x-sluice-priority``: an integer a client may use to lower its own priority (never to raise it)."""
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidRequestError(f"x-sluice-priority must be an integer, not {value[:40]!r}.",
                                  param="x-sluice-priority") from None
