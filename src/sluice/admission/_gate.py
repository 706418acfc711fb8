"""The gate in front of one engine pool: a window of requests (and tokens) in flight, and the fair queue.

A request is dispatched at once when nothing waits and the window has room; otherwise it waits in the queue until
the window opens for it (highest band first, fairest tenant within a band), its deadline passes, its client leaves,
or a more important request displaces it. The controller's tick (on the injected clock) senses saturation, moves
protection mode, expires deadlines and re-opens the gate when the engines drain.

Preemption (``preempt_gap``): an engine like vLLM never takes a running request's seat for a more important one,
so a top-tier request arriving when lower tiers hold the whole window would wait for one of them to finish. With a
gap set, the gate takes the place back itself: the least important running request (newest first among equals,
as vLLM picks its victims) that is at least ``preempt_gap`` below the head of the queue, and that is armed
(``arm``: a stream that can be resumed, from the moment it is sent) is stopped; its place goes to the queue's
head, and the rest of it (``resume``) waits at the head of its own band. One waiting request preempts at most one
running request. What the holder of a permit sees of this is ``Permit.stopped``, ``arm``/``disarm`` and ``resume``:
the ticket inside a permit is the gate's own.

SLO-aware admission (``Ticket.ttft_slo_s``, the tier's TTFT target): a request that cannot be dispatched at once is
refused on arrival (503 ``slo_unattainable``, ``retry-after-ms`` the predicted time past its target) when the
gate predicts its first token would come after the target (admission/_slo.py: the queue ahead of it at the rate
places free up, plus the engine's own TTFT as learnt from released requests). A request dispatched at once is
never refused for it: nothing the gate holds back would make it faster, and its timing keeps the prediction fresh.
A request let in to wait leaves the queue (503 ``queue_timeout``) once its first token could no longer make the
target (its arrival + target - the engine's predicted TTFT): its place goes to one that still can.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from sluice.admission._fair_queue import FairQueue
from sluice.admission._protection import ProtectionMode
from sluice.admission._saturation import SaturationDetector
from sluice.admission._slo import TtftPredictor
from sluice.admission._ticket import Outcome, Refusal, Ticket
from sluice.admission._window import Limit, Sample
from sluice.clock import Clock
from sluice.errors import OverloadedError, SloUnattainableError


class AdmissionObserver(Protocol):
    def admission_state(self, pool: str, *, in_flight: int, limit: int, queued: Mapping[int, int],
                        saturation: float, protected: bool) -> None: ...

    def admission_waited(self, pool: str, priority: int, seconds: float) -> None: ...

    def admission_preempted(self, pool: str, priority: int) -> None: ...


@dataclass(frozen=True, slots=True)
class GateSettings:
    max_tokens_in_flight: int | None = None
    queue_max_requests: int = 1000
    queue_max_tokens: int | None = None
    reserve_top_share: float = 0.2  # of the window, kept for the top band while protection is engaged
    reserve_always: bool = False  # keep it whatever protection mode says
    top_priority: int = 0
    preempt_gap: int | None = None  # a waiting request this much more important takes a running one's place
    tick_s: float = 0.05
    retry_after_s: float = 1.0


@dataclass(slots=True)
class Permit:
    """A place in the pool's window, held until the gate's ``release`` (or ``resume``) settles it."""

    ticket: Ticket
    in_flight_at_admit: int
    waited_s: float
    released: bool = False

    @property
    def stopped(self) -> bool:
        """Whether the gate stopped this request (preempted it for a more important one)."""
        return self.ticket.preempted


class Gate:
    def __init__(self, name: str, limit: Limit, clock: Clock, settings: GateSettings, *,
                 saturation: SaturationDetector | None = None, protection: ProtectionMode | None = None,
                 observer: AdmissionObserver | None = None, output_weight: float = 2.0) -> None:
        self.name = name
        self.limit = limit
        self._clock = clock
        self._settings = settings
        self._saturation = saturation
        self.protection = protection
        self._observer = observer
        self.queue = FairQueue(output_weight=output_weight)
        self.in_flight = 0
        self.tokens_in_flight = 0
        self.last_saturation = 0.0
        self._recent: deque[tuple[float, int]] = deque()  # (admitted at, tokens): not yet in the engines' metrics
        self._recent_tokens = 0  # their sum (hundreds of them between two readings, at thousands of requests/s)
        self._running: set[Ticket] = set()  # dispatched, not yet released
        self._preempting = 0  # running requests told to stop, not yet released
        self._seq = itertools.count(1)
        self._ticker: asyncio.Task[None] | None = None
        self.predictor = TtftPredictor()  # SLO-aware admission's: learns from every release

    @property
    def saturation(self) -> SaturationDetector | None:
        """The engines' load the gate watches, when it does."""
        return self._saturation

    # -- the gate ---------------------------------------------------------------------------------------

    async def admit(self, ticket: Ticket) -> Permit:
        """Wait for a place in the pool's window; raise ``OverloadedError`` (503) when there is none in time."""
        now = self._clock.now()
        ticket.arrival_s = now
        if not ticket.resumed:  # a resumed request keeps its arrival order (it is not the newest)
            ticket.seq = next(self._seq)
        if self.protection is not None and self.protection.engaged and ticket.sheddable:
            raise self._refusal("shed", "The engines are overloaded and this request's priority is sheddable.")
        if not self.queue and self._fits(ticket):
            return self._dispatch(ticket)
        if ticket.ttft_slo_s is not None and not ticket.resumed:
            self._check_slo(ticket, ticket.ttft_slo_s)
        self._enqueue(ticket)
        self._pump()  # a more important arrival may go ahead of those waiting, at once
        self._preempt()
        self._start_ticker()
        assert ticket.granted is not None
        try:
            refusal = await ticket.granted
        except BaseException:
            if self.queue.remove(ticket):
                pass  # the client left (or timed out) while waiting: it leaves the queue at once
            elif ticket.granted.done() and not ticket.granted.cancelled() and ticket.granted.result() is None:
                self._undo_dispatch(ticket)  # granted in the same instant it was cancelled: give the place back
            raise
        if refusal is not None:
            raise self._refusal(refusal.reason, refusal.message)
        now = self._clock.now()
        return Permit(ticket, ticket.in_flight_at_dispatch, now - ticket.arrival_s)

    def release(self, permit: Permit, outcome: Outcome, latency_s: float | None, output_tokens: int) -> None:
        """Settle a dispatched request: feed the window algorithm, bill the tenant, open the gate."""
        if not self._settle(permit, output_tokens):
            return
        saturated = self.last_saturation >= 1.0
        if latency_s is not None and outcome is Outcome.SUCCESS:
            self.predictor.observe_ttft(permit.ticket.prompt_tokens, latency_s)
        self.limit.update(Sample(latency_s, permit.in_flight_at_admit, outcome, saturated))
        self._pump()

    def arm(self, permit: Permit, stop: Callable[[], object]) -> None:
        """Make a running request preemptible: ``stop`` ends its upstream request. A request waiting for a place
        may have found nothing to preempt when it arrived: it looks again now."""
        if permit.released:
            return
        permit.ticket.on_preempt = stop
        if self.queue:
            self._preempt()

    def disarm(self, permit: Permit) -> None:
        """Make a running request no longer preemptible (its stream could no longer be resumed)."""
        permit.ticket.on_preempt = None

    async def resume(self, permit: Permit, *, extra_prompt_tokens: int, deadline_s: float) -> Permit:
        """Give back the place of a request stopped by preemption (no sample for the window algorithm: it was
        stopped, it did not finish) and wait for a place for the rest of it, at the head of its band, until
        ``deadline_s`` (clock time). ``extra_prompt_tokens``: what the stopped part generated, billed to its
        tenant as output, and prompt of the rest."""
        self._settle(permit, extra_prompt_tokens)
        stopped = permit.ticket
        rest = dataclasses.replace(stopped, granted=None, on_preempt=None, preempted=False, resumed=True,
                                   deadline_s=deadline_s, prompt_tokens=stopped.prompt_tokens + extra_prompt_tokens)
        return await self.admit(rest)

    @property
    def top_priority(self) -> int:
        return self._settings.top_priority

    def effective_limit(self, priority: int) -> int:
        limit = self.limit.value
        s = self._settings
        reserving = s.reserve_always or (self.protection is not None and self.protection.engaged)
        if reserving and priority < s.top_priority:
            return max(1, math.floor(limit * (1 - s.reserve_top_share)))
        return limit

    def start(self) -> None:
        """Begin sensing (when the pool's load is watched): protection mode needs the tick even with no queue."""
        if self._saturation is not None:
            self._start_ticker()

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        for ticket in list(self.queue):
            self._reject(ticket, "shutdown", "The gateway is shutting down.")

    # -- inside -----------------------------------------------------------------------------------------

    def _settle(self, permit: Permit, output_tokens: int) -> bool:
        if permit.released:
            return False
        permit.released = True
        ticket = permit.ticket
        self._running.discard(ticket)
        ticket.on_preempt = None
        if ticket.preempted:
            self._preempting -= 1
        else:  # a stopped request did not hold its place for as long as it needed
            self.predictor.observe_service(self._clock.now() - ticket.dispatched_s)
        self.in_flight -= 1
        self.tokens_in_flight -= ticket.tokens
        self.queue.charge(ticket, 0, output_tokens)
        return True

    def _preempt(self) -> None:
        """Stop running requests for the waiting requests of the queue's top band: one place for each, counting
        the places the window must shed first when it shrank below what is in flight."""
        gap = self._settings.preempt_gap
        if gap is None:
            return
        head = self.queue.peek()
        if head is None:
            return
        needed = self.in_flight + self.queue.waiting_at(head.priority) - self.effective_limit(head.priority)
        while needed > self._preempting:
            victims = [t for t in self._running
                       if t.on_preempt is not None and not t.preempted and t.priority <= head.priority - gap]
            if not victims:
                return
            victim = min(victims, key=lambda t: (t.priority, -t.seq))
            stop = victim.on_preempt
            assert stop is not None  # only armed requests are victims
            victim.on_preempt, victim.preempted = None, True
            self._preempting += 1
            if self._observer:
                self._observer.admission_preempted(self.name, victim.priority)
            stop()

    def _fits(self, ticket: Ticket) -> bool:
        if self.in_flight >= self.effective_limit(ticket.priority):
            return False
        cap = self._settings.max_tokens_in_flight
        if cap is not None and self.in_flight and self.tokens_in_flight + ticket.tokens > cap:
            return False
        return self.in_flight == 0 or self._kv_room(ticket.tokens)

    def _kv_room(self, tokens: int) -> bool:
        """Whether the engines' free KV cache (as last read, less what was dispatched since) holds ``tokens``."""
        if self._saturation is None:
            return True
        free = self._saturation.free_kv_tokens()
        if free is None:
            return True
        free_tokens, read_at = free
        self._forget_recent(read_at)
        return tokens <= free_tokens - self._recent_tokens

    def _check_slo(self, ticket: Ticket, target_s: float) -> None:
        """Refuse ``ticket`` (which would wait) at once when its predicted TTFT is past ``target_s``."""
        prediction = self.predictor.predict(places_needed=self._places_needed(ticket), in_flight=self.in_flight,
                                            prompt_tokens=ticket.prompt_tokens, priority=ticket.priority,
                                            now_s=self._clock.now())
        late_s = prediction.total_s - target_s
        if late_s <= 0:  # it may wait, but not past the point where its first token could still make the target
            ticket.deadline_s = min(ticket.deadline_s, ticket.arrival_s + target_s - prediction.engine_s)
            return
        if math.isinf(late_s):  # the bands above take every place: no wait is predictable; try after a while
            late_s = max(self._settings.retry_after_s, self.predictor.service_s.value or 0.0)
            told = "no place is predicted to come: more important requests take them all"
        else:
            told = (f"the first token would come in about {prediction.total_s:.2f} s (waiting "
                    f"{prediction.queue_s:.2f} s for a place)")
        raise SloUnattainableError(
            f"Refused at once: {told}, past this tier's target of {target_s:g} s.",
            headers={"retry-after": str(max(1, math.ceil(late_s))),
                     "retry-after-ms": str(math.ceil(late_s * 1e3 - 1e-6))})

    def _places_needed(self, ticket: Ticket) -> int:
        """Places that must free up before ``ticket`` is dispatched: those waiting in its band and above (who go
        first), and itself, less the window's free places; at least one when it does not fit now."""
        ahead = sum(n for priority, n in self.queue.depth_by_priority().items() if priority >= ticket.priority)
        places = ahead + 1 - (self.effective_limit(ticket.priority) - self.in_flight)
        return places if places > 0 or self._fits(ticket) else 1

    def _dispatch(self, ticket: Ticket) -> Permit:
        ticket.in_flight_at_dispatch = self.in_flight
        self._running.add(ticket)
        self.in_flight += 1
        self.tokens_in_flight += ticket.tokens
        self._note_dispatch(ticket.tokens)
        self.queue.charge(ticket, ticket.prompt_tokens, 0)
        now = ticket.dispatched_s = self._clock.now()
        self.predictor.observe_dispatch(ticket.priority, now)
        return Permit(ticket, ticket.in_flight_at_dispatch, now - ticket.arrival_s)

    def _note_dispatch(self, tokens: int) -> None:
        """Remember what was dispatched since the engines' KV use was last read (their metrics do not show it
        yet): only when KV room is checked, and only while a reading still trusted could predate it, so that what
        is kept does not grow with the requests served."""
        detector = self._saturation
        if detector is None or detector.kv_capacity_tokens is None:
            return
        now = self._clock.now()
        horizon = now - detector.stale_after_s  # any reading _kv_room uses is newer than this
        self._forget_recent(horizon)
        self._recent.append((now, tokens))
        self._recent_tokens += tokens

    def _forget_recent(self, before: float) -> None:
        recent = self._recent
        while recent and recent[0][0] < before:
            self._recent_tokens -= recent.popleft()[1]

    def _undo_dispatch(self, ticket: Ticket) -> None:
        self._running.discard(ticket)
        self.in_flight -= 1
        self.tokens_in_flight -= ticket.tokens
        self._pump()

    def _enqueue(self, ticket: Ticket) -> None:
        s = self._settings
        over = (len(self.queue) >= s.queue_max_requests or
                (s.queue_max_tokens is not None and self.queue.tokens + ticket.tokens > s.queue_max_tokens))
        if over:
            victim = self.queue.lowest_newest()
            if victim is None or victim.priority >= ticket.priority:
                raise self._refusal("queue_full", "The queue in front of the engines is full.")
            self.queue.remove(victim)
            self._reject(victim, "displaced", "A more important request took this request's place in the queue.")
        ticket.granted = asyncio.get_running_loop().create_future()
        self.queue.push(ticket)

    def _pump(self) -> None:
        while True:
            ticket = self.queue.peek()
            if ticket is None or not self._fits(ticket):
                return
            self.queue.remove(ticket)
            self._dispatch(ticket)
            assert ticket.granted is not None
            if not ticket.granted.done():
                ticket.granted.set_result(None)
                if self._observer:
                    self._observer.admission_waited(self.name, ticket.priority, self._clock.now() - ticket.arrival_s)

    def _reject(self, ticket: Ticket, reason: str, message: str) -> None:
        if ticket.granted is not None and not ticket.granted.done():
            ticket.granted.set_result(Refusal(reason, message))

    def _refusal(self, reason: str, message: str) -> OverloadedError:
        retry = max(1, math.ceil(self._settings.retry_after_s))
        return OverloadedError(message, reason=reason, headers={"retry-after": str(retry)})

    def _start_ticker(self) -> None:
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.get_running_loop().create_task(self._tick_forever())

    async def _tick_forever(self) -> None:
        while True:
            self.tick()
            if not self.queue and self._saturation is None:
                self._ticker = None
                return
            await self._clock.sleep(self._settings.tick_s)

    def tick(self) -> None:
        """Sense, decide, act: read saturation, move protection mode, shed, expire deadlines, re-open the gate."""
        now = self._clock.now()
        if self._saturation is not None:
            self.last_saturation = self._saturation.saturation()
            if self.protection is not None:
                self.protection.observe(self.last_saturation)
        for ticket in [t for t in self.queue if t.deadline_s <= now or (t.sheddable and self._shedding())]:
            self.queue.remove(ticket)
            if ticket.deadline_s <= now:
                self._reject(ticket, "queue_timeout", "The request waited in the queue longer than its tier allows.")
            else:
                self._reject(ticket, "shed", "The engines are overloaded and this request's priority is sheddable.")
        self._pump()
        self._preempt()
        if self._observer:
            self._observer.admission_state(self.name, in_flight=self.in_flight, limit=self.limit.value,
                                           queued=self.queue.depth_by_priority(), saturation=self.last_saturation,
                                           protected=bool(self.protection and self.protection.engaged))

    def _shedding(self) -> bool:
        return self.protection is not None and self.protection.engaged


def ticket_for(priority: int, tenant: str, weight: float, prompt_tokens: int, max_output_tokens: int,
               deadline_s: float, ttft_slo_s: float | None = None) -> Ticket:
    return Ticket(priority=priority, tenant=tenant, weight=weight, tokens=prompt_tokens + max_output_tokens,
                  prompt_tokens=prompt_tokens, deadline_s=deadline_s, ttft_slo_s=ttft_slo_s)
