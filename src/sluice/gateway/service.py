"""The request pipeline, free of HTTP: identify → price → quota → admission → route → engine → settle → record.

Routes hand it bytes and headers and get a ``FullReply`` or a ``StreamReply`` back; errors are raised as
``SluiceError``. The response cache, when it comes, slots in between price and quota.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import BaseModel

from sluice.admission import Outcome, PoolController, ticket_for
from sluice.cache import CacheStore, cache_key
from sluice.clock import Clock
from sluice.engines import EnginePool, Replica, UpstreamResponse
from sluice.engines.dialects import PriorityConvention
from sluice.errors import EngineUnavailableError, InvalidRequestError, NotFoundError, SluiceError
from sluice.gateway._flight import NOTHING_RAN, Flight, outcome_of
from sluice.gateway._resume import Transcript, resumable
from sluice.identity import Authenticator, Directory, Principal
from sluice.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ModelCard,
    ModelList,
    SSEParser,
    parse_request,
    sse_data,
    sse_event,
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


@dataclass(frozen=True, slots=True)
class ModelRoute:
    name: str  # what clients call it
    served_name: str  # what the engine calls it
    pool: EnginePool
    max_model_len: int | None = None
    gate: PoolController | None = None  # admission in front of the pool
    tighten_factor: float = 1.0  # lower tiers' rate limits under protection mode
    priority: PriorityConvention | None = None  # how the engine takes priorities, when it schedules by them
    affinity: bool = False  # route by the conversation's prefix (prefix_affinity)
    cache_ttl_s: float | None = None  # answers of deterministic requests are cached this long (None: no cache)
    resumable: bool = False  # the gate preempts, and streams stopped for it are resumed (gateway/_resume.py)

    def tighten_for(self, priority: int) -> float:
        gate = self.gate
        if gate is not None and gate.protection is not None and gate.protection.engaged and priority < gate.top_priority:
            return self.tighten_factor
        return 1.0

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
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StreamReply:
    chunks: AsyncIterator[bytes]
    headers: Mapping[str, str] = field(default_factory=dict)
    on_close: Callable[[], None] = lambda: None  # called once the stream is over, however it ended


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
        self._settling: set[asyncio.Task[None]] = set()

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

    async def proxy(self, endpoint: Endpoint, principal: Principal, body: bytes, record: RequestRecord,
                    priority: int | None = None) -> Reply:
        """``priority``: the client's ``x-sluice-priority``, which may lower its tier's priority, never raise it."""
        request: Any = parse_request(endpoint.request_model, body)
        route = self._route(request.model)
        record.model = route.name
        stream = record.stream = bool(getattr(request, "stream", False))
        priority = principal.priority if priority is None else min(priority, principal.priority)
        price: Price = getattr(self.pricer, endpoint.pricing)(request)
        key = cache_key(route.name, principal.tenant, request) if route.cache_ttl_s else None
        if key is not None:
            cached = await self.cache.get(key)
            record.cache = "miss" if cached is None else "hit"
            if cached is not None:  # answered without an engine, so without spending quota
                return FullReply(200, cached, "application/json", {"x-sluice-cache": "hit"})
        upstream_body = _upstream_body(request, body, route, stream, priority)  # before reserving: it may refuse
        reservation = await self.limiter.reserve(principal, route.name, price, route.tighten_for(priority))
        flight = Flight(self, route, record, reservation)
        transcript = _transcript(route, stream, upstream_body)
        if transcript is not None:
            upstream_body = transcript.first_request()
        try:
            await self._admit(flight, principal, priority, price)
            upstream = await self._send(flight, endpoint.path, upstream_body, transcript,
                                        affinity=_prefix(request) if route.affinity else None)
        except BaseException as exc:
            flight.finish(NOTHING_RAN, outcome_of(exc))
            raise
        record.replica = upstream.replica.url
        if stream:
            chunks = self._relay(upstream, request.wants_usage_chunk(), flight, endpoint.path, transcript)

            def abandoned() -> None:  # the client left before the relay began: nothing was forwarded
                upstream.close()
                flight.finish({"completion_tokens": 0}, Outcome.IGNORED)

            return StreamReply(chunks, reservation.headers, abandoned)
        try:
            data = route.rename(await upstream.read())
        except BaseException as exc:
            flight.finish(None, outcome_of(exc))  # aborted with unknown usage: keep what was reserved
            raise
        flight.finish(_json_object(data).get("usage"), Outcome.SUCCESS)
        if key is not None and upstream.status == 200 and route.cache_ttl_s:
            self.spawn(self.cache.set(key, data, route.cache_ttl_s))
        return FullReply(upstream.status, data, upstream.content_type or "application/json", reservation.headers)

    def spawn(self, work: Any) -> None:
        """Run bookkeeping that must finish even if the request's task is cancelled; awaited at shutdown."""
        task = asyncio.get_running_loop().create_task(work)
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def drain(self) -> None:
        """Wait for the settlements still in flight (at shutdown: no accounting is lost)."""
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)

    async def _admit(self, flight: Flight, principal: Principal, priority: int, price: Price) -> None:
        gate = flight.route.gate
        if gate is None:
            return
        weight, max_queue_s = self._queueing(principal.tier)
        ticket = ticket_for(priority, principal.tenant, weight, price.prompt_tokens, price.max_output_tokens,
                            self.clock.now() + max_queue_s)
        flight.permit = await gate.admit(ticket)
        flight.record.queue_wait_s = flight.permit.waited_s

    def _queueing(self, tier_name: str | None) -> tuple[float, float]:
        """The tier's share within its band, and how long its requests may wait."""
        tier = self.limiter.policy.tiers.get(tier_name or "")
        return (tier.weight, tier.max_queue_s) if tier else (1.0, 0.0)

    async def _send(self, flight: Flight, path: str, body: bytes, transcript: Transcript | None, *,
                    affinity: str | None = None, prefer: Replica | None = None) -> UpstreamResponse:
        """Send a request to the pool. A resumable stream may be stopped by the gate from the moment it is sent
        (``_relay`` resumes it once it answered); stopped before the engine answered, nothing was generated, and
        it is sent again when the gate lets it in again."""
        route, record = flight.route, flight.record
        headers = {"content-type": "application/json", "x-request-id": record.request_id}
        gate = route.gate
        if transcript is None or gate is None or flight.permit is None:
            return await route.pool.post(path, body, headers, affinity=affinity, prefer=prefer)
        while True:
            sending = asyncio.ensure_future(route.pool.post(path, body, headers, affinity=affinity, prefer=prefer))
            gate.arm(flight.permit, sending.cancel)
            try:
                upstream = await sending
            except asyncio.CancelledError:
                if not _stopped(flight) or _cancelled():
                    raise
            else:
                if not _stopped(flight):
                    gate.arm(flight.permit, upstream.close)
                    return upstream
                upstream.close()  # answered in the instant it was stopped
            path, body = await self._requeue(flight, transcript, path)

    async def _requeue(self, flight: Flight, transcript: Transcript, path: str) -> tuple[str, bytes]:
        """Give back the place of a stream the gate stopped for a more important request (its upstream closed),
        wait for a place again, at the head of its band, and return the rest to send: (path, body), ``path`` again
        when nothing had been generated."""
        route, record, permit = flight.route, flight.record, flight.permit
        assert route.gate is not None and permit is not None
        record.preempted = (record.preempted or 0) + 1
        settled_before = transcript.before
        rest_path, body = transcript.next_request()
        left = transcript.before - settled_before
        rest = dataclasses.replace(permit.ticket, granted=None, on_preempt=None, preempted=False,
                                   deadline_s=self.clock.now() + self._queueing(record.tier)[1],
                                   prompt_tokens=permit.ticket.prompt_tokens + left)
        flight.permit = await route.gate.resume(permit, left, rest)
        return rest_path or path, body

    def _route(self, model: str) -> ModelRoute:
        route = self.routes.get(model)
        if route is None:
            raise NotFoundError(f"The model `{model}` does not exist or you do not have access to it.", param="model")
        return route

    async def _relay(self, upstream: UpstreamResponse, wants_usage: bool, flight: Flight, path: str,
                     transcript: Transcript | None) -> AsyncIterator[bytes]:
        """Pass SSE frames through as they arrive (``_Tally`` reads what they say). Closing this generator early
        (client gone) closes the upstream, aborting the request there, and charges what was generated so far. A
        resumable stream (``transcript``) has every frame rewritten by it, and is continued if the gate stops it."""
        route, record = flight.route, flight.record
        tally = _Tally(wants_usage)
        outcome = Outcome.IGNORED
        try:
            while True:
                parser = SSEParser()
                try:
                    async for chunk in upstream.chunks():
                        frames = parser.feed(chunk)
                        if transcript is not None and frames:
                            frames = _rewritten(frames, transcript, flight)
                        if record.ttft_s is None and any(map(_has_generated_text, frames)):
                            record.ttft_s = self.clock.now() - record.started_s
                        if out := tally.take(frames):
                            yield route.rename(b"".join(out))
                except SluiceError:
                    if not _stopped(flight):
                        raise
                if tally.finished or transcript is None or not _stopped(flight):
                    break
                if transcript.finished:  # stopped between its last token and its [DONE]: end it here
                    yield route.rename(transcript.ending(wants_usage))
                    tally.finished = True
                    break
                if not transcript.resumable:  # what made it so was read in the same instant it was stopped
                    raise EngineUnavailableError("The request was stopped for a more important one, and could not "
                                                 "be resumed.", reason="preempted")
                upstream.close()
                rest_path, body = await self._requeue(flight, transcript, path)
                upstream = await self._send(flight, rest_path, body, transcript, prefer=upstream.replica)
            if tally.finished:
                outcome = Outcome.SUCCESS
        except SluiceError as exc:  # the engine died mid-answer: say so in the stream, and end it cleanly
            outcome, record.reason = Outcome.DROPPED, exc.reason
            exc.__traceback__ = None  # answered: its traceback would tie this stream's frames into a cycle with it
            yield sse_event(orjson.dumps(exc.body()))
        except BaseException as exc:
            outcome = outcome_of(exc)
            raise
        finally:
            upstream.close()
            if not tally.finished:
                record.reason = record.reason or "client_disconnected"
            usage = tally.usage if isinstance(tally.usage, dict) else {"completion_tokens": tally.generated}
            flight.finish(usage, outcome)


