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


def feed(limit: GradientLimit, clock: FakeClock, n: int, latency_s: float, in_flight: int, *,
         saturated: bool = False, every_s: float = 0.05) -> None:
    for _ in range(n):
        clock.advance(every_s)
        limit.update(Sample(latency_s, in_flight, Outcome.SUCCESS, saturated))


def test_gradient_shrinks_when_first_tokens_slow_down_and_ignores_jitter():
    clock = FakeClock()
    limit = GradientLimit(clock, initial=32, minimum=4, maximum=64)
    for i in range(200):  # 20 ms first tokens with jitter: steady or growing, never collapsing
        clock.advance(0.05)
        limit.update(Sample(0.02 + (i % 3) * 0.01, in_flight=32, outcome=Outcome.SUCCESS))
    steady = limit.value
    assert steady > 32
    feed(limit, clock, 200, 1.0, steady)  # the engine starts queueing: first tokens take a second
    assert limit.value < steady / 2


def test_gradient_moves_once_per_window():
    clock = FakeClock()
    limit = GradientLimit(clock, initial=100, minimum=4, maximum=400, window_s=0.5, window_samples=10)
    feed(limit, clock, 9, 0.02, 100, every_s=0.1)  # 0.9 s but 9 samples: the window is still open
    assert limit.value == 100
    feed(limit, clock, 1, 0.02, 100)  # the 10th sample closes it: one step of smoothing × sqrt(100) = +2
    assert limit.value == 102
    feed(limit, clock, 10, 0.02, 102, every_s=0.01)  # 10 more samples within 0.1 s: not a window yet
    assert limit.value == 102


def test_gradient_shrinks_while_the_engines_are_saturated_and_grows_after():
    clock = FakeClock()
    limit = GradientLimit(clock, initial=27, minimum=4, maximum=64)
    feed(limit, clock, 100, 0.02, 27, saturated=True)  # fast first tokens, but the engines' queues are full
    shrunk = limit.value
    assert shrunk < 22
    feed(limit, clock, 100, 0.02, shrunk)
    assert limit.value > shrunk


def test_gradient_ignores_samples_taken_when_the_window_did_not_bind():
    clock = FakeClock()
    limit = GradientLimit(clock, initial=32, minimum=4, maximum=64)
    feed(limit, clock, 100, 5.0, in_flight=4)  # slow answers at 4 in flight say nothing about a window of 32
    assert limit.value == 32


def test_gradient_backs_off_a_tenth_per_window_with_drops():
    clock = FakeClock()
    limit = GradientLimit(clock, initial=20, minimum=4, maximum=64, window_s=0.5)
    for _ in range(3):
        limit.update(Sample(None, 20, Outcome.DROPPED))
    assert limit.value == 20  # the window has not ended
    clock.advance(0.5)
    limit.update(Sample(None, 20, Outcome.DROPPED))
    assert limit.value == 18


def test_aimd_does_not_grow_while_the_engines_are_saturated():
    limit = AIMDLimit(FakeClock(), initial=10, minimum=2, maximum=20)
    for _ in range(5):
        limit.update(Sample(0.1, in_flight=10, outcome=Outcome.SUCCESS, saturated=True))
    assert limit.value == 10
    limit.update(Sample(0.1, in_flight=10, outcome=Outcome.SUCCESS))
    assert limit.value == 11
