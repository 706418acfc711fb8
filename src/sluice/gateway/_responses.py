"""How replies go on the wire: the pipeline's on an exchange (the hot routes), errors on either kind of route."""

from __future__ import annotations

import orjson
from starlette.responses import Response

from sluice.errors import SluiceError
from sluice.gateway._exchange import Exchange
from sluice.gateway.service import FullReply, Reply

_SSE_HEADERS = (("content-type", "text/event-stream"), ("cache-control", "no-cache"))


async def write_reply(exchange: Exchange, reply: Reply) -> None:
    """``reply`` on ``exchange``: whole, in one write, or as server-sent events, one write per chunk (the head goes
    with the first, the end with the last). Call it ``watching()`` the client: when it leaves, the stream stops, and
    closing the chunks aborts the engine request."""
    if isinstance(reply, FullReply):
        exchange.respond(reply.status, reply.headers.items(), reply.content_type, reply.body, reply.header_lines)
        return
    chunks = reply.chunks
    try:
        exchange.start_stream(200, (*_SSE_HEADERS, *reply.headers.items()), reply.header_lines)
        async for chunk in chunks:
            await exchange.send(chunk, last=reply.finished())
        exchange.end_stream()
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
        reply.on_close()  # a relay that never began cannot give back what its request holds: this does


def error_headers(exc: SluiceError) -> list[tuple[str, str]]:
    return [("x-sluice-reason", exc.reason), *exc.headers.items()]


def error_response(exc: SluiceError) -> Response:
    return Response(orjson.dumps(exc.body()), status_code=exc.status, media_type="application/json",
                    headers=dict(error_headers(exc)))
