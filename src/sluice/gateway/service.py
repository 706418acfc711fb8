"""The request pipeline, free of HTTP: identify → (price → cache → quota → admission) → route → engine → record.

Routes hand it bytes and headers and get a ``FullReply`` or a ``StreamReply`` back; errors are raised as
``SluiceError``. Steps not built yet (price, cache, quota, admission) slot in between identify and route.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel

from sluice.clock import Clock
from sluice.engines import EnginePool, UpstreamResponse
from sluice.errors import NotFoundError
from sluice.identity import KeyRing, Principal
from sluice.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ModelCard,
    ModelList,
    SSEParser,
    parse_request,
)
from sluice.telemetry import RequestRecord


@dataclass(frozen=True, slots=True)
class Endpoint:
    path: str
    request_model: type[BaseModel]


CHAT = Endpoint("/v1/chat/completions", ChatCompletionRequest)
COMPLETIONS = Endpoint("/v1/completions", CompletionRequest)
EMBEDDINGS = Endpoint("/v1/embeddings", EmbeddingRequest)


@dataclass(frozen=True, slots=True)
class ModelRoute:
    name: str  # what clients call it
    served_name: str  # what the engine calls it
    pool: EnginePool
    max_model_len: int | None = None

    def rename(self, body: bytes) -> bytes:
        """Give answers the client's name for the model, where the engine calls it something else. Engines write
        compact JSON (``"model":"x"``), so a byte replacement does it without parsing every chunk."""
        if self.served_name == self.name:
            return body
        return body.replace(b'"model":"%s"' % self.served_name.encode(), b'"model":"%s"' % self.name.encode())


@dataclass(frozen=True, slots=True)
class FullReply:
    status: int
    body: bytes
    content_type: str


@dataclass(frozen=True, slots=True)
class StreamReply:
    chunks: AsyncIterator[bytes]


Reply = FullReply | StreamReply


class GatewayService:
    def __init__(self, routes: Mapping[str, ModelRoute], keyring: KeyRing, clock: Clock) -> None:
        self.routes = dict(routes)
        self.keyring = keyring
        self.clock = clock

    def identify(self, record: RequestRecord, authorization: str | None, api_key: str | None) -> Principal:
        principal = self.keyring.authenticate(authorization, api_key)
        record.key_id, record.user, record.tenant, record.tier = (
            principal.key_id, principal.user, principal.tenant, principal.tier,
        )
        return principal

    def list_models(self) -> ModelList:
        return ModelList(data=[ModelCard(id=r.name, max_model_len=r.max_model_len) for r in self.routes.values()])

    async def readiness(self) -> dict[str, bool]:
        return {name: await route.pool.is_ready() for name, route in self.routes.items()}

    async def proxy(self, endpoint: Endpoint, principal: Principal, body: bytes, record: RequestRecord) -> Reply:
        request: Any = parse_request(endpoint.request_model, body)
        route = self._route(request.model)
        record.model = route.name
        stream = bool(getattr(request, "stream", False))
        record.stream = stream
        upstream = await route.pool.post(
            endpoint.path,
            _upstream_body(request, body, route, stream),
            {"content-type": "application/json", "x-request-id": record.request_id},
        )
        record.replica = upstream.replica.url
        if not stream:
            data = route.rename(await upstream.read())
            _account(record, _usage_in(data))
            return FullReply(upstream.status, data, upstream.content_type or "application/json")
        return StreamReply(self._relay(upstream, route, request.wants_usage_chunk(), record))

    def _route(self, model: str) -> ModelRoute:
        route = self.routes.get(model)
        if route is None:
            raise NotFoundError(f"The model `{model}` does not exist or you do not have access to it.", param="model")
        return route

    async def _relay(
        self, upstream: UpstreamResponse, route: ModelRoute, wants_usage: bool, record: RequestRecord
    ) -> AsyncIterator[bytes]:
        """Pass SSE frames through as they arrive, noting usage and dropping the usage-only chunk the client
        did not ask for. Closing this generator early (client gone) closes the upstream, aborting it there."""
        parser = SSEParser()
        frames_with_choices = 0
        finished = False
        try:
            async for chunk in upstream.chunks():
                out: list[bytes] = []
                for frame, data in parser.feed(chunk):
                    if data is None or data == b"[DONE]":
                        finished = finished or data == b"[DONE]"
                        out.append(frame)
                        continue
                    if record.ttft_s is None:
                        record.ttft_s = self.clock.now() - record.started_s
                    doc = _json_object(data)
                    if doc.get("choices"):
                        frames_with_choices += 1
                    elif doc.get("usage"):
                        _account(record, doc["usage"])
                        if not wants_usage:
                            continue
                    out.append(frame)
                if out:
                    yield route.rename(b"".join(out))
        finally:
            upstream.close()
            if not finished:
                record.reason = record.reason or "client_disconnected"
            if record.tokens_out is None:
                record.tokens_out = frames_with_choices  # partial: about one token per chunk


def _upstream_body(request: Any, body: bytes, route: ModelRoute, stream: bool) -> bytes:
    """The body the engine gets: the client's bytes untouched, unless the model name must be mapped or a stream
    must be made to carry usage (every upstream stream does, so tokens can be accounted)."""
    changes: dict[str, Any] = {}
    if route.served_name != request.model:
        changes["model"] = route.served_name
    if stream and not request.wants_usage_chunk():
        options = request.stream_options.model_dump(exclude_none=True) if request.stream_options else {}
        changes["stream_options"] = {**options, "include_usage": True}
    if not changes:
        return body
    doc = orjson.loads(body)
    doc.update(changes)
    return orjson.dumps(doc)


def _json_object(data: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _usage_in(body: bytes) -> Any:
    return _json_object(body).get("usage")


def _account(record: RequestRecord, usage: Any) -> None:
    if isinstance(usage, dict):
        record.tokens_in = usage.get("prompt_tokens")
        record.tokens_out = usage.get("completion_tokens", 0)
