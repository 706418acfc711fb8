"""The engine model: continuous batching over a paged KV cache, pure and synchronous.

One ``EngineModel`` plays the part of vLLM's scheduler (and, where the dialect says so, of SGLang's priority
preemption). Time does not pass here: ``schedule()`` plans one forward step (and says how long it would take on the
GPU), ``commit(step)`` applies its outcome (one new token for every sequence that was in the step). The async runner
sleeps between the two.

Rules, as vLLM (v1 scheduler, recompute preemption) applies them:

- at most ``max_num_seqs`` sequences run; the rest wait in a FIFO queue;
- a sequence holds ``ceil(tokens / block_size)`` KV blocks, where ``tokens`` is prompt + generated; a step
  reserves room for the token it is about to produce;
- each step, running sequences decode one token each (oldest first; but see ``mixed_batches`` below); when a
  decode needs a block and none is free, the most recently admitted running sequence is preempted (under the
  priority policy: the least important, newest among equals): its blocks are freed and it goes back to the
  waiting queue, keeping its generated tokens (it re-prefills prompt + generated later, less what the prefix
  cache, below, still holds of it);
- the priority policy orders the waiting queue by (priority, arrival), lower first (``Sequence.priority`` is
  always in this convention; ``_serving`` turns an SGLang request's higher-first value around); unless
  ``priority_preemption`` is on (below), like vLLM's v1 scheduler it never preempts a running sequence to seat a
  more important one: that one waits for a seat;
- waiting sequences are admitted in order while seats and blocks allow (not in a step whose decodes overflowed
  the KV cache); their prefill produces their first token in the same step. When steps do not mix, admission is
  tried first, and a step that admits anything is prefill only: the running sequences do not decode (nor take
  blocks) in it; a step that admits nothing decodes them;
- step time = (prefill_s_per_token * prefilled tokens + [decode_base_s + decode_per_seq_s * decoding seqs])
  / speed, the bracket only when something decodes.

Priority preemption for a seat (``priority_preemption``, the sglang dialect's default under the priority policy),
as SGLang does it (sgl-project/sglang, python/sglang/srt/):

- server_args.py: ``--enable-priority-scheduling`` orders the waiting queue by priority, higher first unless
  ``--schedule-low-priority-values-first``; preemption comes with it unless ``--disable-priority-preemption``
  (``Scheduler.enable_priority_preemption`` in managers/scheduler.py); ``--priority-scheduling-preemption-threshold``,
  default 10: "minimum difference in priorities for an incoming request to have to preempt running request(s)".
- managers/scheduler.py, ``Scheduler._get_new_batch_prefill_raw``: the waiting queue, sorted by (priority, time it
  entered the queue) (schedule_policy.py, ``SchedulePolicy._sort_by_priority_and_fcfs``), is walked in order;
  when the seats are taken (``len(can_run_list) >= get_num_allocatable_reqs(running_bs)``: ``max_running_requests``)
  it calls ``PrefillAdder.preempt_to_schedule(req)`` and stops at the first request that cannot preempt. Short
  memory alone (``add_one_req`` answering ``NO_TOKEN``) stops the walk without preempting: preemption is for a seat.
- managers/schedule_policy.py, ``PrefillAdder.preempt_to_schedule``: the running requests, least important first
  and among equals the one that entered the waiting queue last, are taken while each is less important than the
  newcomer by strictly more than the threshold (the first that is not ends the search), until the newcomer's
  tokens fit the KV budget with theirs released; if none qualifies or they do not free enough, nothing is
  preempted. The victims are released and put back in the waiting queue (``_add_request_to_queue``, which
  stamps a new queue-entry time: they wait behind the requests of their priority that were already waiting).
- their KV: ``ScheduleBatch.release_req`` calls ``release_kv_cache(req, tree_cache, is_insert=False)``
  (mem_cache/common.py; ``RadixCache.cache_finished_req`` in mem_cache/radix_cache.py): what the radix tree
  already holds of the request stays there, unlocked (evictable, LRU), the rest is freed. The tree holds what
  ``cache_unfinished_req`` inserted after its last prefill (``process_batch_result_prefill``: "This updates
  radix so others can match"), i.e. its prompt (and its earlier output, after a re-prefill); tokens decoded
  since are lost. Re-admitted, ``match_prefix`` finds that prefix unless ``RadixCache.evict`` took it, and only
  the rest is prefilled again. Evictable tree tokens count as free in ``sglang:token_usage``.

The rule modelled here: a sequence preempted for a seat gives its blocks back through the prefix cache (below):
unless prefix caching is off, what its last prefill wrote stays cached, free but evictable, until the room is
needed; re-admitted while it is there, it prefills only the rest and takes only the blocks it lacks. Its victims
are chosen as SGLang chooses them, counting the blocks they hold (the simulator has no reservation for future
tokens, which SGLang's budget counts instead). It goes back to the queue with a new entry stamp. Not modelled:
SGLang's retraction when a decode finds the KV cache full (``ScheduleBatch.retract_decode``, by default the request
with the fewest output tokens, not by priority): every dialect keeps vLLM's rule above for the victim. Both kinds
count in ``num_preemptions``.

Automatic prefix caching (``prefix_caching``; unset: on in the vllm and sglang dialects, as vLLM V1 and SGLang's
radix cache are by default, off in lmdeploy, whose ``enable_prefix_caching`` defaults to false). The blocks and
their order are vLLM's (``_prefix_cache`` cites its sources):

- a sequence's tokens are its ``token_ids`` (prompt, then what it generates); each full block of them has a chained
  hash; a block is *computed* once a step has written its KV (``computed_tokens``: after a step, every token but
  the last generated one);
- when a sequence finishes, is aborted (its client left) or is preempted, its blocks become free; those of its
  full computed blocks stay cached (free but evictable, counted free in ``kv_usage`` as vLLM and SGLang count
  them), its last block first in line for eviction. Preempted in the sglang dialect, only what its last prefill
  wrote is kept: the radix tree gets a running request's decoded tokens only at its next prefill or when it
  finishes (``cache_unfinished_req`` after a prefill, ``release_kv_cache(..., is_insert=False)`` on preemption);
- admitting a sequence, the longest run of its first blocks found in the cache is taken back (at most
  ``total_tokens - 1`` tokens: the last token is always computed, vLLM's ``max_cache_hit_length``); it prefills
  only the rest and takes only the blocks it lacks, from empty blocks first, then by evicting the least recently
  freed cached block;
- a block in use by a running sequence is not matched by another (vLLM shares it, SGLang's tree too): only free
  blocks are found, and two sequences running with the same prefix each hold a copy (when both are freed, the
  second copy becomes an empty block). Every dialect matches whole blocks (SGLang's radix tree matches token by
  token with its default page size of 1);
- counters, as vLLM's ``PrefixCacheStats`` (vllm/v1/metrics/stats.py) counts at admission: tokens queried and hit,
  for sequences never preempted (a re-admission counts apart in vLLM and is not exported); SGLang's gauge: the
  hit rate of the last prefill step (``cache_hit_rate`` in managers/scheduler_metrics_mixin.py; SGLang also sets it
  to 0 when it logs decode statistics, not modelled).

Without prefix caching, freed blocks keep nothing and every admission prefills the whole sequence (SGLang's
``--disable-radix-cache`` frees a preempted request's KV too).

Prefill and decode in separate steps (``mixed_batches`` unset in the sglang dialect, or false), as SGLang does by
default (managers/scheduler.py):

- ``Scheduler.get_next_batch_to_run`` first asks ``get_new_batch_prefill`` (``_get_new_batch_prefill_raw``) for an
  EXTEND batch from the waiting queue; if it gets one, that is the forward pass ("Run prefill first if possible"),
  and only otherwise does ``update_running_batch`` run one decode step of the running batch (retracting if the
  KV cache is short). A prefill batch is thus preferred whenever one can be formed; it is not formed when no seat
  is free (``batch_is_full``; with priority preemption, unless a seat is freed) or the first request in line does
  not fit. Off by default and not modelled: ``--prefill-decode-interval`` (0; N decode rounds after each prefill,
  ``_should_defer_prefill``) and the prefill delayers.
- The running requests join an EXTEND batch only when ``is_mixed_chunk`` (``chunked_prefill_size`` set and
  ``--enable-mixed-chunk``, default false in server_args.py): ``new_batch.mix_with_running(running_batch)``;
  ``mixed_batches: true`` models that.
- Chunked prefill (``--chunked-prefill-size``) splits a request only when its uncached input exceeds the chunk
  budget left in the batch (``PrefillAdder.add_one_req``, schedule_policy.py); prompts that fit are prefilled whole.
  The budget also caps the prompt tokens of one prefill batch: not modelled (nor vLLM's ``max_num_batched_tokens``).

LMDeploy's PyTorch engine does not mix either (``InputsMakerAsync`` builds a forward as prefill or as decode, with
``prefill_interval`` decode rounds between prefills); TurboMind was not checked, and the lmdeploy dialect mixes.
"""

