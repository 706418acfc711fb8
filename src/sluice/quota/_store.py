"""The store interface: where buckets and permits live. Strategies decide (``_limiter``), stores count.

Every store has the same semantics (the contract suite in tests/contract runs over all of them):
``acquire`` checks and charges every bucket and takes every lease of one request at once, all or nothing;
``settle`` reconciles the buckets and gives the leases back, in one step. A store shared over the network bounds
its own calls in time and gives back what an abandoned call took (a caller that stopped waiting holds nothing).

Every operation names its decision (the reservation id, unique per attempt) and is idempotent or fenced by it:
an ``acquire`` run again after a grant answers granted without charging twice; ``settle`` applies once; ``void``
gives a granted decision back (refund, release) and makes an acquire that had not run yet a refusal that takes
nothing (``Decision.voided``); ``renew`` holds the leases again unless the decision is settled or void.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from sluice.quota._model import Bucket, Decision, Lease, Stretch


class QuotaStore(Protocol):
    async def acquire(self, buckets: Sequence[Bucket], leases: Sequence[Lease], lease_id: str,
                      stretch: Stretch | None = None) -> Decision:
        """All buckets charged and all leases taken, or nothing changed. With a ``stretch``, the costs are floors
        and the flexible buckets are charged ``Decision.extra`` more, decided in the same atomic step."""
        ...

    async def settle(self, buckets: Sequence[Bucket], deltas: Sequence[int], leases: Sequence[Lease],
                     lease_id: str) -> None:
        """Charge (positive) or refund (negative) units without asking, and release the leases; once. A shared
        store that cannot reach its backend keeps the settlement and applies it when it can."""
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
