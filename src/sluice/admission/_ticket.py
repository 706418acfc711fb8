"""What waits in front of an engine pool, and what it holds once admitted."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from dataclasses import dataclass, field


class Outcome(enum.Enum):
    """How an admitted request ended, as the window algorithm sees it (Netflix concurrency-limits' settlement)."""

    SUCCESS = "success"  # it ran: its latency is a fair sample of the engine's state
    DROPPED = "dropped"  # the engine was overloaded or timed out: back off
    IGNORED = "ignored"  # says nothing about the engine (client error, client gone)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a waiting request was turned away. Its future carries this, not the exception: an exception set on
    the future would hold, through its traceback, the waiting frame that holds the ticket that holds the
    future, a reference cycle that keeps the request's whole call stack alive until the collector runs."""

    reason: str
    message: str


@dataclass(eq=False, slots=True)
class Ticket:
    """One request asking to be dispatched to a pool."""

    priority: int  # higher first; negative is sheddable
    tenant: str
    weight: float  # the tenant's share within its band (the tier's weight)
    tokens: int  # prompt + max output: what it may occupy in the engine's KV cache
    prompt_tokens: int
    deadline_s: float  # clock time after which it stops waiting
    arrival_s: float = 0.0
    seq: int = 0  # arrival order, for "newest gives way first"
    in_flight_at_dispatch: int = 0  # what the window held when it went in (for the limit algorithm's sample)
    granted: asyncio.Future[Refusal | None] | None = field(default=None, repr=False)  # None: dispatched
    resumed: bool = False  # the rest of a preempted request: it waits at the head of its band
    # Set while it runs and can be preempted (its stream can be resumed): stops its upstream request.
    on_preempt: Callable[[], object] | None = field(default=None, repr=False)
    preempted: bool = False
    ttft_slo_s: float | None = None  # its tier's TTFT target: refused at once when predicted to miss it
    dispatched_s: float = 0.0  # when it got its place (the gate learns how long places are held)

    @property
    def sheddable(self) -> bool:
        return self.priority < 0
