"""Arrival processes: the Poisson rate over many samples, exact constant and burst schedules, seeded replays."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from sluice.bench import Burst, Constant, Poisson, arrival_times, fitted_gaps, make_arrivals


def test_poisson_rate_and_gap_spread_over_many_samples() -> None:
    rate = 50.0
    times = arrival_times(Poisson(rate), random.Random(1), count=20_000)
    # The count over T has sd sqrt(n): 20,000 arrivals estimate the rate to ~0.7%; allow 3%.
    assert len(times) / times[-1] == pytest.approx(rate, rel=0.03)
    gaps = [b - a for a, b in zip([0.0, *times], times, strict=False)]
    assert statistics.fmean(gaps) == pytest.approx(1 / rate, rel=0.03)
    # Exponential gaps: the standard deviation equals the mean (CV 1), and P(gap > mean) = 1/e.
    assert statistics.pstdev(gaps) / statistics.fmean(gaps) == pytest.approx(1.0, abs=0.05)
    assert sum(g > 1 / rate for g in gaps) / len(gaps) == pytest.approx(math.exp(-1), abs=0.02)


def test_poisson_counts_in_windows_have_variance_equal_to_mean() -> None:
    times = arrival_times(Poisson(20.0), random.Random(7), horizon_s=500.0)
    counts = [0] * 500
    for t in times:
        counts[int(t)] += 1
    assert statistics.fmean(counts) == pytest.approx(20.0, rel=0.05)
    assert statistics.pvariance(counts) == pytest.approx(20.0, rel=0.2)  # Poisson: index of dispersion 1


def test_same_seed_same_schedule_other_seed_other_schedule() -> None:
    first = arrival_times(Poisson(10.0), random.Random(42), count=100)
    assert arrival_times(Poisson(10.0), random.Random(42), count=100) == first
    assert arrival_times(Poisson(10.0), random.Random(43), count=100) != first


def test_constant_and_burst_schedules() -> None:
    assert arrival_times(Constant(4.0), random.Random(0), count=4) == [0.25, 0.5, 0.75, 1.0]
    # 3 at once every 3/6 = 0.5 s: the same mean rate of 6/s, in clumps
    assert arrival_times(Burst(6.0, 3), random.Random(0), count=7) == [0.5, 0.5, 0.5, 1.0, 1.0, 1.0, 1.5]
    assert arrival_times(Poisson(math.inf), random.Random(0), count=3) == [0.0, 0.0, 0.0]


def test_horizon_and_count_bound_the_schedule() -> None:
    assert arrival_times(Constant(10.0), random.Random(0), horizon_s=0.95) == pytest.approx(
        [0.1 * k for k in range(1, 10)])
    assert arrival_times(Constant(10.0), random.Random(0), count=3, horizon_s=100.0) == pytest.approx([0.1, 0.2, 0.3])
    assert arrival_times(Constant(10.0), random.Random(0), count=0) == []
    with pytest.raises(ValueError):
        arrival_times(Constant(1.0), random.Random(0))


def test_make_arrivals() -> None:
    assert make_arrivals("poisson", 2.0) == Poisson(2.0)
    assert make_arrivals("constant", 2.0) == Constant(2.0)
    assert make_arrivals("burst", 2.0, burst_size=4) == Burst(2.0, 4)
    for kind, rate in (("poisson", 0.0), ("gamma", 1.0)):
        with pytest.raises(ValueError):
            make_arrivals(kind, rate)


def test_fitted_gaps_end_at_count_over_rate_and_stay_reproducible() -> None:
    gaps = fitted_gaps(Poisson(2.0), random.Random(5), 50)
    assert len(gaps) == 50 and sum(gaps) == pytest.approx(25.0)
    assert gaps == fitted_gaps(Poisson(2.0), random.Random(5), 50)
    raw = [g for g, _ in zip(Poisson(2.0).gaps(random.Random(5)), range(50), strict=False)]
    assert [g / r for g, r in zip(gaps, raw, strict=True)] == pytest.approx([25.0 / sum(raw)] * 50)  # one scale
    assert fitted_gaps(Constant(4.0), random.Random(0), 3) == pytest.approx([0.25] * 3)  # already exact
    assert fitted_gaps(Poisson(math.inf), random.Random(0), 3) == [0.0, 0.0, 0.0]
