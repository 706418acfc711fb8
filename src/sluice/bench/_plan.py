"""What each request of a run asks for: its tenant, prompt and answer lengths, and the prompt text.

The plan is drawn from its own RNG (apart from the arrivals'), so the same seed gives the same requests in the
same order whatever the timing. A prompt of N tokens is N words drawn from a list of short English words: N
tokens exactly for the engine simulator's tokenizer, about N for a real model's (the server's ``usage`` says).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from sluice.bench._tenants import Tenant

WORDS = tuple(
    (
        "the of and to in is you that it he was for on are as with his they at be this have from or one had by "
        "word but not what all were we when your can said there use an each which she do how their if will up "
        "other about out many then them these so some her would make like him into time has look two more write "
        "go see number no way could people my than first water been call who oil its now find long down day did "
        "get come made may part over new sound take only little work know place year live me back give most very "
        "after thing our just name good sentence man think say great where help through much before line right "
        "too mean old any same tell boy follow came want show also around form three small set put end does "
        "another well large must big even such because turn here why ask went men read need land different home "
        "us move try kind hand picture again change off play spell air away animal house point page letter mother"
    ).split()
)


@dataclass(frozen=True)
class PlannedRequest:
    index: int
    tenant: Tenant
    input_len: int
    output_len: int
    prompt: str


def plan(tenants: Sequence[Tenant], rng: random.Random) -> Iterator[PlannedRequest]:
    """Requests without end: each one's tenant picked by weight, then its lengths and prompt words."""
    weights = [t.weight for t in tenants]
    index = 0
    while True:
        tenant = tenants[0] if len(tenants) == 1 else rng.choices(tenants, weights)[0]
        input_len = tenant.input_len.sample(rng)
        output_len = tenant.output_len.sample(rng)
        prompt = " ".join(rng.choices(WORDS, k=input_len))
        yield PlannedRequest(index, tenant, input_len, output_len, prompt)
        index += 1
