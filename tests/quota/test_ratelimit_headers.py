"""The ``x-ratelimit-*`` headers of a granted request are written as rendered header lines: the same headers, in
the same order, as the mapping a refusal carries."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sluice.quota._headers import RateLimit
from sluice.quota._model import Bucket, BucketState, LimitInfo

KINDS = ("requests", "tokens", "input_tokens", "output_tokens")


@st.composite
def decisions(draw: st.DrawFn) -> tuple[list[Bucket], list[BucketState]]:
    kinds = draw(st.lists(st.sampled_from(KINDS), max_size=6))
    buckets, states = [], []
    for i, kind in enumerate(kinds):
        amount = draw(st.integers(1, 10**12))
        buckets.append(Bucket(f"k{i}", 60 / amount, amount, 1, LimitInfo(kind, f"scope {i}", amount, 60.0)))
        states.append(BucketState(draw(st.integers(-amount, amount)), draw(st.floats(0, 90000)), 0.0))
    return buckets, states


@given(decisions())
def test_header_lines_are_the_headers_rendered(decision: tuple[list[Bucket], list[BucketState]]) -> None:
    ratelimit = RateLimit.of(*decision)
    headers = ratelimit.headers()
    assert ratelimit.lines() == "".join(f"{name}: {value}\r\n" for name, value in headers.items()).encode()


def test_the_tightest_limit_of_each_kind_is_told() -> None:
    info = LimitInfo("tokens", "tier pro", 1000, 60.0)
    buckets = [Bucket("a", 0.06, 1000, 5, info), Bucket("b", 0.06, 1000, 5, info),
               Bucket("c", 0.6, 100, 1, LimitInfo("requests", "tier pro", 100, 60.0)),
               Bucket("d", 0.06, 1000, 5, LimitInfo("input_tokens", "tier pro", 1000, 60.0))]
    states = [BucketState(900, 6.0, 0.0), BucketState(400, 36.0, 0.0), BucketState(99, 0.6, 0.0),
              BucketState(1, 60.0, 0.0)]
    assert RateLimit.of(buckets, states).lines() == (
        b"x-ratelimit-limit-requests: 100\r\nx-ratelimit-remaining-requests: 99\r\n"
        b"x-ratelimit-reset-requests: 600ms\r\n"
        b"x-ratelimit-limit-tokens: 1000\r\nx-ratelimit-remaining-tokens: 400\r\nx-ratelimit-reset-tokens: 36s\r\n")
