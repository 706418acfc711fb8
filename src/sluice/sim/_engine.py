"""The engine model: continuous batching over a paged KV cache, pure and synchronous.

One ``EngineModel`` plays the part of vLLM's scheduler. Time does not pass here: ``schedule()`` plans one
forward step (and says how long it would take on the GPU), ``commit(step)`` applies its outcome (one new token
for every sequence that was in the step). The async runner sleeps between the two.

Rules, as vLLM (v1 scheduler, recompute preemption) applies them:

- at most ``max_num_seqs`` sequences run; the rest wait in a FIFO queue;
- a sequence holds ``ceil(tokens / block_size)`` KV blocks, where ``tokens`` is prompt + generated; a step
  reserves room for the token it is about to produce;
- each step, running sequences decode one token each (oldest first); when a decode needs a block and none is
  free, the most recently admitted running sequence is preempted (under the priority policy: the least important,
  newest among equals): its blocks are freed and it goes back to the waiting queue, keeping its generated
  tokens (it re-prefills prompt + generated later);
- the priority policy orders the waiting queue by (priority, arrival), lower first; like vLLM's v1 scheduler it
  never preempts a running sequence to seat a more important one: that one waits for a seat;
- waiting sequences are admitted in order while seats and blocks allow (not in a step that preempted);
  their prefill produces their first token in the same step;
- step time = (prefill_s_per_token * prefilled tokens + [decode_base_s + decode_per_seq_s * decoding seqs])
  / speed, the bracket only when something decodes.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

from sluice.config import SimSettings
from sluice.errors import EngineUnavailableError


class SeqState(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"
    ABORTED = "aborted"


@dataclass(eq=False)
class Sequence:
    """One sequence in the engine: one choice of one request.

    ``output_len`` is how many tokens it will generate in all (decided before it is submitted).
    ``arrival_s`` and ``last_token_s`` are stamped by the runner, for latency metrics.
    """

    seq_id: int
    prompt_tokens: int
    output_len: int
    priority: int = 0  # under the priority policy: lower runs first (vLLM's convention)
    generated: int = 0
    blocks: int = 0
    state: SeqState = SeqState.WAITING
    num_preemptions: int = 0
    prefilled_once: bool = False  # its prompt is counted in prompt_tokens_total once, not on re-prefills
    arrival_s: float = 0.0
    last_token_s: float | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.generated

    @property
    def done(self) -> bool:
        return self.state in (SeqState.FINISHED, SeqState.ABORTED)


@dataclass
class Step:
    """One planned forward step: who decodes, who is prefilled (and how many tokens), and its duration."""

    decode: list[Sequence] = field(default_factory=list)
    prefill: list[Sequence] = field(default_factory=list)
    prefill_tokens: int = 0
    preempted: list[Sequence] = field(default_factory=list)
    duration_s: float = 0.0


class EngineModel:
    def __init__(self, settings: SimSettings) -> None:
        self.settings = settings
        self.running: list[Sequence] = []  # in admission order: the last one is preempted first
        self.waiting: deque[Sequence] = deque()
        self.free_blocks = settings.num_kv_blocks
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.num_preemptions = 0

    # -- state, for metrics and tests -------------------------------------------------------------------

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def used_blocks(self) -> int:
        return self.settings.num_kv_blocks - self.free_blocks

    @property
    def kv_usage(self) -> float:
        """Fraction of KV blocks in use, 0..1."""
        return self.used_blocks / self.settings.num_kv_blocks

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.settings.block_size)

    # -- requests ---------------------------------------------------------------------------------------

    def submit(self, seqs: list[Sequence]) -> None:
        """Queue sequences (all of one request, all or none); refuse when the waiting queue is full.

        With ``max_waiting`` set, a request is refused when that many sequences already wait and there is no
        free seat for it either (sequences that will be admitted at the next step do not count as queued).
        """
        cap = self.settings.max_waiting
        if cap is not None:
            queued_after = len(self.running) + len(self.waiting) + len(seqs) - self.settings.max_num_seqs
            if queued_after > cap:
                raise EngineUnavailableError(
                    f"The server is overloaded: {len(self.waiting)} requests are waiting (max_waiting={cap}).",
                    code="queue_full",
                    reason="engine_queue_full",
                )
        for seq in seqs:
            seq.state = SeqState.WAITING
            self._enqueue(seq)

    def abort(self, seq: Sequence) -> None:
        """Remove a sequence wherever it is and free its blocks (no-op once it is done)."""
        if seq.state is SeqState.RUNNING:
            self.running.remove(seq)
        elif seq.state is SeqState.WAITING:
            self.waiting.remove(seq)
        else:
            return
        self._free(seq)
        seq.state = SeqState.ABORTED

    # -- stepping ---------------------------------------------------------------------------------------

    def schedule(self) -> Step:
        step = Step()
        self._schedule_decodes(step)
        if not step.preempted:  # the KV cache did not overflow this step
            self._admit(step)
        step.duration_s = self._duration_s(step)
        return step

    def commit(self, step: Step) -> list[Sequence]:
        """Apply a step's outcome: one token per sequence still running. Returns the sequences that advanced."""
        advanced: list[Sequence] = []
        for seq in step.prefill:
            if seq.state is SeqState.RUNNING and not seq.prefilled_once:
                seq.prefilled_once = True
                self.prompt_tokens_total += seq.prompt_tokens
        for group in (step.decode, step.prefill):
            for seq in group:
                if seq.state is not SeqState.RUNNING:
                    continue  # aborted or preempted while the step ran
                seq.generated += 1
                advanced.append(seq)
                if seq.generated >= seq.output_len:
                    self.running.remove(seq)
                    self._free(seq)
                    seq.state = SeqState.FINISHED
        self.generation_tokens_total += len(advanced)
        return advanced

    def _schedule_decodes(self, step: Step) -> None:
        i = 0
        while i < len(self.running):
            seq = self.running[i]
            need = self.blocks_for(seq.total_tokens + 1) - seq.blocks
            while need > self.free_blocks:
                victim = self._victim()
                if self.running.index(victim) < i:
                    i -= 1  # already scheduled in this step: it leaves the step
                self._preempt(victim, step)
                if victim is seq:
                    break
            if seq.state is not SeqState.RUNNING:
                continue  # it gave way itself: ``i`` is now the next one
            self._take(seq, need)
            step.decode.append(seq)
            i += 1

    def _admit(self, step: Step) -> None:
        while self.waiting and len(self.running) < self.settings.max_num_seqs:
            seq = self.waiting[0]
            need = self.blocks_for(seq.total_tokens + 1)
            if need > self.free_blocks:
                break
            self.waiting.popleft()
            self._take(seq, need)
            seq.state = SeqState.RUNNING
            self.running.append(seq)
            step.prefill.append(seq)
            step.prefill_tokens += seq.total_tokens

    def _priority_policy(self) -> bool:
        return self.settings.scheduling_policy == "priority"

    def _enqueue(self, seq: Sequence, *, front: bool = False) -> None:
        """FCFS: at the back (a preempted sequence at the front). Priority: by (priority, arrival)."""
        if not self._priority_policy():
            self.waiting.appendleft(seq) if front else self.waiting.append(seq)
            return
        key = (seq.priority, seq.seq_id)
        at = next((i for i, w in enumerate(self.waiting) if (w.priority, w.seq_id) > key), len(self.waiting))
        self.waiting.insert(at, seq)

    def _victim(self) -> Sequence:
        """Who gives way when the KV cache is full: the newest running sequence, or under the priority policy the
        least important (newest among equals), as vLLM's scheduler picks it."""
        if self._priority_policy():
            return max(self.running, key=lambda s: (s.priority, s.seq_id))
        return self.running[-1]

    def _preempt(self, seq: Sequence, step: Step) -> None:
        self.running.remove(seq)
        if seq in step.decode:
            step.decode.remove(seq)
        self._free(seq)
        seq.state = SeqState.WAITING
        seq.num_preemptions += 1
        self._enqueue(seq, front=True)
        self.num_preemptions += 1
        step.preempted.append(seq)

    def _duration_s(self, step: Step) -> float:
        s = self.settings
        t = s.prefill_s_per_token * step.prefill_tokens
        if step.decode:
            t += s.decode_base_s + s.decode_per_seq_s * len(step.decode)
        return t / s.speed

    def _take(self, seq: Sequence, blocks: int) -> None:
        self.free_blocks -= blocks
        seq.blocks += blocks

    def _free(self, seq: Sequence) -> None:
        self.free_blocks += seq.blocks
        seq.blocks = 0
