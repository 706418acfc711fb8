"""A streamed answer relayed to the client: SSE frames passed through as they arrive, what they say tallied (usage,
tokens, the end), the time to first token taken, and, for a resumable stream, its frames rewritten and the rest of
it sent each time the gate stops it (gateway/_resume.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from sluice.admission import Outcome
from sluice.clock import Clock
from sluice.engines import UpstreamResponse
from sluice.errors import SluiceError
from sluice.gateway._flight import Flight, outcome_of
from sluice.gateway._over_budget import DONE, cut_error
from sluice.gateway._resume import Resender
from sluice.protocol import SSEParser, sse_data, sse_event


async def relay(upstream: UpstreamResponse, flight: Flight, clock: Clock, tally: StreamTally, *,
                resender: Resender | None) -> AsyncIterator[bytes]:
    """The client's stream, tallied in ``tally``. Closing it early (client gone) closes the upstream, aborting the
    request there, and charges what was generated so far; an engine dying mid-answer ends it with an error event.
    ``tally.cut_at``: the stream ends after that many generated tokens with an error event and [DONE] (its tier's
    over-budget cut)."""
    stream = _Stream(upstream, flight, clock, tally, resender)
    record = flight.record
    outcome = Outcome.IGNORED
    try:
        while not stream.over:  # read here, not in a coroutine of the stream's: one frame less per chunk
            try:
                chunk = await stream.upstream.next_chunk()  # None: the upstream's answer ended
            except SluiceError as exc:
                chunk = stream.stopped(exc)
            out = stream.take(chunk) if chunk is not None else await stream.after_segment()
            if tally.cut:
                out = stream.cut(out)
            if out:
                yield out
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
        stream.upstream.close()
        if not tally.finished:
            record.reason = record.reason or "client_disconnected"
        usage = tally.usage if isinstance(tally.usage, dict) else {"completion_tokens": tally.generated}
        if tally.cut:  # it produced what the client got (its usage never came)
            usage = {"completion_tokens": tally.produced}
        flight.finish(usage, outcome)


class _Stream:
    """The upstream stream being relayed (the rest of it, after each stop): what each chunk of it sends on."""

    def __init__(self, upstream: UpstreamResponse, flight: Flight, clock: Clock, tally: StreamTally,
                 resender: Resender | None) -> None:
        self.upstream = upstream
        self.tally = tally
        self._flight = flight
        self._clock = clock
        self._resender = resender
        self._parser = SSEParser()
        self.over = False  # nothing more goes to the client

    def stopped(self, failure: SluiceError) -> bytes | None:
        """The upstream read failed: if the gate stopped the request, that is why, and this segment is over (its
        rest follows: no chunk, None); else the failure is raised."""
        if not self._flight.stopped:
            raise failure
        return None

    def cut(self, out: bytes | None) -> bytes:
        """The stream's last bytes, cut at its tier's token budget: what was taken, an error event and [DONE]."""
        self.over = True
        self._flight.record.reason = "over_budget_cut"
        return (out or b"") + sse_event(orjson.dumps(cut_error(self.tally.produced).body())) + DONE

    async def after_segment(self) -> bytes | None:
        """An upstream answer ended: the stream is over, or it was stopped by the gate and goes on with its rest
        (None then: nothing to write yet), or it was stopped after its last token (its ending is written here)."""
        resender = self._resender
        if self.tally.finished or resender is None or not self._flight.stopped:
            self.over = True
            return None
        if resender.transcript.finished:  # stopped between its last token and its [DONE]: end it here
            self.over = self.tally.finished = True
            return self._flight.route.rename(resender.transcript.ending(self.tally.wants_usage))
        self.upstream = await resender.resume(self.upstream)
        self._parser = SSEParser()
        return None

    def take(self, chunk: bytes) -> bytes | None:
        """What of ``chunk`` goes to the client (None: nothing yet), tallied."""
        record = self._flight.record
        if self._resender is None and self.tally.cut_at is None and not self._parser.tail():
            whole = self.tally.take_whole(chunk)
            if whole is not None:
                if record.ttft_s is None and has_generated_text(chunk):
                    record.ttft_s = self._clock.now() - record.started_s
                return self._flight.route.rename(whole) if whole else None
        frames = self._parser.feed(chunk)
        if self._resender is not None and frames:
            frames = self._resender.rewrite(frames)
        if record.ttft_s is None and any(map(has_generated_text, frames)):
            record.ttft_s = self._clock.now() - record.started_s
        out = self.tally.take(frames)
        return self._flight.route.rename(b"".join(out)) if out else None


@dataclass(slots=True)
class StreamTally:
    """What a relayed stream has said so far (``finished``: its [DONE] came, the last the client is sent). Only a
    frame carrying usage is parsed: its usage is kept, and the usage-only frame is dropped if the client did not
    ask for it."""

    wants_usage: bool
    cut_at: int | None = None  # stop after this many frames carrying generated text (the tier's over-budget cut)
    usage: Any = None
    generated: int = 0  # data frames: about one token each, the charge when the stream ends without its usage
    produced: int = 0  # frames carrying generated text: one token each (vLLM and the simulator send them so)
    finished: bool = False  # [DONE] came
    cut: bool = False  # cut at ``cut_at``: nothing more goes to the client

    def take_whole(self, chunk: bytes) -> bytes | None:
        """What goes on to the client of a chunk of whole frames (the usual chunk), tallied without splitting it
        into frames: only the frame carrying usage, if any, is taken apart (``take``). None (nothing tallied)
        for any other chunk (a frame cut across chunks, CRs to normalize, usage twice): ``take`` its frames.

        Usage is looked for in the chunk's last two frames only: the stream's usage frame is its last before
        [DONE] (OpenAI's ``include_usage``; with vLLM's ``continuous_usage_stats`` every frame carries the usage so
        far, and the last one holds it all). A chunk is scanned once, to count its frames: scanning all of it for
        usage and [DONE] as well was a quarter of the gateway's CPU per frame of a long stream."""
        if not chunk.endswith(b"\n\n") or b"\r" in chunk:
            return None
        at = _usage_at(chunk, _last_frames(chunk))
        if at < 0:
            self._count(chunk)
            return chunk
        # JSON escapes newlines: a blank line only ends a frame, and a frame's start follows one
        previous = chunk.rfind(b"\n\n", 0, at)
        start = previous + 2 if previous >= 0 else 0
        end = chunk.find(b"\n\n", at) + 2
        if _usage_at(chunk, end) >= 0:
            return None
        before, after = chunk[:start], chunk[end:]
        self._count(before)
        kept = self.take([chunk[start:end]])
        self._count(after)
        return before + b"".join(kept) + after

    def _count(self, frames: bytes) -> None:
        """Tally whole frames that carry no usage: the data frames, and the [DONE] that ends the stream (its last
        frame: looked for at the end)."""
        data = frames.count(b"\n\ndata:") + frames.startswith(b"data:")
        if frames.endswith(b"data: [DONE]\n\n"):
            self.finished = True
            data -= 1
        self.generated += data

    def take(self, frames: list[bytes]) -> list[bytes]:
        """The frames that go on to the client."""
        out = []
        for frame in frames:
            if self.cut_at is not None and self._past_cut(self.cut_at, frame):
                self.cut = True
                break
            if _usage_at(frame, 0) >= 0:
                doc = json_object(sse_data(frame) or b"")
                self.usage = doc.get("usage")
                if not doc.get("choices") and not self.wants_usage:
                    continue
            else:
                self._count(frame)
            out.append(frame)
        return out

    def _past_cut(self, cut_at: int, frame: bytes) -> bool:
        """Whether this frame is the token past ``cut_at`` (the stream is cut before it); counts those before."""
        if not has_generated_text(frame):
            return False
        if self.produced >= cut_at:
            return True
        self.produced += 1
        return False


def has_generated_text(frames: bytes) -> bool:
    """Whether SSE frames carry generated text (not only the opening ``role`` chunk): the first such frame is the
    time to first token. Engines write compact JSON, so a byte test does it without parsing."""
    for marker in (b'"content":"', b'"text":"', b'"reasoning_content":"'):
        at = frames.find(marker)
        while at >= 0:
            if frames[at + len(marker):at + len(marker) + 1] != b'"':
                return True
            at = frames.find(marker, at + len(marker))
    return False


def _last_frames(chunk: bytes) -> int:
    """Where the last two frames of a chunk of whole frames begin (0: it has no more)."""
    end = len(chunk) - 2  # the last frame's own blank line
    for _ in range(2):
        end = chunk.rfind(b"\n\n", 0, end)
        if end < 0:
            return 0
    return end + 2


def _usage_at(chunk: bytes, start: int) -> int:
    """Where in ``chunk`` (from ``start``) a usage object begins; -1 if nowhere."""
    found = [at for at in (chunk.find(b'"usage":{', start), chunk.find(b'"usage": {', start)) if at >= 0]
    return min(found) if found else -1


def json_object(data: bytes) -> dict[str, Any]:
    """An engine's JSON body or frame as an object; empty when it is not one."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}
