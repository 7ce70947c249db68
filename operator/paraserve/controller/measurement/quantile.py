"""Prometheus' `histogram_quantile` and counter increases, as pure functions of bucket counts."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

#: Cumulative bucket counts by upper bound (`le`), the +Inf bucket included.
Buckets = Mapping[float, float]


def histogram_quantile(q: float, buckets: Buckets) -> float | None:
    """The q-quantile exactly as PromQL's `histogram_quantile` computes it; None for NaN.

    Linear interpolation inside the bucket holding the rank; a rank in the +Inf bucket returns
    the largest finite upper bound; the lowest bucket starts at 0 (unless its upper bound is
    ≤ 0, then that bound is returned). Non-monotonic counts (a scrape racing observations) are
    smoothed to the running maximum, as Prometheus does. Fewer than two buckets, no +Inf
    bucket, or no observations give None (Prometheus' NaN).
    """
    if math.isnan(q):
        return None
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    bounds = sorted(buckets)
    if len(bounds) < 2 or not math.isinf(bounds[-1]) or bounds[-1] < 0:
        return None
    counts: list[float] = []
    running = 0.0
    for bound in bounds:
        running = max(running, buckets[bound])
        counts.append(running)
    observations = counts[-1]
    if observations == 0 or math.isnan(observations):
        return None
    rank = q * observations
    b = next(i for i, count in enumerate(counts) if count >= rank)
    if b == len(bounds) - 1:
        return bounds[-2]
    if b == 0 and bounds[0] <= 0:
        return bounds[0]
    start, end, count = 0.0, bounds[b], counts[b]
    if b > 0:
        start = bounds[b - 1]
        count -= counts[b - 1]
        rank -= counts[b - 1]
    return start + (end - start) * (rank / count)


def bucket_increase(current: Buckets, previous: Buckets | None) -> dict[float, float]:
    """Counts observed between two scrapes (like `increase(x_bucket[w])`).

    Without a previous scrape, or after a counter reset (any bucket went down: the rank
    restarted), the current cumulative counts are the increase.
    """
    if previous is None or any(current.get(le, 0.0) < v for le, v in previous.items()):
        return dict(current)
    return {le: value - previous.get(le, 0.0) for le, value in current.items()}


def counter_increase(current: float, previous: float) -> float:
    """Increase of a counter between two samples; a drop is a reset, so it counts from zero."""
    return current if current < previous else current - previous


def sum_buckets(histograms: Sequence[Buckets]) -> dict[float, float]:
    """`sum by (le)`: bucket counts added across series (missing bounds count as absent)."""
    total: dict[float, float] = {}
    for histogram in histograms:
        for le, value in histogram.items():
            total[le] = total.get(le, 0.0) + value
    return total
