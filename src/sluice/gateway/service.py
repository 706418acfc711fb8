"""The request pipeline, free of HTTP: identify → price → quota → admission → route → engine → settle → record.

Routes hand it bytes and headers and get a ``FullReply`` or a ``StreamReply`` back; errors are raised as
``SluiceError``. The response cache, when it comes, slots in between price and quota.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import BaseModel

from sluice.admission import Outcome, ticket_for
from sluice.cache import CacheStore, cache_key
from sluice.clock import Clock
from sluice.errors import InvalidRequestError, NotFoundError
from sluice.gateway._flight import NOTHING_RAN, Flight, Settlement, outcome_of
from sluice.gateway._over_budget import terms as over_budget_terms
from sluice.gateway._relay import StreamTally, json_object, relay
from sluice.gateway._resume import Resender, Transcript, resumes_exactly
from sluice.gateway._route import ModelRoute
from sluice.identity import Authenticator, Directory, Principal
from sluice.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ModelCard,
    ModelList,
    parse_request,
)
from sluice.quota import Price, Pricer, QuotaLimiter
from sluice.telemetry import RequestRecord, UsageLedger


@dataclass(frozen=True, slots=True)
class Endpoint:
    path: str
    request_model: type[BaseModel]
    pricing: str  # the Pricer method that prices it


CHAT = Endpoint("/v1/chat/completions", ChatCompletionRequest, "price_chat")
COMPLETIONS = Endpoint("/v1/completions", CompletionRequest, "price_completion")
EMBEDDINGS = Endpoint("/v1/embeddings", EmbeddingRequest, "price_embedding")


@dataclass(slots=True)  # made per request: not frozen (a frozen __init__ costs 3x), never changed
class FullReply:
    status: int
    body: bytes
    content_type: str
    headers: Mapping[str, str] = field(default_factory=dict)
    header_lines: bytes = b""  # more headers, rendered already (the x-ratelimit-* ones: ``Reservation.header_lines``)


@dataclass(slots=True)  # made per request: not frozen (a frozen __init__ costs 3x), never changed
class StreamReply:
    chunks: AsyncIterator[bytes]
    headers: Mapping[str, str] = field(default_factory=dict)
    on_close: Callable[[], None] = lambda: None  # called once the stream is over, however it ended
    finished: Callable[[], bool] = lambda: False  # the chunk just taken is the stream's last ([DONE] came)
    header_lines: bytes = b""  # as ``FullReply.header_lines``


Reply = FullReply | StreamReply


class GatewayService:
    def __init__(self, routes: Mapping[str, ModelRoute], keyring: Authenticator, pricer: Pricer, limiter: QuotaLimiter,
                 clock: Clock, usage: UsageLedger, directory: Directory, cache: CacheStore) -> None:
        self.routes = dict(routes)
        self.keyring = keyring  # replaced whole on a configuration reload
        self.pricer = pricer
        self.limiter = limiter
        self.clock = clock
        self.usage = usage
        self.directory = directory  # keys issued and revoked, tiers changed: the admin API's
        self.cache = cache
        self._background: set[asyncio.Task[None]] = set()
        self.settlement = Settlement(pricer, usage, limiter)  # where each request's accounts go

    def identify(self, record: RequestRecord, authorization: str | None, api_key: str | None) -> Principal:
        principal = self.keyring.authenticate(authorization, api_key)
        record.key_id, record.user, record.tenant, record.tier = (
            principal.key_id, principal.user, principal.tenant, principal.tier,
        )
        return principal

    def list_models(self) -> ModelList:
        return ModelList(data=[ModelCard(id=r.name, max_model_len=r.max_model_len) for r in self.routes.values()])

    def model_card(self, model: str) -> ModelCard:
        route = self._route(model)
        return ModelCard(id=route.name, max_model_len=route.max_model_len)

    async def readiness(self) -> dict[str, bool]:
        return {name: await route.pool.is_ready() for name, route in self.routes.items()}

    async def proxy(self, endpoint: Endpoint, principal: Principal, body: bytes, record: RequestRecord,
                    priority: int | None = None) -> Reply:
        """``priority``: the client's ``x-sluice-priority``, which may lower its tier's priority, never raise it."""
        request: Any = parse_request(endpoint.request_model, body)
        route = self._route(request.model)
        record.model = route.name
        stream = record.stream = bool(getattr(request, "stream", False))
        priority = principal.priority if priority is None else min(priority, principal.priority)
        price: Price = getattr(self.pricer, endpoint.pricing)(request)
        record.prompt_estimate, record.max_tokens = price.prompt_tokens, price.max_output_tokens
        key = cache_key(route.name, principal.tenant, request) if route.cache_ttl_s else None
        if key is not None:
            cached = await self.cache.get(key)
            record.cache = "miss" if cached is None else "hit"
            if cached is not None:  # answered without an engine, so without spending quota
                return FullReply(200, cached, "application/json", {"x-sluice-cache": "hit"})
        upstream_body = _upstream_body(request, body, route, stream, priority)  # before reserving: it may refuse
        reservation = await self.limiter.reserve(principal, route.name, price, route.tighten_for(priority),
                                                 witness=record)
        over = over_budget_terms(reservation, upstream_body, stream=stream)  # None: its whole price fit
        if over is not None:
            upstream_body, record.over_budget = over.body, over.action
        flight = Flight(self.settlement, route, record, reservation)
        resender = self._resender(flight, endpoint.path, stream, upstream_body)
        affinity = _prefix(request) if route.affinity else None
        try:
            await self._admit(flight, principal, priority, reservation.price)  # as charged (clamped or not)
            if resender is not None:
                upstream = await resender.send(affinity=affinity)
            else:
                upstream = await flight.post(endpoint.path, upstream_body, affinity=affinity)
        except BaseException as exc:
            flight.finish(NOTHING_RAN, outcome_of(exc))
            raise
        record.replica = upstream.replica.url
        if stream:
            tally = StreamTally(request.wants_usage_chunk(), over.cut_at if over is not None else None)
            chunks = relay(upstream, flight, self.clock, tally, resender=resender)

            def abandoned() -> None:  # the client left before the relay began: nothing was forwarded
                upstream.close()
                flight.finish({"completion_tokens": 0}, Outcome.IGNORED)

            return StreamReply(chunks, reservation.headers, abandoned, lambda: tally.finished,
                               reservation.header_lines())
        try:
            data = route.rename(await upstream.read())
        except BaseException as exc:
            flight.finish(None, outcome_of(exc))  # aborted with unknown usage: keep what was reserved
            raise
        flight.finish(json_object(data).get("usage"), Outcome.SUCCESS)
        whole = over is None or over.action == "tag"  # a clamped answer is not the answer to the request asked
        if key is not None and upstream.status == 200 and route.cache_ttl_s and whole:
            self.spawn(self.cache.set(key, data, route.cache_ttl_s))
        return FullReply(upstream.status, data, upstream.content_type or "application/json", reservation.headers,
                         reservation.header_lines())

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run bookkeeping that must finish even if the request's task is cancelled; awaited at shutdown."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Wait for the bookkeeping still in flight (at shutdown). Quota settlements are not here: the quota store
        sends what it holds before it closes."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def _admit(self, flight: Flight, principal: Principal, priority: int, price: Price) -> None:
        tier = self.limiter.policy.tiers.get(principal.tier or "")
        slo_s = flight.record.ttft_slo_s = tier.ttft_slo_s if tier else None  # goodput's bar, gate or not
        gate = flight.route.gate
        if gate is None:
            return
        weight, max_queue_s = self._queueing(principal.tier)
        ticket = ticket_for(priority, principal.tenant, weight, price.prompt_tokens, price.max_output_tokens,
                            self.clock.now() + max_queue_s, slo_s)
        flight.permit = await gate.admit(ticket)
        flight.record.queue_wait_s = flight.permit.waited_s

    def _queueing(self, tier_name: str | None) -> tuple[float, float]:
        """The tier's share within its band, and how long its requests may wait."""
        tier = self.limiter.policy.tiers.get(tier_name or "")
        return (tier.weight, tier.max_queue_s) if tier else (1.0, 0.0)

    def _resender(self, flight: Flight, path: str, stream: bool, upstream_body: bytes) -> Resender | None:
        """What sends a stream the gate may stop and the gateway resume; None when it may not be."""
        route = flight.route
        if not route.resumes_preempted or route.gate is None or not stream:
            return None
        doc = json_object(upstream_body)
        if not resumes_exactly(doc):
            return None
        transcript = Transcript(doc, client_wants_ids=doc.get("return_token_ids") is True)
        return Resender(flight, transcript, path, lambda: self.clock.now() + self._queueing(flight.record.tier)[1])

    def _route(self, model: str) -> ModelRoute:
        route = self.routes.get(model)
        if route is None:
            raise NotFoundError(f"The model `{model}` does not exist or you do not have access to it.", param="model")
        return route


