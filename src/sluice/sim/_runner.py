"""Drives the engine model in time: plan a step, sleep its duration on the injected clock, deliver its tokens.

One await per step (or per burst of very short steps, see ``min_sleep_s``), whatever the batch size; a
request's handler is woken once per delivery in which any of its sequences advanced (``Generation.changed()``)
and reads the new token counts off its sequences.

Input is checked before it is submitted (``_serving``), so the loop should never fail; if it does (a bug), it
does not die silently: every request in flight is aborted (its client gets a 503 or a cut stream), new ones are
refused with 503 ``engine_stopped``, and ``failure`` says why, which the server's ``/health`` reports (503).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from typing import Protocol

from sluice.clock import Clock
from sluice.errors import EngineUnavailableError
from sluice.sim._engine import EngineModel, SeqState, Sequence, Step
from sluice.sim._gpu import GpuActivity

MAX_BURST_STEPS = 64

log = logging.getLogger("sluice.sim")


class StepObserver(Protocol):
    """Receives per-token and per-request timings (the metrics implement it)."""

    def on_first_token(self, ttft_s: float) -> None: ...

    def on_next_token(self, itl_s: float) -> None: ...

    def on_finished(self, finish_reason: str, e2e_s: float) -> None: ...


class Generation:
    """The sequences of one request (one per choice), and a way to wait until any of them advances."""

    def __init__(self, seqs: list[Sequence]) -> None:
        self.seqs = seqs
        self._changed = False
        self._waiter: asyncio.Future[None] | None = None

    @property
    def done(self) -> bool:
        return all(seq.done for seq in self.seqs)

    @property
    def aborted(self) -> bool:
        return any(seq.state is SeqState.ABORTED for seq in self.seqs)

    async def changed(self) -> None:
        """Return once some sequence advanced since the last call (at once if one already has)."""
        if not self._changed:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        self._changed = False

    def _notify(self) -> None:
        self._changed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class EngineRunner:
    def __init__(
        self, engine: EngineModel, clock: Clock, observer: StepObserver | None = None, *, min_sleep_s: float = 0.0,
        gpu: GpuActivity | None = None,
    ) -> None:
        self.engine = engine
        self._gpu = gpu  # told when the (simulated) GPU runs a step
        self._clock = clock
        self._min_sleep_s = min_sleep_s
        self._observer = observer
        self._ids = itertools.count(1)
        self._owners: dict[int, tuple[Generation, str]] = {}  # seq_id -> (its request, its finish reason)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.failure: str | None = None  # why the engine loop stopped, if it failed

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="sluice-sim-engine")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for gen, _ in list(self._owners.values()):
            self.abort(gen)

    def new_seq_id(self) -> int:
        return next(self._ids)

    def submit(self, seqs: list[Sequence], finish_reasons: list[str]) -> Generation:
        """Queue one request's sequences; raises ``EngineUnavailableError`` when the waiting queue is full, or
        when the engine loop has failed."""
        if self.failure is not None:
            raise EngineUnavailableError(f"The engine loop stopped: {self.failure}", reason="engine_stopped")
        now = self._clock.now()
        for seq in seqs:
            seq.arrival_s = now
        self.engine.submit(seqs)
        gen = Generation(seqs)
        for seq, reason in zip(seqs, finish_reasons, strict=True):
            self._owners[seq.seq_id] = (gen, reason)
        self._wake.set()
        return gen

    def abort(self, gen: Generation) -> None:
        for seq in gen.seqs:
            self.engine.abort(seq)
            self._forget(seq)
        gen._notify()

    async def _loop(self) -> None:
        try:
            while True:
                if not self.engine.has_work():
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                await self._burst()
        except Exception as exc:  # a bug: say so, and end every request rather than leave them hanging
            self.failure = f"{type(exc).__name__}: {exc}"
            log.exception("sim engine loop failed; every request in flight is aborted and /health answers 503")
            self._abandon_all()

    def _abandon_all(self) -> None:
        """End every request in flight as aborted, without asking the engine model (its state is suspect)."""
        for gen, _ in list(self._owners.values()):
            for seq in gen.seqs:
                if not seq.done:
                    seq.state = SeqState.ABORTED
                self._forget(seq)
            gen._notify()

    async def _burst(self) -> None:
        """Run steps back to back until their durations add up to ``min_sleep_s``, sleep once, then deliver.

        With ``min_sleep_s = 0`` every step is slept on its own. A larger value only matters for steps shorter
        than it (a very high ``speed``): it saves an await and a write per token, at the cost of delivering
        those tokens together.
        """
        engine = self.engine
        advanced: list[tuple[Sequence, int]] = []  # (sequence, its token count after that step)
        debt_s = 0.0
        pending: Step | None = None  # the step whose outcome waits for the sleep
        for _ in range(MAX_BURST_STEPS):
            step = engine.schedule()
            debt_s += step.duration_s
            advanced.extend((seq, seq.generated + 1) for seq in step.outputs)
            if debt_s >= self._min_sleep_s:
                pending = step
                break
            engine.commit(step)
            if not engine.has_work():
                break
        if self._gpu is not None:
            self._gpu.busy(self._clock.now(), debt_s)
        await self._clock.sleep(debt_s)
        if pending is not None:
            engine.commit(pending)
        self._deliver(advanced)

    def _deliver(self, advanced: list[tuple[Sequence, int]]) -> None:
        now = self._clock.now()
        obs = self._observer
        woken: set[int] = set()
        for seq, count in advanced:
            owner = self._owners.get(seq.seq_id)
            if owner is None or count > seq.generated:
                continue  # aborted, or preempted before its token was produced
            gen, reason = owner
            if obs is not None:
                if seq.last_token_s is None:
                    obs.on_first_token(now - seq.arrival_s)
                else:
                    obs.on_next_token(now - seq.last_token_s)
            seq.last_token_s = now
            if count == seq.output_len:
                if obs is not None:
                    obs.on_finished(reason, now - seq.arrival_s)
                self._forget(seq)
            if id(gen) not in woken:
                woken.add(id(gen))
                gen._notify()

    def _forget(self, seq: Sequence) -> None:
        self._owners.pop(seq.seq_id, None)
