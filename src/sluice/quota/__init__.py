"""Price and quota: what a request will cost, and whether its caller may spend that now.

Strategies decide (``QuotaLimiter``, GCRA in ``_gcra``), stores count (``MemoryStore``, ``RedisStore`` with one
Lua script). Every limit that applies to a request is checked and charged in one atomic step, all or nothing.
"""

from sluice.quota._failover import FailoverStore
from sluice.quota._headers import duration, ratelimit_headers
from sluice.quota._limiter import QuotaLimiter, QuotaObserver, Reservation
from sluice.quota._memory import MemoryStore
from sluice.quota._model import Bucket, BucketState, Decision, Lease, LimitInfo
from sluice.quota._policy import Plan, QuotaPolicy
from sluice.quota._pricing import Price, Pricer
from sluice.quota._redis import RedisStore
from sluice.quota._shadow import ShadowObserver, promotion
from sluice.quota._store import QuotaStore
from sluice.quota._stores import open_store
from sluice.quota._tokenizer import ChatOverhead, EstimateCounter, ExactCounter, PromptCounter

__all__ = [
    "Bucket",
    "BucketState",
    "ChatOverhead",
    "Decision",
    "EstimateCounter",
    "ExactCounter",
    "FailoverStore",
    "Lease",
    "LimitInfo",
    "MemoryStore",
    "Plan",
    "Price",
    "Pricer",
    "PromptCounter",
    "QuotaLimiter",
    "QuotaObserver",
    "QuotaPolicy",
    "QuotaStore",
    "RedisStore",
    "Reservation",
    "ShadowObserver",
    "duration",
    "open_store",
    "promotion",
    "ratelimit_headers",
]
