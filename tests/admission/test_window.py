"""The window algorithms on their own, with an injected clock."""

from __future__ import annotations

from sluice.admission import AIMDLimit, GradientLimit, Outcome, Sample
from sluice.clock import FakeClock


def test_aimd_grows_when_limited_and_backs_off_once_per_cooldown():
    clock = FakeClock()
    limit = AIMDLimit(clock, initial=10, minimum=2, maximum=12, cooldown_s=1.0)
    limit.update(Sample(0.1, in_flight=2, outcome=Outcome.SUCCESS))
    assert limit.value == 10  # not limited by the window: no growth
    for _ in range(5):
        limit.update(Sample(0.1, in_flight=9, outcome=Outcome.SUCCESS))
    assert limit.value == 12  # capped at maximum
    for _ in range(3):
        limit.update(Sample(None, in_flight=12, outcome=Outcome.DROPPED))
    assert limit.value == 10  # one decrease for a burst of drops
    clock.advance(1.0)
    limit.update(Sample(None, in_flight=12, outcome=Outcome.DROPPED))
    assert limit.value == 9
    limit.update(Sample(None, in_flight=12, outcome=Outcome.IGNORED))
    assert limit.value == 9


def test_gradient_shrinks_when_first_tokens_slow_down_and_ignores_jitter():
    limit = GradientLimit(initial=32, minimum=4, maximum=64)
    for i in range(200):  # 20 ms first tokens with jitter: steady or growing, never collapsing
        limit.update(Sample(0.02 + (i % 3) * 0.01, in_flight=32, outcome=Outcome.SUCCESS))
    steady = limit.value
    assert steady >= 32
    for _ in range(30):  # the engine starts queueing: first tokens take a second
        limit.update(Sample(1.0, in_flight=steady, outcome=Outcome.SUCCESS))
    assert limit.value < steady / 2
