"""The store interface: where buckets and permits live. Strategies decide (``_limiter``), stores count.

Every store has the same semantics (the contract suite in tests/contract runs over all of them):
``acquire`` checks and charges every bucket and takes every lease of one request at once, all or nothing;
``settle`` reconciles the buckets and gives the leases back, in one step (``settle_soon`` does it without waiting:
a gateway settles every request that way, with no task of its own). A store shared over the network bounds
its own calls in time and gives back what an abandoned call took (a caller that stopped waiting holds nothing).

Every operation names its decision (the reservation id, unique per attempt) and is idempotent or fenced by it:
an ``acquire`` run again after a grant answers granted without charging twice; ``settle`` applies once; ``void``
gives a granted decision back (refund, release) and makes an acquire that had not run yet a refusal that takes
nothing (``Decision.voided``); ``renew`` holds the leases again unless the decision is settled or void.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from sluice.quota._model import Bucket, Decision, Lease, Stretch

T = TypeVar("T")


class QuotaStore(Protocol):
    async def acquire(self, buckets: Sequence[Bucket], leases: Sequence[Lease], lease_id: str,
                      stretch: Stretch | None = None) -> Decision:
        """All buckets charged and all leases taken, or nothing changed. With a ``stretch``, the costs are floors
        and the flexible buckets are charged ``Decision.extra`` more, decided in the same atomic step."""
        ...

    def settle_soon(self, buckets: Sequence[Bucket], deltas: Sequence[int], leases: Sequence[Lease],
                    lease_id: str, landed: Callable[[], None]) -> None:
        """Charge (positive) or refund (negative) units without asking, and release the leases; once. Applied as
        soon as the store can (a shared store: with its next call; while it cannot reach its backend it keeps the
        settlement and applies it when it can, and it sends what it holds before it closes); ``landed`` is called
        once the settlement is applied or kept."""
        ...

    async def settle(self, buckets: Sequence[Bucket], deltas: Sequence[int], leases: Sequence[Lease],
                     lease_id: str) -> None:
        """``settle_soon``, returning once the settlement is applied or kept."""
        ...

    async def void(self, buckets: Sequence[Bucket], leases: Sequence[Lease], lease_id: str) -> None:
        """Give back the decision ``lease_id`` whose caller stopped waiting: if it was granted, refund its costs and
        release its leases; if it has not run yet, it will be refused when it does."""
        ...

    async def renew(self, leases: Sequence[Lease], lease_id: str) -> None:
        """Push the leases' deadlines ``ttl_s`` further (long streams keep their permits), taking them again if the
        store lost them, unless the decision is settled or void."""
        ...

    async def close(self) -> None:
        ...


async def until_landed(settle_soon: Callable[[Callable[[], None]], T]) -> T:
    """Start a settlement (``settle_soon``, given its ``landed`` callback), wait until it has landed, and return
    what ``settle_soon`` returned."""
    landed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    started = settle_soon(lambda: None if landed.done() else landed.set_result(None))
    await landed
    return started
