"""The waiting room: strict priority between bands, fair share by token cost between tenants within a band.

Fairness is the virtual token counter (VTC, Sheng et al., "Fairness in Serving Large Language Models", OSDI
2024): each tenant has a counter charged with the tokens it is served (prompt, and output weighted higher, both
divided by the tenant's weight); the next request comes from the backlogged tenant with the lowest counter. A
tenant that becomes backlogged is lifted to the lowest counter among the backlogged, so idling earns no credit.

A resumed request (the rest of one preempted for a more important request) waits ahead of its whole band: it was
already being served, its client is reading a half-finished answer, and it is never the one displaced.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from sluice.admission._ticket import Ticket


@dataclass
class _Band:
    queues: dict[str, deque[Ticket]] = field(default_factory=dict)  # backlogged tenants only
    counters: dict[str, float] = field(default_factory=dict)
    resumed: deque[Ticket] = field(default_factory=deque)

    def push(self, ticket: Ticket) -> None:
        if ticket.resumed:
            self.resumed.append(ticket)
            return
        queue = self.queues.get(ticket.tenant)
        if queue is None:
            floor = min((self.counters[t] for t in self.queues), default=None)
            current = self.counters.get(ticket.tenant, 0.0)
            self.counters[ticket.tenant] = current if floor is None else max(current, floor)
            queue = self.queues[ticket.tenant] = deque()
        queue.append(ticket)

    def head(self) -> Ticket | None:
        if self.resumed:
            return self.resumed[0]
        tenant = min(self.queues, key=lambda t: self.counters[t], default=None)
        return None if tenant is None else self.queues[tenant][0]

    def __len__(self) -> int:
        return len(self.resumed) + sum(len(q) for q in self.queues.values())

    def remove(self, ticket: Ticket) -> bool:
        if ticket.resumed:
            if ticket not in self.resumed:
                return False
            self.resumed.remove(ticket)
            return True
        queue = self.queues.get(ticket.tenant)
        if queue is None or ticket not in queue:
            return False
        queue.remove(ticket)
        if not queue:
            del self.queues[ticket.tenant]
        return True


class FairQueue:
    def __init__(self, *, output_weight: float = 2.0) -> None:
        self._bands: dict[int, _Band] = {}
        self._output_weight = output_weight
        self.requests = 0
        self.tokens = 0

    def __len__(self) -> int:
        return self.requests

    def push(self, ticket: Ticket) -> None:
        self._bands.setdefault(ticket.priority, _Band()).push(ticket)
        self.requests += 1
        self.tokens += ticket.tokens

    def peek(self) -> Ticket | None:
        """The request that goes next: the highest band, then its resumed requests, then the tenant with the lowest
        counter, oldest first."""
        if not self.requests:
            return None
        for priority in sorted(self._bands, reverse=True):
            head = self._bands[priority].head()
            if head is not None:
                return head
        return None

    def remove(self, ticket: Ticket) -> bool:
        band = self._bands.get(ticket.priority)
        if band is None or not band.remove(ticket):
            return False
        self.requests -= 1
        self.tokens -= ticket.tokens
        return True

    def charge(self, ticket: Ticket, prompt_tokens: int, output_tokens: int) -> None:
        """Bill the tenant for service received: at dispatch (prompt), and as output is produced."""
        band = self._bands.get(ticket.priority)
        if band is None:
            band = self._bands[ticket.priority] = _Band()
        cost = (prompt_tokens + self._output_weight * output_tokens) / max(ticket.weight, 1e-9)
        band.counters[ticket.tenant] = band.counters.get(ticket.tenant, 0.0) + cost

    def lowest_newest(self) -> Ticket | None:
        """The waiting request that gives way first when the room is full: lowest priority, then newest."""
        for priority in sorted(self._bands):
            tickets = [t for q in self._bands[priority].queues.values() for t in q]
            if tickets:
                return max(tickets, key=lambda t: t.seq)
        return None

    def __iter__(self) -> Iterator[Ticket]:
        for band in self._bands.values():
            yield from band.resumed
            for queue in band.queues.values():
                yield from queue

    def depth_by_priority(self) -> dict[int, int]:
        """Waiting requests per band (bands seen once stay listed, at 0 when empty)."""
        return {p: len(band) for p, band in self._bands.items()}

    def waiting_at(self, priority: int) -> int:
        band = self._bands.get(priority)
        return len(band) if band else 0

    def counter(self, priority: int, tenant: str) -> float:
        band = self._bands.get(priority)
        return band.counters.get(tenant, 0.0) if band else 0.0
