"""What a request admitted over its token budget (quota/_over_budget.py) changes on its way: the engine is told a
lower ``max_tokens`` (clamp, and cut when the answer is not streamed), or the stream is cut where its budget ends
(cut), or the answer is tagged (tag); a header says which, the access log and ``sluice_over_budget_requests_total``
count it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from sluice.errors import RateLimitError
from sluice.quota import Reservation

CLAMPED_HEADER = "x-sluice-max-tokens-clamped"
CUT_HEADER = "x-sluice-stream-cut-at"
TAG_HEADER = "x-sluice-over-budget"
DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True, slots=True)
class OverBudgetTerms:
    action: str  # clamp, cut or tag: what was done
    body: bytes  # what the engine gets
    cut_at: int | None = None  # cut: the stream ends after this many generated tokens (over every choice)


def terms(reservation: Reservation, body: bytes, *, stream: bool) -> OverBudgetTerms | None:
    """The terms of a request its tier's over-budget policy admitted (None: its whole price fit). Adds the header
    to the reservation's, which every answer carries."""
    policy = reservation.over_budget
    if policy is None:
        return None
    price = reservation.price
    if policy == "tag":
        reservation.headers[TAG_HEADER] = "true"
        return OverBudgetTerms("tag", body)
    if policy == "cut" and stream:
        reservation.headers[CUT_HEADER] = str(price.max_output_tokens)
        return OverBudgetTerms("cut", body, price.max_output_tokens)
    cap = price.max_output_tokens // price.sequences  # per answer, as max_tokens is
    reservation.headers[CLAMPED_HEADER] = str(cap)
    return OverBudgetTerms("clamp", _clamped(body, cap))


def cut_error(cut_at: int) -> RateLimitError:
    """What ends a cut stream (as an SSE error event, OpenAI's shape: the SDKs raise it as an APIError)."""
    err = RateLimitError(f"The answer was cut after {cut_at} tokens: it reached what was left of the token budget "
                         "when it was admitted.", code="token_budget_exhausted", reason="over_budget_cut")
    err.type = "tokens"
    return err


def _clamped(body: bytes, cap: int) -> bytes:
    """The body with its output cap lowered to ``cap``: ``max_completion_tokens`` where the client set it (it
    wins over ``max_tokens``), ``max_tokens`` where it set that or nothing. The body was parsed already: valid."""
    doc: dict[str, Any] = orjson.loads(body)
    fields = [name for name in ("max_completion_tokens", "max_tokens") if doc.get(name) is not None] or ["max_tokens"]
    for name in fields:
        doc[name] = cap
    return orjson.dumps(doc)
