"""Chat and text completions on the simulated engine: size the request, plan each choice, run it, answer.

Every choice (``n``) of every prompt is its own sequence in the engine, as in vLLM; ``usage.prompt_tokens``
counts each prompt once and ``completion_tokens`` sums over the choices. A sequence carries its token ids (its
prompt's, then those it will generate) when the engine caches prefixes or the request asks for
``return_token_ids``; otherwise the prompt is only counted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import orjson

from sluice.clock import Clock
from sluice.config import SimSettings
from sluice.dialects import facts_for
from sluice.errors import EngineUnavailableError, InvalidRequestError, NotFoundError
from sluice.protocol import DONE, ChatCompletionRequest, CompletionRequest
from sluice.sim._bodies import Ids, ResponseHeader, TokenIds
from sluice.sim._engine import Sequence
from sluice.sim._logprobs import TokenLogprob, token_logprobs
from sluice.sim._request_options import chat_top_logprobs, completion_top_logprobs, refuse_unsupported
from sluice.sim._runner import EngineRunner, Generation
from sluice.sim._sampler import PlannedOutput, Sampler
from sluice.sim._stops import apply_stops, stop_strings
from sluice.sim._tokenizer import chat_ids, check_ids, count_chat, count_prompt, prompt_ids

Write = Callable[[bytes], Awaitable[None]]

# Every token a request may generate is drawn up front, in its handler (``Sampler.plan``): these bound that work
# (about 150 ns and 16 bytes a token), so one request cannot hold the event loop for seconds or take gigabytes.
MAX_SEQS_PER_REQUEST = 4096  # sequences: prompts x n
MAX_PLANNED_TOKENS = 1 << 20  # tokens planned over all its sequences (128 choices of 8192 tokens fit)


@dataclass(frozen=True)
class Job:
    """A request made ready for the engine: one planned output (and its prompt length, and ids) per choice."""

    header: ResponseHeader
    prompt_tokens: int  # for usage: each prompt once
    seq_prompt_tokens: list[int]  # per choice
    outputs: list[PlannedOutput]
    priority: int = 0  # the request's "priority", lower first (used only under the priority scheduling policy)
    seq_prompt_ids: list[Ids] | None = None  # per choice, when the engine or the response needs them

    @property
    def token_ids(self) -> TokenIds | None:
        if self.seq_prompt_ids is None:
            return None
        return TokenIds(self.seq_prompt_ids, [o.token_ids for o in self.outputs])

    @property
    def completion_tokens(self) -> int:
        return sum(len(o.words) for o in self.outputs)


class Serving:
    def __init__(
        self, settings: SimSettings, *, model_name: str, runner: EngineRunner, sampler: Sampler, clock: Clock
    ) -> None:
        self._settings = settings
        self._model_name = model_name
        self._runner = runner
        self._sampler = sampler
        self._clock = clock
        self._caching = runner.engine.prefix_caching  # sequences then need their token ids

    def check_model(self, model: str) -> None:
        if model != self._model_name:
            raise NotFoundError(f"The model `{model}` does not exist.", param="model")

    @property
    def failure(self) -> str | None:
        """Why the engine loop stopped, if it failed (``/health`` then answers 503)."""
        return self._runner.failure

    def chat_job(self, req: ChatCompletionRequest) -> Job:
        self.check_model(req.model)
        refuse_unsupported(req.model_extra or {})
        stops = stop_strings(req.stop)
        header = self._header("chat", req, req.wants_usage_chunk(), chat_top_logprobs(req.model_extra or {}))
        ids = chat_ids(req.messages) if self._caching or header.return_token_ids else None
        prompt_tokens = count_chat(req.messages) if ids is None else len(ids)
        cap = self._output_cap(prompt_tokens, req.output_cap())
        self._check_size(req.n, req.n * self._planned(cap, req.ignore_eos))
        key = orjson.dumps([[m.role, m.text()] for m in req.messages]).decode()
        outputs = [
            apply_stops(self._sampler.plan(prompt_key=key, seed=req.seed, index=i, cap=cap, ignore_eos=req.ignore_eos),
                        stops)
            for i in range(req.n)
        ]
        seq_ids = None if ids is None else [ids] * req.n
        return Job(header, prompt_tokens, [prompt_tokens] * req.n, outputs, self._priority(req), seq_ids)

    def completion_job(self, req: CompletionRequest) -> Job:
        self.check_model(req.model)
        refuse_unsupported(req.model_extra or {})
        stops = stop_strings(req.stop)
        header = self._header("completion", req, req.wants_usage_chunk(),
                              completion_top_logprobs(req.model_extra or {}))
        with_ids = self._caching or header.return_token_ids
        prompts = req.prompts()
        self._check_size(len(prompts) * req.n, 0)
        sized = []  # (prompt, its ids, its tokens, its output cap)
        for prompt in prompts:
            check_ids(prompt)
            ids = prompt_ids(prompt) if with_ids else ()
            tokens = len(ids) if with_ids else count_prompt(prompt)
            if tokens == 0:
                raise InvalidRequestError("The decoder prompt cannot be empty.", param="prompt")
            sized.append((prompt, ids, tokens, self._output_cap(tokens, req.output_cap())))
        self._check_size(len(prompts) * req.n, req.n * sum(self._planned(cap, req.ignore_eos) for *_, cap in sized))
        prompt_total, seq_prompts, seq_ids, outputs = 0, [], [], []
        for prompt, ids, tokens, cap in sized:
            key = prompt if isinstance(prompt, str) else orjson.dumps(prompt).decode()
            prompt_total += tokens
            for i in range(req.n):
                seq_prompts.append(tokens)
                seq_ids.append(ids)
                planned = self._sampler.plan(prompt_key=key, seed=req.seed, index=i, cap=cap, ignore_eos=req.ignore_eos)
                outputs.append(apply_stops(planned, stops))
        return Job(header, prompt_total, seq_prompts, outputs, self._priority(req), seq_ids if with_ids else None)

    @contextlib.contextmanager
    def running(self, job: Job) -> Iterator[Generation]:
        """Submit the job's sequences (raising 503 when the queue is full); abort them if left unfinished."""
        gen = self._submit(job)
        try:
            yield gen
        finally:
            if not gen.done:
                self._runner.abort(gen)

    async def probe(self) -> None:
        """Generate one token through the engine (SGLang's ``/health_generate``)."""
        seq = Sequence(seq_id=self._runner.new_seq_id(), prompt_tokens=1, output_len=1)
        gen = self._runner.submit([seq], ["length"])
        try:
            while not gen.done:
                await gen.changed()
        finally:
            self._runner.abort(gen)

    async def full(self, job: Job, gen: Generation) -> bytes:
        while not gen.done:
            await gen.changed()
        if gen.aborted:
            raise EngineUnavailableError("The engine stopped before the request finished.", reason="engine_stopped")
        texts = ["".join(o.texts) for o in job.outputs]
        reasons = [o.finish_reason for o in job.outputs]
        top_n = job.header.top_logprobs
        logprobs = None if top_n is None else [
            token_logprobs(o.token_ids, first_position=0, top_n=top_n) for o in job.outputs
        ]
        return job.header.full(texts, reasons, job.prompt_tokens, job.completion_tokens, job.token_ids, logprobs)

    async def stream(self, job: Job, gen: Generation, write: Write) -> None:
        """Write the SSE stream: one chunk per token, the usage chunk if asked for, then ``[DONE]``. A chat
        choice's opening ``role`` chunk goes out with its first token, as vLLM sends it."""
        header, outputs = job.header, job.outputs
        prompts = job.seq_prompt_ids or [()] * len(outputs)
        sent = [0] * len(outputs)
        offsets = [0] * len(outputs)  # characters of each choice's tokens sent so far (completions' text_offset)
        done = False
        while not done:
            await gen.changed()
            done = gen.done  # read before writing: tokens may arrive while the write awaits
            parts = []
            for i, seq in enumerate(gen.seqs):
                out, reason = outputs[i], outputs[i].finish_reason
                if header.kind == "chat" and sent[i] == 0 and seq.generated > 0:
                    parts.append(header.role_chunk(i, prompts[i]))
                for k in range(sent[i], seq.generated):
                    token_id = out.token_ids[k]
                    first = None if k or header.kind == "chat" else prompts[i]  # a completion's first chunk
                    end = reason if k == len(out.words) - 1 else None
                    logprob = self._logprob(header, token_id, k)
                    parts.append(header.token_chunk(i, out.texts[k], end, token_id, first, logprob, offsets[i]))
                    offsets[i] += len(out.words[k])
                sent[i] = seq.generated
            if parts:
                await write(b"".join(parts))
        if gen.aborted:
            return  # the engine stopped: end the stream without [DONE], as a dying server would
        tail = header.usage_chunk(job.prompt_tokens, job.completion_tokens) if header.include_usage else b""
        await write(tail + DONE)

    @staticmethod
    def _logprob(header: ResponseHeader, token_id: int, position: int) -> TokenLogprob | None:
        if header.top_logprobs is None:
            return None
        (entry,) = token_logprobs((token_id,), first_position=position, top_n=header.top_logprobs)
        return entry

    def _submit(self, job: Job) -> Generation:
        prompts = job.seq_prompt_ids if self._caching and job.seq_prompt_ids else [None] * len(job.outputs)
        seqs = [
            Sequence(seq_id=self._runner.new_seq_id(), prompt_tokens=n, output_len=len(o.words), priority=job.priority,
                     token_ids=None if ids is None else ids + o.token_ids)
            for n, ids, o in zip(job.seq_prompt_tokens, prompts, job.outputs, strict=True)
        ]
        return self._runner.submit(seqs, [o.finish_reason for o in job.outputs])

    def _priority(self, req: ChatCompletionRequest | CompletionRequest) -> int:
        """The request's "priority" in the engine model's convention (lower runs first), read in the dialect's."""
        value = (req.model_extra or {}).get("priority", 0)
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidRequestError("priority must be an integer.", param="priority")
        # higher first (SGLang's default) is negated; lower first (vLLM's) is the model's, as is a dialect whose
        # server takes no priority (LMDeploy's: the gateway strips it, the simulator reads it lower first)
        return -value if facts_for(self._settings.dialect).priority.higher_first else value

    @staticmethod
    def _return_token_ids(req: ChatCompletionRequest | CompletionRequest) -> bool:
        """vLLM's ``return_token_ids`` (``bool | None``), read from the fields the protocol does not type."""
        value = (req.model_extra or {}).get("return_token_ids")
        if value is not None and not isinstance(value, bool):
            raise InvalidRequestError("return_token_ids must be a boolean.", param="return_token_ids")
        return bool(value)

    def _planned(self, cap: int, ignore_eos: bool) -> int:
        """The most tokens ``Sampler.plan`` draws for one choice of this cap."""
        return cap if ignore_eos else min(cap, self._settings.output_len_max)

    @staticmethod
    def _check_size(seqs: int, planned_tokens: int) -> None:
        if seqs > MAX_SEQS_PER_REQUEST:
            raise InvalidRequestError(f"A request may ask for at most {MAX_SEQS_PER_REQUEST} sequences (prompts "
                                      f"times n); this one asks for {seqs}.", param="n")
        if planned_tokens > MAX_PLANNED_TOKENS:
            raise InvalidRequestError(
                f"The simulator draws every token of a request up front, at most {MAX_PLANNED_TOKENS} in all; this one "
                f"may generate {planned_tokens} (choices times max_tokens). Ask for fewer choices or tokens.",
                param="max_tokens",
            )

    def _output_cap(self, prompt_tokens: int, requested: int | None) -> int:
        limit = self._settings.max_model_len
        if requested is None:
            if prompt_tokens >= limit:
                raise InvalidRequestError(
                    f"This model's maximum context length is {limit} tokens. However, your request has "
                    f"{prompt_tokens} input tokens. Please reduce the length of the input messages.",
                    code="context_length_exceeded",
                )
            return limit - prompt_tokens
        if prompt_tokens + requested > limit:
            raise InvalidRequestError(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{prompt_tokens + requested} tokens ({prompt_tokens} in the messages, {requested} in the "
                "completion). Please reduce the length of the messages or completion.",
                code="context_length_exceeded",
            )
        return requested

    def _header(self, kind: str, req: ChatCompletionRequest | CompletionRequest, include_usage: bool,
                top_logprobs: int | None) -> ResponseHeader:
        return ResponseHeader.new(kind, created=int(self._clock.wall()), model=req.model, include_usage=include_usage,
                                  return_token_ids=self._return_token_ids(req), top_logprobs=top_logprobs)

