from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the answer of the identify step, read by every later step."""

    key_id: str
    user: str
    tenant: str
    tier: str
    priority: int = 0


ANONYMOUS = Principal(key_id="anonymous", user="anonymous", tenant="default", tier="default")