def _upstream_body(request: Any, body: bytes, route: ModelRoute, stream: bool, priority: int) -> bytes:
    """The body the engine gets: the client's bytes untouched, unless the model name must be mapped, a stream
    must be made to carry usage (every upstream stream does, so tokens can be accounted), or the engine
    schedules by priority (it gets the request's, in its own convention). Only Sluice sets priorities: a
    client's own ``priority`` field never reaches the engine."""
    changes: dict[str, Any] = {}
    if route.served_name != request.model:
        changes["model"] = route.served_name
    if stream and not request.wants_usage_chunk():
        options = request.stream_options.model_dump(exclude_none=True) if request.stream_options else {}
        changes["stream_options"] = {**options, "include_usage": True}
    if route.priority is not None:
        changes.update(route.priority.fields(priority, scheduling_enabled=True))
    client_priority = "priority" in (request.model_extra or {})
    if not changes and not client_priority:
        return body
    if list(changes) == ["stream_options"] and not client_priority and b'"stream_options"' not in body:
        return _with_usage_asked(body)
    try:  # the protocol admits only numbers orjson keeps (protocol/_fields.py); this is the last line of defence
        doc = orjson.loads(body)
        if client_priority:
            del doc["priority"]
        doc.update(changes)
        return orjson.dumps(doc)
    except (orjson.JSONDecodeError, orjson.JSONEncodeError) as exc:
        raise InvalidRequestError(f"The request body cannot be forwarded: {exc}", code="invalid_json") from exc


def _with_usage_asked(body: bytes) -> bytes:
    """A stream's body that has no ``stream_options`` member (not even null), asking for the usage chunk: the
    member goes in first, in bytes (the body is a JSON object with members: the request parsed from it has them),
    without parsing it again."""
    start = body.index(b"{") + 1
    return b'%b"stream_options":{"include_usage":true},%b' % (body[:start], body[start:])


def _prefix(request: Any) -> str:
    """What identifies a conversation for prefix affinity: its leading messages (system and first user turn), or
    the start of a completion prompt; the first 2000 characters are plenty to tell conversations apart."""
    messages = getattr(request, "messages", None)
    if messages is not None:
        return "\x1f".join(m.text() for m in messages[:2])[:2000]
    prompts = getattr(request, "prompts", None)
    if prompts is not None:
        return str(prompts()[0])[:2000]
    return ""
