"""Stop sequences (``stop``): generation ends with the token that completes the first one in the generated text.

As vLLM applies them (``StopChecker``, ``include_stop_str_in_output`` false): after each token the new text is
searched for every stop string; the first to appear ends the sequence with ``finish_reason: "stop"`` and the text is
cut where that string begins (the string itself is not returned). The token that completed it was generated and is
counted in ``usage.completion_tokens``; the tokens after it are not generated at all. A stream never shows part of a
stop string: each token's chunk carries only the text that survives the cut (the last one may be empty).

The simulator draws a choice's tokens up front (``Sampler.plan``), so the cut is made there, once.
"""

from __future__ import annotations

from collections.abc import Sequence

from sluice.errors import InvalidRequestError
from sluice.sim._sampler import PlannedOutput


def stop_strings(stop: str | Sequence[str] | None) -> tuple[str, ...]:
    """The request's ``stop`` as a tuple; an empty string is refused (it would stop before the first token)."""
    if stop is None:
        return ()
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    if any(s == "" for s in stops):
        raise InvalidRequestError("stop sequences must not be empty strings.", param="stop")
    return stops


def apply_stops(output: PlannedOutput, stops: tuple[str, ...]) -> PlannedOutput:
    """``output`` ended at the first stop string its text completes (unchanged when none appears)."""
    if not stops:
        return output
    text = "".join(output.words)
    found = [(at + len(s), at) for s in stops if (at := text.find(s)) >= 0]
    if not found:
        return output
    end, cut = min(found)  # the stop completed first (the earliest end), cut where it begins
    starts, ends, at = [], [], 0
    for word in output.words:
        starts.append(at)
        at += len(word)
        ends.append(at)
    last = next(k for k, e in enumerate(ends) if e >= end)  # the token that completed it
    pieces = tuple(text[min(starts[k], cut):min(ends[k], cut)] for k in range(last + 1))
    return PlannedOutput(words=output.words[:last + 1], finish_reason="stop", token_ids=output.token_ids[:last + 1],
                         pieces=pieces)