from __future__ import annotations

import enum
import itertools
from collections import deque
from dataclasses import dataclass, field

from sluice.config import SimSettings
from sluice.dialects import facts_for
from sluice.errors import EngineUnavailableError
from sluice.sim._prefix_cache import PrefixCache, block_hashes


class SeqState(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"
    ABORTED = "aborted"


@dataclass(eq=False)
class Sequence:
    """One sequence in the engine: one choice of one request.

    ``output_len`` is how many tokens it will generate in all (decided before it is submitted); ``token_ids``,
    when given, are its prompt's ids followed by the ``output_len`` ids it will generate: what the prefix cache
    matches (without them, its content is its own). ``arrival_s`` and ``last_token_s`` are stamped by the runner,
    for latency metrics; ``queued_at`` by the engine, each time it enters the waiting queue as a newcomer.
    """

    seq_id: int
    prompt_tokens: int
    output_len: int
    priority: int = 0  # under the priority policy: lower runs first (vLLM's convention; SGLang's is turned around)
    token_ids: tuple[int, ...] | None = None
    generated: int = 0
    blocks: int = 0
    state: SeqState = SeqState.WAITING
    num_preemptions: int = 0
    prefilled_once: bool = False  # its prompt is counted in prompt_tokens_total once, not on re-prefills
    queued_at: int = 0  # orders it among equal priorities (and picks the newest victim)
    computed_tokens: int = 0  # tokens whose KV a step has written
    prefilled_tokens: int = 0  # its tokens at its last prefill: what SGLang's radix tree holds of it while it runs
    block_hashes: list[int] = field(default_factory=list, repr=False)  # of its full blocks, computed as needed
    arrival_s: float = 0.0
    last_token_s: float | None = None

    def __post_init__(self) -> None:
        if self.prompt_tokens < 0 or self.output_len < 1:
            raise ValueError("a sequence has a prompt of 0 or more tokens and generates at least one")
        if self.token_ids is not None:
            self.token_ids = tuple(self.token_ids)
            if len(self.token_ids) != self.prompt_tokens + self.output_len:
                raise ValueError("token_ids must hold the prompt's ids and the output_len ids it will generate")

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
    prefill_tokens: int = 0  # computed in this step
    cached_tokens: int = 0  # the admitted sequences' tokens found in the prefix cache (not computed)
    preempted: list[Sequence] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def outputs(self) -> tuple[Sequence, ...]:
        """The sequences that produce a token, in the order the engine hands them out: the newly prefilled first.
        SGLang's mixed batch is the new requests followed by the running ones (``ScheduleBatch.mix_with_running``
        appends the running batch), and its results are processed in batch order; vLLM hands out its persistent
        batch's order, where a new request takes whichever slot is free. The order decides whose answer the
        server writes first."""
        return (*self.prefill, *self.decode)


class EngineModel:
    def __init__(self, settings: SimSettings) -> None:
        self.settings = settings
        self.running: list[Sequence] = []  # in admission order: the last one is preempted first
        self.waiting: deque[Sequence] = deque()
        self.free_blocks = settings.num_kv_blocks  # held by no running sequence: empty, or cached (evictable)
        self.cache = PrefixCache()  # which of the free blocks hold a known prefix
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.num_preemptions = 0
        self.prefix_cache_queries_total = 0  # tokens looked up in the prefix cache (sequences never preempted)
        self.prefix_cache_hits_total = 0  # of which found there
        self.last_cache_hit_rate = 0.0  # of the last step that admitted anything: cached / (cached + prefilled)
        self._stamps = itertools.count()
        traits = facts_for(settings.dialect).scheduler  # the dialect's defaults, where the settings say none
        preempts = settings.priority_preemption
        self._seat_preemption = (traits.seat_preemption if preempts is None else preempts) and self._priority_policy()
        mixed = settings.mixed_batches
        self._mixed = traits.mixed_batches if mixed is None else mixed
        caching = settings.prefix_caching
        self._caching = traits.prefix_caching if caching is None else caching
        self._radix = traits.radix_cache

    # -- state, for metrics and tests -------------------------------------------------------------------

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def prefix_caching(self) -> bool:
        """Whether this engine caches prefixes (the setting, or the dialect's default)."""
        return self._caching

    @property
    def cached_blocks(self) -> int:
        """Free blocks that still hold a cached prefix (evictable)."""
        return len(self.cache)

    @property
    def used_blocks(self) -> int:
        """Blocks held by running sequences (a cached block counts as free, as vLLM and SGLang count it)."""
        return self.settings.num_kv_blocks - self.free_blocks

    @property
    def kv_usage(self) -> float:
        """Fraction of KV blocks in use, 0..1."""
        return self.used_blocks / self.settings.num_kv_blocks

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.settings.block_size)

    def cached_prefix_blocks(self, seq: Sequence) -> int:
        """How many of ``seq``'s first blocks the prefix cache holds now (what admitting it would reuse)."""
        if not self._caching:
            return 0
        most = (seq.total_tokens - 1) // self.settings.block_size  # its last token is always computed
        return self.cache.match(block_hashes(seq, most, self.settings.block_size))

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
            seq.queued_at = next(self._stamps)
            self._enqueue(seq)

    def abort(self, seq: Sequence) -> None:
        """Remove a sequence wherever it is and free its blocks (no-op once it is done)."""
        if seq.state is SeqState.RUNNING:
            self.running.remove(seq)
            self._release(seq, seq.computed_tokens)
        elif seq.state is SeqState.WAITING:
            self.waiting.remove(seq)  # it holds no block; what the cache keeps of it stays there
        else:
            return
        seq.state = SeqState.ABORTED

    # -- stepping ---------------------------------------------------------------------------------------

    def schedule(self) -> Step:
        step = Step()
        if self._mixed:
            self._schedule_decodes(step)
            if not step.preempted:  # the KV cache did not overflow this step
                self._admit(step)
        else:
            self._admit(step)  # a prefill step if anything can be admitted, else a decode step
            if not step.prefill:
                self._schedule_decodes(step)
        step.duration_s = self._duration_s(step)
        return step

    def commit(self, step: Step) -> list[Sequence]:
        """Apply a step's outcome: one token per sequence still running. Returns the sequences that advanced."""
        advanced: list[Sequence] = []
        for seq in step.prefill:
            if seq.state is SeqState.RUNNING and not seq.prefilled_once:
                seq.prefilled_once = True
                self.prompt_tokens_total += seq.prompt_tokens
        for seq in step.outputs:
            if seq.state is not SeqState.RUNNING:
                continue  # aborted or preempted while the step ran
            seq.computed_tokens = seq.total_tokens  # the step wrote their KV; the new token's is not written yet
            seq.generated += 1
            advanced.append(seq)
            if seq.generated >= seq.output_len:
                self.running.remove(seq)
                self._release(seq, seq.computed_tokens)
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
        while self.waiting:
            seq = self.waiting[0]
            need = self.blocks_for(seq.total_tokens + 1)  # cached blocks included: they are free blocks
            if len(self.running) >= self.settings.max_num_seqs and not self._preempt_for_seat(seq, need, step):
                break
            if need > self.free_blocks:
                break  # short of memory with a seat free: it waits (SGLang preempts for a seat only)
            self.waiting.popleft()
            hit = self.cached_prefix_blocks(seq)
            self.cache.take(block_hashes(seq, hit, self.settings.block_size))
            self.free_blocks -= hit
            seq.blocks = hit
            self._take(seq, need - hit)
            seq.state = SeqState.RUNNING
            self.running.append(seq)
            step.prefill.append(seq)
            cached = hit * self.settings.block_size
            step.prefill_tokens += seq.total_tokens - cached
            step.cached_tokens += cached
            seq.computed_tokens = cached
            seq.prefilled_tokens = seq.total_tokens
            if self._caching and not seq.num_preemptions:
                self.prefix_cache_queries_total += seq.total_tokens
                self.prefix_cache_hits_total += cached
        if looked_up := step.cached_tokens + step.prefill_tokens:  # zero only for sequences of no token at all
            self.last_cache_hit_rate = step.cached_tokens / looked_up

    def _preempt_for_seat(self, seq: Sequence, need: int, step: Step) -> bool:
        """SGLang's ``preempt_to_schedule``: free a seat (and enough blocks) for ``seq`` by preempting running
        sequences less important than it by more than the threshold, least important and newest first; all
        or none. Sequences admitted in this step are not candidates."""
        if not self._seat_preemption:
            return False
        victims: list[Sequence] = []
        room = self.free_blocks
        threshold = self.settings.priority_preemption_threshold
        for candidate in sorted((s for s in self.running if s not in step.prefill), key=self._order, reverse=True):
            if candidate.priority - seq.priority <= threshold:  # lower runs first: its gap below the newcomer
                break
            victims.append(candidate)
            room += candidate.blocks
            if room >= need:
                break
        if not victims or room < need:
            return False
        for victim in victims:
            self._preempt(victim, step, for_seat=True)
        return True

    def _priority_policy(self) -> bool:
        return self.settings.scheduling_policy == "priority"

    @staticmethod
    def _order(seq: Sequence) -> tuple[int, int]:
        """The priority policy's order: the waiting queue ascending, victims from the top."""
        return seq.priority, seq.queued_at

    def _enqueue(self, seq: Sequence, *, front: bool = False) -> None:
        """FCFS: at the back (a preempted sequence at the front). Priority: by (priority, queue stamp)."""
        if not self._priority_policy():
            self.waiting.appendleft(seq) if front else self.waiting.append(seq)
            return
        key = self._order(seq)
        at = next((i for i, w in enumerate(self.waiting) if self._order(w) > key), len(self.waiting))
        self.waiting.insert(at, seq)

    def _victim(self) -> Sequence:
        """Who gives way when the KV cache is full: the newest running sequence, or under the priority policy the
        least important (newest among equals), as vLLM's scheduler picks it."""
        if self._priority_policy():
            return max(self.running, key=self._order)
        return self.running[-1]

    def _preempt(self, seq: Sequence, step: Step, *, for_seat: bool = False) -> None:
        """Back to the waiting queue, its blocks freed through the prefix cache. For a seat it is queued as a
        newcomer, as SGLang does; for KV room it keeps its place, as vLLM does."""
        self.running.remove(seq)
        if seq in step.decode:
            step.decode.remove(seq)
        if for_seat:
            seq.queued_at = next(self._stamps)
        kept = min(seq.computed_tokens, seq.prefilled_tokens) if self._radix else seq.computed_tokens
        self._release(seq, kept)
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
        """Give ``seq`` that many free blocks: empty ones first, then the least recently freed cached ones."""
        empty = self.free_blocks - len(self.cache)
        if blocks > empty:
            self.cache.evict(blocks - empty)
        self.free_blocks -= blocks
        seq.blocks += blocks

    def _release(self, seq: Sequence, computed_tokens: int) -> None:
        """Free all of ``seq``'s blocks; those full of computed tokens keep their content in the prefix cache."""
        if self._caching:
            keep = min(seq.blocks, computed_tokens // self.settings.block_size)
            self.cache.put(block_hashes(seq, keep, self.settings.block_size))
        self.free_blocks += seq.blocks
        seq.blocks = 0
