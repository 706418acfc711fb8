"""What each choice will say: its length, its finish reason and its words (and their token ids), drawn once,
deterministically.

The random stream of a choice is keyed by the request's ``seed`` and the prompt (same seed + same prompt = same
text), or, without a seed, by the simulator's ``seed`` and a per-request counter (a reproducible run).
"""

from __future__ import annotations

import hashlib
import itertools
import random
from dataclasses import dataclass

from sluice.config import SimSettings
from sluice.sim._tokenizer import GENERATED_ID_BASE, VOCABULARY, generated_word


@dataclass(frozen=True)
class PlannedOutput:
    words: tuple[str, ...]  # one per token
    finish_reason: str  # "stop" or "length"
    token_ids: tuple[int, ...] = ()  # one per token: the ids of ``words``
    pieces: tuple[str, ...] | None = None  # one per token: the text it adds to the reply, when not its word (a stop
    # string cut it: ``_stops``)

    @property
    def texts(self) -> tuple[str, ...]:
        """What each token adds to the reply's text."""
        return self.words if self.pieces is None else self.pieces


class Sampler:
    def __init__(self, settings: SimSettings) -> None:
        self._settings = settings
        self._counter = itertools.count()

    def plan(self, *, prompt_key: str, seed: int | None, index: int, cap: int, ignore_eos: bool) -> PlannedOutput:
        """One choice's output. ``cap`` is the most tokens allowed; ``ignore_eos`` generates exactly ``cap``."""
        if seed is None:
            key = f"sim:{self._settings.seed}:{next(self._counter)}:{index}"
        else:
            digest = hashlib.blake2b(prompt_key.encode(), digest_size=16).hexdigest()
            key = f"req:{seed}:{digest}:{index}"
        rng = random.Random(key)
        natural = rng.randint(self._settings.output_len_min, self._settings.output_len_max)
        if ignore_eos or natural > cap:
            length, reason = cap, "length"
        else:
            length, reason = natural, "stop"
        # the same draws as ``rng.choices(VOCABULARY, k=length)``: the same words for the same seed as before ids
        ids = tuple(GENERATED_ID_BASE + i for i in rng.choices(range(len(VOCABULARY)), k=length))
        return PlannedOutput(words=tuple(map(generated_word, ids)), finish_reason=reason, token_ids=ids)
