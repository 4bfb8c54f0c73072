"""The counters of one proxy process (``Stats``), and latency histograms with
fixed buckets, so that the reports of several worker processes can be added
up before percentiles are read.

Buckets grow by 10%: a percentile read from them is within 10% of the true
value, from 10 microseconds to about 90 seconds.

Besides, every round trip since the process started is counted in the coarse
buckets of ``LATENCY_BUCKETS_SECONDS`` with their sum (exactly up to MAX_SAMPLES
per report, scaled from the thinned samples past it): the histogram Prometheus
scrapes (``eve_interlay_backend_latency_seconds``, issue 24), which adds up
across processes and interlays and can be re-quantiled.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterable, Sequence

from proxy import messages

__all__ = ["BOUNDS_MS", "LATENCY_BUCKETS_SECONDS", "MAX_SAMPLES", "Stats", "histogram", "merge", "percentile"]

MAX_SAMPLES = 100_000   # round trips kept per report; more are thinned out evenly

# Upper bound of each bucket, in milliseconds; the last bucket takes everything above.
BOUNDS_MS: tuple[float, ...] = tuple(0.01 * 1.1**i for i in range(170))
# Upper bounds (seconds) of the exported latency histogram, as Redis exporters and proxies
# bucket round trips: 50 microseconds (a loopback GET) to 10 seconds (a busy script).
LATENCY_BUCKETS_SECONDS: tuple[float, ...] = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                              0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


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


class Stats:
    """Counters of one process; ``samples`` are backend round trips (seconds) since the last report."""

    __slots__ = ("ops", "errors", "protocol_errors", "backend_ops", "backend_errors", "samples", "connections",
                 "rejected", "noscript_replies", "latency_buckets", "latency_sum", "_last_ops", "_last_time")

    def __init__(self) -> None:
        self.ops = 0
        self.errors = 0           # errors the interlay itself answered (unavailable backend, protocol errors)
        self.protocol_errors = 0
        self.backend_ops = 0
        self.backend_errors = 0   # error replies from the backend, and commands a lost connection failed
        self.samples: list[float] = []
        self.connections = 0
        self.rejected = 0
        self.noscript_replies = 0  # NOSCRIPT errors that reached clients (those the interlay saw: proxy.routing)
        # Every round trip since the start: counts per LATENCY_BUCKETS_SECONDS bound (then above), sum.
        self.latency_buckets = [0] * (len(LATENCY_BUCKETS_SECONDS) + 1)
        self.latency_sum = 0.0
        self._last_ops = 0
        self._last_time = time.monotonic()

    def _count_latency(self, samples: list[float], total: int) -> None:
        """Add ``total`` round trips to the exported histogram, from ``samples`` (all of them, or
        an even thinning of them past MAX_SAMPLES: then each kept one stands for its share, so
        the count stays exact and the buckets and sum are scaled, at no more cost per report)."""
        if not total:
            return
        counts = [0] * len(self.latency_buckets)
        bounds = LATENCY_BUCKETS_SECONDS
        for sample in samples:
            counts[bisect.bisect_left(bounds, sample)] += 1
        scale = total / len(samples)
        if scale != 1:
            counts = [round(count * scale) for count in counts]
            counts[max(range(len(counts)), key=counts.__getitem__)] += total - sum(counts)
        for i, count in enumerate(counts):
            self.latency_buckets[i] += count
        self.latency_sum += sum(samples) * scale

    def report(self, worker: int, label: str, sides: tuple = (), dirty_pending: int = 0,
               cross_slot: tuple = ()) -> messages.StatsReport:
        now = time.monotonic()
        samples, self.samples = self.samples, []
        total = len(samples)
        if total > MAX_SAMPLES:
            samples = samples[:: total // MAX_SAMPLES + 1]
        self._count_latency(samples, total)
        interval_ops, self._last_ops = self.ops - self._last_ops, self.ops
        seconds, self._last_time = now - self._last_time, now
        backend = messages.BackendReport(label, self.backend_ops, self.backend_errors,
                                         histogram(sample * 1000.0 for sample in samples),
                                         tuple(self.latency_buckets), self.latency_sum)
        return messages.StatsReport(worker=worker, connections=self.connections, ops=self.ops,
                                    errors=self.errors + self.backend_errors, interval_ops=interval_ops,
                                    interval_seconds=seconds, backends=(backend,), sides=sides,
                                    dirty_pending=dirty_pending, noscript_replies=self.noscript_replies,
                                    cross_slot=cross_slot)
