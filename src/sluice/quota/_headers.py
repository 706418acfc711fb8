"""What a client is told about its budget: OpenAI's ``x-ratelimit-*`` headers and the 429 message."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from sluice.errors import RateLimitError
from sluice.quota._model import Bucket, BucketState, Decision, Lease, LimitInfo

_KIND_LABEL = {"requests": ("requests", "RPM"), "tokens": ("tokens", "TPM"),
               "input_tokens": ("input tokens", "ITPM"), "output_tokens": ("output tokens", "OTPM")}
_HEADER_KINDS = ("requests", "tokens")  # in the order they are written
_HEADER_LINES = {kind: (b"x-ratelimit-limit-%(k)b: %%d\r\nx-ratelimit-remaining-%(k)b: %%d\r\n"
                        b"x-ratelimit-reset-%(k)b: %%b\r\n") % {b"k": kind.encode()} for kind in _HEADER_KINDS}
_PERIOD_LABEL = {1: "sec", 60: "min", 3600: "hour", 86400: "day"}


@dataclass(slots=True)
class RateLimit:
    """What a decision says of the tightest limit of each kind the ``x-ratelimit-*`` headers tell (requests,
    tokens): kept as found, rendered when the answer is written (a request's headers cost ~5% of a gateway's CPU
    when they were built as a mapping and written header by header)."""

    tightest: dict[str, tuple[Bucket, BucketState]]

    @classmethod
    def of(cls, buckets: Sequence[Bucket], states: Sequence[BucketState]) -> RateLimit:
        tightest: dict[str, tuple[Bucket, BucketState]] = {}
        for bucket, state in zip(buckets, states, strict=True):
            kind = bucket.info.kind
            if kind in _HEADER_LINES:
                held = tightest.get(kind)
                if held is None or state.remaining < held[1].remaining:
                    tightest[kind] = (bucket, state)
        return cls(tightest)

    def lines(self) -> bytes:
        """The headers as HTTP header lines, each ending in CRLF."""
        out = b""
        for kind in _HEADER_KINDS:
            if (held := self.tightest.get(kind)) is not None:
                bucket, state = held
                out += _HEADER_LINES[kind] % (bucket.info.amount, state.remaining, duration(state.reset_s).encode())
        return out

    def headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        for kind in _HEADER_KINDS:
            if kind in self.tightest:
                bucket, state = self.tightest[kind]
                headers[f"x-ratelimit-limit-{kind}"] = str(bucket.info.amount)
                headers[f"x-ratelimit-remaining-{kind}"] = str(state.remaining)
                headers[f"x-ratelimit-reset-{kind}"] = duration(state.reset_s)
        return headers


def ratelimit_headers(buckets: Sequence[Bucket], states: Sequence[BucketState]) -> dict[str, str]:
    """``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` from the tightest bucket of each kind."""
    return RateLimit.of(buckets, states).headers()


def refusal(buckets: Sequence[Bucket], leases: Sequence[Lease], decision: Decision) -> RateLimitError:
    headers = ratelimit_headers(buckets, decision.states)
    if decision.refused_lease is not None:
        lease = leases[decision.refused_lease]
        message = (f"Too many concurrent requests on {lease.scope}: Limit {lease.limit}. "
                   "Please try again when one of them has finished.")
        return _error(message, "concurrent", decision.retry_after_s, headers)
    assert decision.refused_bucket is not None
    bucket = buckets[decision.refused_bucket]
    state = decision.states[decision.refused_bucket]
    info = bucket.info
    if decision.never:
        message = (f"Request too large for {_label(info)} on {info.scope}: Limit {info.amount}, Requested "
                   f"{bucket.cost}. The request can never fit this limit: reduce its input or max_tokens.")
        headers["x-should-retry"] = "false"
        return _error(message, info.kind, None, headers)
    used = bucket.capacity - state.remaining
    message = (f"Rate limit reached for {_label(info)} on {info.scope}: Limit {info.amount}, Used {used}, "
               f"Requested {bucket.cost}. Please try again in {duration(decision.retry_after_s)}.")
    return _error(message, info.kind, decision.retry_after_s, headers)


def duration(seconds: float) -> str:
    """OpenAI's reset format: ``20ms``, ``1s``, ``6m0s``, ``1h2m3.5s``."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    secs_text = f"{secs:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{int(hours)}h{int(minutes)}m{secs_text}s"
    if minutes:
        return f"{int(minutes)}m{secs_text}s"
    return f"{secs_text}s"


def _label(info: LimitInfo) -> str:
    noun, short = _KIND_LABEL[info.kind]
    period = _PERIOD_LABEL.get(int(info.period_s)) if float(info.period_s).is_integer() else None
    if period == "min":
        return f"{noun} per min ({short})"
    return f"{noun} per {period or f'{info.period_s:g}s'}"


def _error(message: str, kind: str, retry_after_s: float | None, headers: dict[str, str]) -> RateLimitError:
    if retry_after_s is not None:
        headers["retry-after"] = str(max(1, math.ceil(retry_after_s)))
        headers["retry-after-ms"] = str(max(1, math.ceil(retry_after_s * 1000)))
    err = RateLimitError(message, headers=headers, reason=f"quota_{kind}")
    err.type = kind if kind in ("requests", "tokens") else "tokens" if "tokens" in kind else "requests"
    return err
