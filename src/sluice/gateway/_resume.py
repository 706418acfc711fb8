"""A stream stopped by preemption, continued exactly where it stopped.

vLLM never takes a running request's seat for a more important one, so Sluice's gate does (admission/_gate,
``preempt_gap``): it closes the stopped request's upstream stream, which aborts it in the engine, and later sends
the rest as a new request. The rest is what the engine's own recompute preemption would run: a completions
request whose prompt is the original prompt's token ids followed by the token ids generated so far, for what is
left of ``max_tokens``; with prefix caching (on by default in vLLM V1) its prefill reads back the blocks the
stopped request left in the cache. The ids come from the engine itself: the upstream request asks for
``return_token_ids``, and the ids are taken off the chunks before they reach the client (unless it asked too).

The client sees one stream: the continuation's chunks are written in the original's shape (its id, created, chat
or completion chunk), and its usage counts the original prompt and every token generated.

Exactness decides what may be preempted (``resumes_exactly``): one streamed choice, greedy or unseeded sampling, and no
parameter whose effect depends on where the output began (stop strings, whose text the engine holds back;
presence and frequency penalties, counted over the output only; logprobs; tools and structured output, whose
parsers and grammars would restart; images). A token whose text the engine had not yet sent (a character split
across tokens) is not kept: the continuation generates it again, and its text with it.

``Resender`` sends such a stream and, each time the gate stops it, gives its place back, waits for a place again
and sends the rest; ``Transcript`` keeps what it has produced and writes the rest's request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from sluice.engines import Replica, UpstreamResponse
from sluice.errors import EngineUnavailableError
from sluice.gateway._flight import Flight
from sluice.protocol import sse_data, sse_event

# Fields that shape only the prompt (already in its token ids), or that the continuation carries or adjusts.
_PROMPT_ONLY = frozenset({
    "model", "messages", "prompt", "stream", "stream_options", "n", "priority", "return_token_ids",
    "chat_template", "chat_template_kwargs", "add_generation_prompt", "continue_final_message", "add_special_tokens",
    "max_tokens", "max_completion_tokens", "min_tokens", "echo", "logprobs", "top_logprobs", "stop",
    "presence_penalty", "frequency_penalty",
})
# Sampling fields copied as they are: their effect does not depend on where the output began.
_CARRIED = frozenset({
    "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "seed", "stop_token_ids", "ignore_eos",
    "skip_special_tokens", "spaces_between_special_tokens", "logit_bias", "allowed_token_ids", "user",
})
COMPLETIONS_PATH = "/v1/completions"


def resumes_exactly(doc: dict[str, Any]) -> bool:
    """Whether the continuation of this upstream request body would be the same computation."""
    if doc.get("stream") is not True or doc.get("n", 1) != 1 or doc.get("echo") or doc.get("logprobs"):
        return False
    if doc.get("top_logprobs") or doc.get("stop") or doc.get("presence_penalty") or doc.get("frequency_penalty"):
        return False
    if doc.get("seed") is not None and doc.get("temperature", 1.0) != 0:
        return False  # a seeded sampler would start its stream again: not the answer the seed promises
    if any(key not in _PROMPT_ONLY and key not in _CARRIED for key in doc):
        return False
    prompt = doc.get("prompt")
    if prompt is not None and not (isinstance(prompt, str) or (prompt and all(isinstance(t, int) for t in prompt))):
        return False  # several prompts
    for message in doc.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and any(part.get("type") != "text" for part in content):
            return False
    return True


@dataclass(slots=True)
class Transcript:
    """What one resumable stream has produced so far, and how to ask for the rest."""

    original: dict[str, Any]  # the body the engine got first
    client_wants_ids: bool  # the client asked for return_token_ids itself: it keeps them
    prompt_ids: list[int] | None = None
    settled: list[int] = field(default_factory=list)  # generated tokens whose text reached the client
    pending: list[int] = field(default_factory=list)  # generated tokens whose text the engine still held back
    head: dict[str, Any] | None = None  # id, created, model: what every chunk the client sees carries
    before: int = 0  # tokens the segments before this one produced (settled when it was sent)
    translating: bool = False  # this segment is a continuation: its chunks are rewritten in the original's shape
    can_continue: bool = True  # what it produced so far still lets the rest be asked for
    finished: bool = False  # a finish reason went out

    @property
    def chat(self) -> bool:
        return "messages" in self.original

    def rewrite(self, frame: bytes) -> bytes:
        """One SSE frame from the engine, as the client gets it; the token ids it carries are recorded."""
        data = sse_data(frame)
        if data is None or data.startswith(b"[DONE]"):
            return frame
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            return frame
        if not isinstance(doc, dict) or "choices" not in doc:
            return frame  # an error event: as it is
        if self.head is None:
            self.head = {k: doc.get(k) for k in ("id", "created", "model")}
        prompt_ids = doc.pop("prompt_token_ids", None)
        for choice in doc["choices"]:
            prompt_ids = choice.pop("prompt_token_ids", None) or prompt_ids
            self._record(choice)
        if prompt_ids and self.prompt_ids is None:
            self.prompt_ids = list(prompt_ids)
        elif self.prompt_ids is None:
            self.can_continue = False  # the engine did not say its prompt's ids: the rest could not be asked for
        if self.translating:
            doc = self._in_original_shape(doc)
        elif self.client_wants_ids and prompt_ids:
            doc["prompt_token_ids"] = prompt_ids
        return sse_event(orjson.dumps(doc))

    def first_request(self) -> bytes:
        """The body the engine gets first: the original, asking for the token ids."""
        return orjson.dumps({**self.original, "return_token_ids": True})

    def next_request(self) -> tuple[str | None, bytes]:
        """The rest, as (path, body): a completions request from the token ids, or (``None``: the original
        path) the first request again when no chunk had arrived yet (nothing was generated, nothing is lost)."""
        self.pending.clear()
        if self.prompt_ids is None:
            return None, self.first_request()
        self.before = len(self.settled)
        self.translating = True
        body = {k: v for k, v in self.original.items() if k in _CARRIED or k == "priority"}
        body.update(model=self.original["model"], prompt=self.prompt_ids + self.settled, stream=True,
                    stream_options={"include_usage": True}, return_token_ids=True)
        limit = self.original.get("max_completion_tokens") or self.original.get("max_tokens")
        if limit is not None:
            body["max_tokens"] = max(1, limit - self.before)
        if self.original.get("min_tokens"):
            body["min_tokens"] = max(0, self.original["min_tokens"] - self.before)
        return COMPLETIONS_PATH, orjson.dumps(body)

    def ending(self, wants_usage: bool) -> bytes:
        """The end of a stream stopped after its finish reason went out: its usage (if asked for) and [DONE]."""
        tail = b""
        if wants_usage and self.head is not None:
            usage = self._usage(len(self.settled) + len(self.pending))
            obj = "chat.completion.chunk" if self.chat else "text_completion"
            tail = sse_event(orjson.dumps({**self.head, "object": obj, "choices": [], "usage": usage}))
        return tail + b"data: [DONE]\n\n"

    def _record(self, choice: dict[str, Any]) -> None:
        ids = choice.get("token_ids") if self.client_wants_ids else choice.pop("token_ids", None)
        delta = choice.get("delta")
        if isinstance(delta, dict):
            text = delta.get("content")
            if delta.get("tool_calls") or delta.get("reasoning_content") or delta.get("reasoning"):
                self.can_continue = False  # a parser is at work on the engine's side: its state cannot be resumed
        else:
            text = choice.get("text")
        if ids:
            self.pending.extend(ids)
        if text:  # the engine sends a token's text once it is whole: what it sent settles every token before
            self.settled.extend(self.pending)
            self.pending.clear()
        if choice.get("finish_reason") is not None:
            self.finished = True

    def _in_original_shape(self, doc: dict[str, Any]) -> dict[str, Any]:
        assert self.head is not None
        out: dict[str, Any] = {**self.head, "object": "chat.completion.chunk" if self.chat else "text_completion"}
        choices = []
        for choice in doc["choices"]:
            if self.chat:
                shaped = {"index": 0, "delta": {"content": choice.get("text", "")}, "logprobs": None,
                          "finish_reason": choice.get("finish_reason")}
                if "token_ids" in choice:
                    shaped["token_ids"] = choice["token_ids"]
            else:
                shaped = {**choice, "index": 0}
            choices.append(shaped)
        out["choices"] = choices
        usage = doc.get("usage")
        if isinstance(usage, dict):
            out["usage"] = self._usage(self.before + int(usage.get("completion_tokens") or 0))
        return out

    def _usage(self, completion_tokens: int) -> dict[str, int]:
        prompt = len(self.prompt_ids or ())
        return {"prompt_tokens": prompt, "total_tokens": prompt + completion_tokens,
                "completion_tokens": completion_tokens}


class Resender:
    """Sends one resumable stream to its pool, and the rest of it each time the gate stops it for a more important
    request: the place is given back, the rest waits for a place at the head of its band, then goes out."""

    def __init__(self, flight: Flight, transcript: Transcript, path: str,
                 queue_deadline_s: Callable[[], float]) -> None:
        self.flight = flight
        self.transcript = transcript
        self._path = path  # the client's endpoint
        self._queue_deadline_s = queue_deadline_s  # when the rest stops waiting, asked each time it queues

    async def send(self, *, affinity: str | None = None) -> UpstreamResponse:
        """The first request (the original, asking for token ids)."""
        return await self._send(self._path, self.transcript.first_request(), affinity=affinity)

    async def resume(self, stopped: UpstreamResponse) -> UpstreamResponse:
        """The rest of a stream the gate stopped after its engine answered, sent once the gate lets it in again."""
        if not self.transcript.can_continue:  # what made it so was read in the same instant it was stopped
            raise EngineUnavailableError("The request was stopped for a more important one, and could not be "
                                         "resumed.", reason="preempted")
        stopped.close()
        path, body = await self._requeue()
        return await self._send(path, body, prefer=stopped.replica)

    def rewrite(self, frames: list[bytes]) -> list[bytes]:
        """The frames as the client gets them; once they show the stream cannot be resumed, the gate may no
        longer stop it."""
        frames = [self.transcript.rewrite(frame) for frame in frames]
        if not self.transcript.can_continue:
            self.flight.disarm()
        return frames

    async def _send(self, path: str, body: bytes, *, affinity: str | None = None,
                    prefer: Replica | None = None) -> UpstreamResponse:
        """Send a request the gate may stop from the moment it is sent (``resume`` continues it once it answered);
        stopped before the engine answered, nothing was generated, and it is sent again when the gate lets it in
        again."""
        flight = self.flight
        while True:
            sending = asyncio.ensure_future(flight.post(path, body, affinity=affinity, prefer=prefer))
            flight.arm(sending.cancel)
            try:
                upstream = await sending
            except asyncio.CancelledError:
                if not flight.stopped or _cancelled():
                    raise
            else:
                if not flight.stopped:
                    flight.arm(upstream.close)
                    return upstream
                upstream.close()  # answered in the instant it was stopped
            path, body = await self._requeue()

    async def _requeue(self) -> tuple[str, bytes]:
        """Give back the place of the stopped stream (its upstream closed), wait for a place again, at the head of
        its band, and return the rest to send: (path, body), the client's path again when nothing had been
        generated."""
        record = self.flight.record
        record.preempted = (record.preempted or 0) + 1
        settled_before = self.transcript.before
        rest_path, body = self.transcript.next_request()
        generated = self.transcript.before - settled_before
        await self.flight.resume(extra_prompt_tokens=generated, deadline_s=self._queue_deadline_s())
        return rest_path or self._path, body


def _cancelled() -> bool:
    """Whether this request's own task is being cancelled (its client left), not only what it awaited."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
