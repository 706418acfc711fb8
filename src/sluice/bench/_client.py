"""One request, timed: send it over aiohttp, read the answer (streamed or whole), and record what happened.

Times come from the injected clock. For a stream, a token event is a chunk carrying generated text (a chat
chunk with only the role does not count); TTFT is the time to the first, inter-token latency the gaps between
the next ones, TPOT ``(e2e - ttft) / (output_tokens - 1)``. Output tokens are the server's
``usage.completion_tokens`` (asked for with ``stream_options.include_usage``), else the token events counted.
A whole (non-streamed) answer's first token is seen with the rest: its TTFT is its end-to-end latency, and it has
no TPOT or inter-token latency. A failure is a result too: HTTP status (0 when no answer came), ``reason`` from
``x-sluice-reason`` (else the error body's code or type), and the message.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
import orjson

from sluice.bench._plan import PlannedRequest
from sluice.clock import Clock
from sluice.protocol import SSEParser, sse_data

REJECTION_STATUSES = (429, 503)


@dataclass
class RequestResult:
    index: int
    tenant: str
    start_s: float  # when it was sent, in seconds from the start of the run
    input_len: int
    output_len: int  # max_tokens asked for
    status: int = 0
    ok: bool = False
    reason: str | None = None
    error: str | None = None
    ttft_s: float | None = None
    e2e_s: float | None = None
    tpot_s: float | None = None
    prompt_tokens: int | None = None
    output_tokens: int = 0
    itl_s: list[float] = field(default_factory=list)

    @property
    def end_s(self) -> float:
        return self.start_s + (self.e2e_s or 0.0)

    @property
    def rejected(self) -> bool:
        return self.status in REJECTION_STATUSES

    def failure(self, excerpt_chars: int = 100) -> str:
        """What went wrong, in one line: ``404 model_not_found: The model `x` does not exist`` (status 0: none)."""
        label = str(self.status) if self.status else "no answer"
        if self.reason and self.reason != str(self.status):
            label += f" {self.reason}"
        message = " ".join((self.error or "").split())
        if len(message) > excerpt_chars:
            message = message[:excerpt_chars - 3] + "..."
        return label + (f": {message}" if message else "")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RequestShape:
    """How every request of a run is put: endpoint, model, streaming, and whether to ignore EOS."""

    base_url: str
    model: str
    endpoint: str = "chat"  # or "completions"
    stream: bool = True
    ignore_eos: bool = True
    timeout_s: float = 300.0

    @property
    def url(self) -> str:
        """The endpoint's URL: the base URL may end in ``/v1`` or not (as the OpenAI SDK's ``base_url`` does)."""
        path = "/v1/chat/completions" if self.endpoint == "chat" else "/v1/completions"
        return self.base_url.rstrip("/").removesuffix("/v1") + path

    def body(self, req: PlannedRequest) -> bytes:
        body: dict[str, Any] = {"model": self.model, "max_tokens": req.output_len, "stream": self.stream}
        if self.endpoint == "chat":
            body["messages"] = [{"role": "user", "content": req.prompt}]
        else:
            body["prompt"] = req.prompt
        if self.ignore_eos:
            body["ignore_eos"] = True
        if self.stream:
            body["stream_options"] = {"include_usage": True}
        return orjson.dumps(body)


async def send(session: aiohttp.ClientSession, shape: RequestShape, req: PlannedRequest, *, clock: Clock,
               t0: float) -> RequestResult:
    """Send one planned request and return its result; never raises for what the server or network did."""
    headers = {"content-type": "application/json", "x-request-id": f"bench-{req.index}"}
    if req.tenant.api_key:
        headers["authorization"] = f"Bearer {req.tenant.api_key}"
    start = clock.now()
    result = RequestResult(req.index, req.tenant.name, start - t0, req.input_len, req.output_len)
    try:
        async with session.post(shape.url, data=shape.body(req), headers=headers) as resp:
            result.status = resp.status
            if resp.status != 200:
                await _record_refusal(resp, result)
            elif shape.stream:
                await _read_stream(resp, result, clock, start)
            else:
                _read_whole(await resp.read(), result)
                result.ttft_s = clock.now() - start
    except TimeoutError:
        result.reason, result.error = "timeout", f"no answer within {shape.timeout_s} s"
    except aiohttp.ClientError as exc:
        result.reason, result.error = "connection_error", f"{type(exc).__name__}: {exc}"
    result.e2e_s = clock.now() - start
    if result.ok and result.ttft_s is not None and shape.stream and result.output_tokens > 1:
        result.tpot_s = (result.e2e_s - result.ttft_s) / (result.output_tokens - 1)
    return result


async def _record_refusal(resp: aiohttp.ClientResponse, result: RequestResult) -> None:
    raw = await resp.read()
    found: object = {}
    try:
        parsed = orjson.loads(raw)
        found = parsed.get("error") or {} if isinstance(parsed, dict) else {}
    except orjson.JSONDecodeError:
        pass
    error: dict[str, Any] = found if isinstance(found, dict) else {"message": str(found)}
    reason = resp.headers.get("x-sluice-reason") or error.get("code") or error.get("type") or "http_error"
    result.reason = str(reason)
    result.error = str(error.get("message") or raw[:200].decode(errors="replace"))


async def _read_stream(resp: aiohttp.ClientResponse, result: RequestResult, clock: Clock, start: float) -> None:
    parser = SSEParser()
    events, last, done = 0, start, False
    async for chunk in resp.content.iter_any():
        now = clock.now()
        for frame in parser.feed(chunk):
            data = sse_data(frame)
            if data is None:
                continue
            if data == b"[DONE]":
                done = True
                continue
            obj = orjson.loads(data)
            if obj.get("error"):
                result.reason, result.error = "stream_error", str(obj["error"])[:200]
                return
            if _has_token(obj):
                if events == 0:
                    result.ttft_s = now - start
                else:
                    result.itl_s.append(now - last)
                events, last = events + 1, now
            _take_usage(obj, result)
    result.output_tokens = result.output_tokens or events
    if not done:
        result.reason, result.error = "incomplete_stream", "the stream ended without [DONE]"
        return
    result.ok = True


def _has_token(obj: dict[str, Any]) -> bool:
    for choice in obj.get("choices") or ():
        if "text" in choice:
            return True
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls"):
            return True
    return False


def _take_usage(obj: dict[str, Any], result: RequestResult) -> None:
    usage = obj.get("usage")
    if usage:
        result.prompt_tokens = usage.get("prompt_tokens")
        result.output_tokens = int(usage.get("completion_tokens") or 0)


def _read_whole(raw: bytes, result: RequestResult) -> None:
    obj = orjson.loads(raw)
    _take_usage(obj, result)
    result.ok = True
