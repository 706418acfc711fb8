"""A request that shadow limits would have refused (sluice.quota's shadow limits: counted, never enforced): what the
metrics count and the console lists."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ShadowRefusal:
    """The live limits decided the request (and may have admitted it); these shadow ones would have refused it."""

    request_id: str
    tier: str
    scope: str  # the refusing rule's scope kind: key, user, tenant, tier, global
    limit: str  # requests, tokens, input_tokens, output_tokens, concurrent
    reason: str  # as x-sluice-reason would say it: quota_requests, ...
    message: str  # the 429's message, had the limit been enforced
    at_s: float
