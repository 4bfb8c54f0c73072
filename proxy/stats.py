"""Latency histograms with fixed buckets, so that the reports of several
worker processes can be added up before percentiles are read.

Buckets grow by 10%: a percentile read from them is within 10% of the true
value, from 10 microseconds to about 90 seconds.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence

__all__ = ["BOUNDS_MS", "histogram", "merge", "percentile"]

# Upper bound of each bucket, in milliseconds; the last bucket takes everything above.
BOUNDS_MS: tuple[float, ...] = tuple(0.01 * 1.1**i for i in range(170))


def histogram(samples_ms: Iterable[float]) -> tuple[int, ...]:
    counts = [0] * (len(BOUNDS_MS) + 1)
    bounds = BOUNDS_MS
    for sample in samples_ms:
        counts[bisect.bisect_left(bounds, sample)] += 1
    # Trailing zeros are dropped to keep reports small.
    last = len(counts)
    while last and not counts[last - 1]:
        last -= 1
    return tuple(counts[:last])


def merge(histograms: Iterable[Sequence[int]]) -> tuple[int, ...]:
    total: list[int] = []
    for hist in histograms:
        if len(hist) > len(total):
            total.extend([0] * (len(hist) - len(total)))
        for i, count in enumerate(hist):
            total[i] += count
    return tuple(total)


def percentile(hist: Sequence[int], q: float) -> float:
    """The q-th percentile (0..100) in milliseconds: the upper bound of the
    bucket holding it; 0.0 for an empty histogram."""
    total = sum(hist)
    if not total:
        return 0.0
    rank = max(1, round(total * q / 100.0))
    seen = 0
    for i, count in enumerate(hist):
        seen += count
        if seen >= rank:
            return BOUNDS_MS[min(i, len(BOUNDS_MS) - 1)]
    return BOUNDS_MS[-1]