@dataclass(slots=True)
class _Tally:
    """What a relayed stream has said so far. Only a frame carrying usage is parsed: its usage is kept, and the
    usage-only frame is dropped if the client did not ask for it."""

    wants_usage: bool
    usage: Any = None
    generated: int = 0  # data frames: about one token each, the charge when the stream is cut before its usage
    finished: bool = False  # [DONE] came

    def take(self, frames: list[bytes]) -> list[bytes]:
        """The frames that go on to the client."""
        out = []
        for frame in frames:
            if b'"usage":{' in frame or b'"usage": {' in frame:
                doc = _json_object(sse_data(frame) or b"")
                self.usage = doc.get("usage")
                if not doc.get("choices") and not self.wants_usage:
                    continue
            elif frame.startswith(b"data: [DONE]"):
                self.finished = True
            else:
                self.generated += 1
            out.append(frame)
        return out


def _rewritten(frames: list[bytes], transcript: Transcript, flight: Flight) -> list[bytes]:
    """A resumable stream's frames as the client gets them; once they show it cannot be resumed, the gate may no
    longer stop it."""
    frames = [transcript.rewrite(frame) for frame in frames]
    gate = flight.route.gate
    if not transcript.resumable and flight.permit is not None and gate is not None:
        gate.arm(flight.permit, None)
    return frames


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
    try:  # the protocol admits only numbers orjson keeps (protocol/_fields.py); this is the last line of defence
        doc = orjson.loads(body)
        if client_priority:
            del doc["priority"]
        doc.update(changes)
        return orjson.dumps(doc)
    except (orjson.JSONDecodeError, orjson.JSONEncodeError) as exc:
        raise InvalidRequestError(f"The request body cannot be forwarded: {exc}", code="invalid_json") from exc


def _transcript(route: ModelRoute, stream: bool, upstream_body: bytes) -> Transcript | None:
    """A transcript for a stream the gate may stop and the gateway resume; None when it may not be."""
    if not route.resumable or route.gate is None or not stream:
        return None
    doc = _json_object(upstream_body)
    if not resumable(doc):
        return None
    return Transcript(doc, client_wants_ids=doc.get("return_token_ids") is True)


def _stopped(flight: Flight) -> bool:
    """Whether the gate stopped this request (preempted it for a more important one)."""
    return flight.permit is not None and flight.permit.ticket.preempted


def _cancelled() -> bool:
    """Whether this request's own task is being cancelled (its client left), not only what it awaited."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _has_generated_text(frame: bytes) -> bool:
    """Whether an SSE frame carries generated text (not only the opening ``role`` chunk): the first such frame
    is the time to first token. Engines write compact JSON, so a byte test does it without parsing."""
    for marker in (b'"content":"', b'"text":"', b'"reasoning_content":"'):
        at = frame.find(marker)
        if at >= 0 and frame[at + len(marker):at + len(marker) + 1] != b'"':
            return True
    return False


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


def _json_object(data: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}
