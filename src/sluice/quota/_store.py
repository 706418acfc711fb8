"""The store interface: where buckets and permits live. Strategies decide (``_limiter``), stores count.

Every store has the same semantics (the contract suite in tests/contract runs over all of them):
``acquire`` checks and charges every bucket and takes every lease of one request at once, all or nothing;
``settle`` reconciles the buckets and gives the leases back, in one step. A store shared over the network bounds
its own calls in time and gives back what an abandoned call took (a caller that stopped waiting holds nothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from sluice.quota._model import Bucket, Decision, Lease


class QuotaStore(Protocol):
    async def acquire(self, buckets: Sequence[Bucket], leases: Sequence[Lease], lease_id: str) -> Decision:
        """All buckets charged and all leases taken, or nothing changed."""
        ...

    async def settle(self, buckets: Sequence[Bucket], deltas: Sequence[int], leases: Sequence[Lease],
                     lease_id: str) -> None:
        """Charge (positive) or refund (negative) units without asking, and release the leases."""
        ...

    async def renew(self, leases: Sequence[Lease], lease_id: str) -> None:
        """Push the leases' deadlines ``ttl_s`` further (long streams keep their permits)."""
        ...

    async def close(self) -> None:
        ...
