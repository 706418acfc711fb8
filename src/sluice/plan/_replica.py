"""A simulated engine replica on virtual time: the simulator's own ``EngineModel``, stepped by one task.

The simulator's server wakes each request once per token (``EngineRunner``); the replay needs only when a request's
first token came and when it ended, so this driver steps the same model (``schedule``, sleep the step's duration on
the injected clock, ``commit``) and resolves one future per request when it finishes or is aborted. When nothing
else would happen before a step ends, time skips to its end without a trip through the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from dataclasses import dataclass, field

from sluice.config import SimSettings
from sluice.plan._virtual_time import VirtualClock
from sluice.sim import EngineModel, SeqState, Sequence


@dataclass(eq=False, slots=True)
class EngineRun:
    """One request's sequence in a replica: when it started, its first and last tokens, and its end."""

    seq: Sequence
    submitted_s: float
    done: asyncio.Future[None]
    first_token_s: float | None = None
    last_token_s: float | None = None
    aborted: bool = False
    tokens: int = field(default=0)  # generated so far


class SimReplica:
    def __init__(self, index: int, settings: SimSettings, clock: VirtualClock) -> None:
        self.index = index
        self.engine = EngineModel(settings)
        self._clock = clock
        self._ids = itertools.count(1)
        self._runs: dict[int, EngineRun] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def outstanding(self) -> int:
        return len(self._runs)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def submit(self, prompt_tokens: int, output_tokens: int, priority: int) -> EngineRun:
        """Queue one request (``priority`` in the engine's convention: lower first); raises the engine's
        ``EngineUnavailableError`` when its waiting queue is full."""
        seq = Sequence(seq_id=next(self._ids), prompt_tokens=prompt_tokens, output_len=output_tokens,
                       priority=priority)
        self.engine.submit([seq])
        run = EngineRun(seq, self._clock.now(), asyncio.get_running_loop().create_future())
        self._runs[seq.seq_id] = run
        self._wake.set()
        return run

    def abort(self, run: EngineRun) -> None:
        """End a request where it is (the gate preempted it): its future resolves, ``aborted`` set."""
        if self._runs.pop(run.seq.seq_id, None) is None:
            return
        self.engine.abort(run.seq)
        run.aborted = True
        if not run.done.done():
            run.done.set_result(None)

    async def _loop(self) -> None:
        engine = self.engine
        while True:
            if not engine.has_work():
                self._wake.clear()
                await self._wake.wait()
                continue
            step = engine.schedule()
            produced = [(seq, seq.generated + 1) for seq in step.outputs]
            if not produced and step.duration_s <= 0:
                raise RuntimeError(f"replica {self.index}: the engine cannot make progress (a request larger than "
                                   "its KV cache?)")
            if not self._clock.skip(step.duration_s):  # nothing else happens meanwhile: no trip through the loop
                await self._clock.sleep(step.duration_s)
            engine.commit(step)
            self._deliver(produced)

    def _deliver(self, produced: list[tuple[Sequence, int]]) -> None:
        now = self._clock.now()
        for seq, count in produced:
            run = self._runs.get(seq.seq_id)
            if run is None or count > seq.generated:
                continue  # aborted, or preempted before its token was produced
            if run.first_token_s is None:
                run.first_token_s = now
            run.last_token_s = now
            run.tokens = count
            if seq.state is SeqState.FINISHED:
                del self._runs[seq.seq_id]
                run.done.set_result(None)
