"""histogram_quantile as Prometheus computes it, and counter increases across resets."""

from __future__ import annotations

import math

import pytest

from paraserve.controller.measurement.quantile import (
    bucket_increase,
    counter_increase,
    histogram_quantile,
    sum_buckets,
)

INF = math.inf
# Prometheus' promql/testdata/histograms.test: "testhistogram", start="positive" and "negative".
POSITIVE = {0.1: 5.0, 0.2: 7.0, 1.0: 11.0, INF: 12.0}
NEGATIVE = {-0.2: 1.0, -0.1: 2.0, 0.3: 2.0, INF: 3.0}


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (0.0, 0.0),  # the lowest bucket starts at 0
        (0.25, 0.06),  # rank 3 of 5 in (0, 0.1]
        (0.5, 0.15),  # rank 6: (0.1, 0.2], 1 of 2
        (0.75, 0.6),  # rank 9: (0.2, 1], 2 of 4
        (0.99, 1.0),  # rank 11.88 lies in +Inf: the largest finite bound
        (1.0, 1.0),
        (-1.0, -INF),
        (2.0, INF),
    ],
)
def test_positive_buckets_match_prometheus(q: float, expected: float) -> None:
    assert histogram_quantile(q, POSITIVE) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("q", "expected"),
    [(0.0, -0.2), (0.3, -0.2), (0.5, -0.15), (0.99, 0.3)],
)
def test_negative_lowest_bucket_returns_its_bound(q: float, expected: float) -> None:
    # A lowest bucket with upper bound ≤ 0 has no known start: Prometheus returns the bound.
    assert histogram_quantile(q, NEGATIVE) == pytest.approx(expected)


def test_nan_cases_are_none() -> None:
    assert histogram_quantile(0.99, {}) is None
    assert histogram_quantile(0.99, {INF: 4.0}) is None  # fewer than two buckets
    assert histogram_quantile(0.99, {0.1: 1.0, 0.2: 2.0}) is None  # no +Inf bucket
    assert histogram_quantile(0.99, {0.1: 0.0, INF: 0.0}) is None  # no observations
    assert histogram_quantile(math.nan, POSITIVE) is None


def test_non_monotonic_counts_are_smoothed_to_the_running_maximum() -> None:
    # A scrape racing an observation can show a lower bucket ahead of a higher one.
    racing = {0.1: 5.0, 0.2: 4.0, 1.0: 11.0, INF: 12.0}
    assert histogram_quantile(0.4, racing) == histogram_quantile(0.4, {**racing, 0.2: 5.0})


def test_buckets_may_be_given_in_any_order() -> None:
    shuffled = dict(reversed(list(POSITIVE.items())))
    assert histogram_quantile(0.75, shuffled) == pytest.approx(0.6)


def test_increase_subtracts_the_previous_scrape() -> None:
    before = {0.1: 5.0, 1.0: 8.0, INF: 8.0}
    after = {0.1: 5.0, 1.0: 18.0, INF: 20.0}
    assert bucket_increase(after, before) == {0.1: 0.0, 1.0: 10.0, INF: 12.0}
    # Only the window's observations count: all of them above 0.1.
    assert histogram_quantile(0.5, bucket_increase(after, before)) == pytest.approx(0.1 + 0.9 * 0.6)


def test_a_reset_histogram_counts_from_zero() -> None:
    before = {0.1: 50.0, INF: 60.0}
    after = {0.1: 1.0, INF: 2.0}  # the rank restarted
    assert bucket_increase(after, before) == after
    assert bucket_increase(after, None) == after


def test_counter_increase_handles_resets() -> None:
    assert counter_increase(130.0, 100.0) == 30.0
    assert counter_increase(7.0, 100.0) == 7.0
    assert counter_increase(100.0, 100.0) == 0.0


def test_sum_by_le() -> None:
    assert sum_buckets([{0.1: 1.0, INF: 2.0}, {0.1: 3.0, INF: 5.0}]) == {0.1: 4.0, INF: 7.0}
