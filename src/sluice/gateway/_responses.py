"""How replies go on the wire."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from sluice.errors import SluiceError
from sluice.gateway._disconnect import ClientDisconnected, cancel_on_disconnect
from sluice.gateway.service import FullReply, Reply

_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


class SSEResponse(Response):
    """Streams ``chunks`` as server-sent events, one write per chunk, and stops (closing ``chunks``, which aborts
    the engine request) as soon as the client disconnects."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self.chunks = chunks
        self.status_code = 200
        self.background = None
        self.raw_headers = list(_SSE_HEADERS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})

        async def pump() -> None:
            async for chunk in self.chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        try:
            await cancel_on_disconnect(receive, pump())
        except ClientDisconnected:
            pass
        finally:
            await self.chunks.aclose()  # type: ignore[attr-defined]


def reply_response(reply: Reply) -> Response:
    if isinstance(reply, FullReply):
        return Response(reply.body, status_code=reply.status, media_type=reply.content_type)
    return SSEResponse(reply.chunks)


def error_response(exc: SluiceError) -> Response:
    headers = {"x-sluice-reason": exc.reason, **exc.headers}
    return Response(orjson.dumps(exc.body()), status_code=exc.status, media_type="application/json", headers=headers)
