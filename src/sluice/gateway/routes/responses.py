"""``POST /v1/responses``: OpenAI's Responses API for text, served through the chat pipeline (identify, price,
quota, admission, route) as a chat completion, its answer told back as a Response (``sluice.protocol._responses``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import orjson

from sluice.gateway._asgi import RouteSpec
from sluice.gateway._exchange import Exchange
from sluice.gateway.routes._proxy import proxy
from sluice.gateway.service import CHAT, FullReply, Reply, StreamReply
from sluice.protocol import ResponseEvents, ResponsesRequest, chat_body, parse_request, response_from_chat


@dataclass
class ResponsesTranslation:
    """One Responses request: named by the gateway's request id, created at ``created_at`` (Unix seconds)."""

    response_id: str
    created_at: int
    request: ResponsesRequest | None = field(default=None)

    def request_body(self, body: bytes) -> bytes:
        self.request = parse_request(ResponsesRequest, body)
        self.request.refuse_unsupported()
        return chat_body(self.request)

    def reply(self, reply: Reply) -> Reply:
        assert self.request is not None, "request_body() comes first"
        if isinstance(reply, FullReply):
            doc = response_from_chat(self.request, orjson.loads(reply.body), self.response_id, self.created_at)
            return FullReply(reply.status, orjson.dumps(doc), "application/json", reply.headers, reply.header_lines)
        events = ResponseEvents(self.request, self.response_id, self.created_at)
        return StreamReply(_told_as(events, reply.chunks), reply.headers, reply.on_close,
                           header_lines=reply.header_lines)


async def _told_as(events: ResponseEvents, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        yield events.opening()
        async for chunk in chunks:
            if out := events.feed(chunk):
                yield out
        yield events.closing()
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]  # the relay: closing it aborts the engine request


async def create_response(exchange: Exchange) -> None:
    """A model response (OpenAI's Responses API, text only), streamed (SSE events) or not."""
    assert exchange.record is not None
    created_at = int(exchange.app_state.service.clock.wall())
    await proxy(exchange, CHAT, ResponsesTranslation(exchange.record.request_id, created_at))


ROUTES = [RouteSpec("POST", "/v1/responses", None, "inference", ResponsesRequest, exchange_handler=create_response)]
