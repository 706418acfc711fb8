"""Percentiles, summaries, Jain's index and the SLO check, on examples worked out by hand."""

from __future__ import annotations

import math

import pytest

from sluice.bench import describe, jain_index, meets_slo, percentile


def test_percentile_interpolates_between_closest_ranks() -> None:
    # [1, 2, 3, 4]: rank of p50 is 0.5 * 3 = 1.5 -> 2 + 0.5 * (3 - 2) = 2.5; p90: rank 2.7 -> 3 + 0.7 * 1 = 3.7
    assert percentile([4, 1, 3, 2], 50) == pytest.approx(2.5)
    assert percentile([4, 1, 3, 2], 90) == pytest.approx(3.7)
    assert percentile([4, 1, 3, 2], 0) == 1
    assert percentile([4, 1, 3, 2], 100) == 4
    # [15, 20, 35, 40, 50]: p40 at rank 1.6 -> 20 + 0.6 * 15 = 29; p50 is the middle value
    assert percentile([15, 20, 35, 40, 50], 40) == pytest.approx(29.0)
    assert percentile([15, 20, 35, 40, 50], 50) == 35
    # p99 of 1..100: rank 98.01 -> 99 + 0.01 * 1 = 99.01
    assert percentile(list(range(1, 101)), 99) == pytest.approx(99.01)
    assert percentile([7.0], 99) == 7.0


def test_percentile_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_describe_scales_and_summarises() -> None:
    stats = describe([0.001, 0.002, 0.003, 0.004], scale=1e3)  # seconds -> ms
    assert stats is not None
    assert stats["count"] == 4
    assert stats["mean"] == pytest.approx(2.5)
    assert stats["std"] == pytest.approx(math.sqrt(1.25))  # population std of 1, 2, 3, 4
    assert (stats["min"], stats["max"]) == pytest.approx((1.0, 4.0))
    assert stats["p50"] == pytest.approx(2.5)
    assert stats["p90"] == pytest.approx(3.7)
    assert describe([]) is None


def test_jain_index_on_hand_computed_examples() -> None:
    assert jain_index([5, 5, 5, 5]) == pytest.approx(1.0)
    assert jain_index([1, 0, 0, 0]) == pytest.approx(0.25)  # one of four gets everything: 1/n
    assert jain_index([1, 2, 3]) == pytest.approx(36 / 42)  # (1+2+3)^2 / (3 * (1+4+9))
    assert jain_index([10, 20]) == pytest.approx(0.9)  # 900 / (2 * 500)
    assert jain_index([0, 0]) == 1.0
    with pytest.raises(ValueError):
        jain_index([])
    with pytest.raises(ValueError):
        jain_index([1, -1])


def test_meets_slo() -> None:
    slo = {"slo_ttft_s": 0.2, "slo_tpot_s": 0.02}
    assert meets_slo(0.1, 0.01, **slo)
    assert meets_slo(0.2, 0.02, **slo)  # at the line counts as met
    assert not meets_slo(0.3, 0.01, **slo)
    assert not meets_slo(0.1, 0.05, **slo)
    assert not meets_slo(None, 0.01, **slo)  # no first token: not met
    assert meets_slo(0.1, None, **slo)  # one-token answer: no TPOT to hold against it
    assert meets_slo(9.0, 9.0, slo_ttft_s=None, slo_tpot_s=None)
