"""How replies go on the wire."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from sluice.errors import SluiceError
from sluice.gateway._disconnect import ClientDisconnected, DisconnectWatch
from sluice.gateway.service import FullReply, Reply

_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


class SSEResponse(Response):
    """Streams ``chunks`` as server-sent events, one write per chunk. When the client disconnects, ``watch``
    cancels the stream, and closing ``chunks`` aborts the engine request."""

    def __init__(self, chunks: AsyncIterator[bytes], watch: DisconnectWatch, headers: Mapping[str, str],
                 on_close: Callable[[], None] = lambda: None) -> None:
        self.chunks = chunks
        self.on_close = on_close
        self.watch = watch
        self.status_code = 200
        self.background = None
        self.raw_headers = _SSE_HEADERS + [(k.encode(), v.encode()) for k, v in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            with self.watch.translated():
                await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
                async for chunk in self.chunks:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except ClientDisconnected:
            pass
        finally:
            self.watch.stop()
            await self.chunks.aclose()  # type: ignore[attr-defined]
            self.on_close()  # a relay that never began cannot give back what its request holds: this does


def reply_response(reply: Reply, watch: DisconnectWatch) -> Response:
    if isinstance(reply, FullReply):
        watch.stop()
        return Response(reply.body, status_code=reply.status, media_type=reply.content_type, headers=reply.headers)
    return SSEResponse(reply.chunks, watch, reply.headers, reply.on_close)


def error_response(exc: SluiceError) -> Response:
    headers = {"x-sluice-reason": exc.reason, **exc.headers}
    return Response(orjson.dumps(exc.body()), status_code=exc.status, media_type="application/json", headers=headers)
