"""Summary statistics of timings: numpy over the exact values, an HDR histogram past a bound.

A day-long load run sends millions of requests; keeping every timing would grow without limit.
Up to ``EXACT_LIMIT`` values a series keeps them all and its statistics are exact. Past that the
values go into an HDR histogram (hdrhistogram, 3 significant digits: quantiles within 0.1 %), the
count, mean, std, min and max stay exact (running sums), and the statistics say which they are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .results import LatencyStats

PERCENTILES = (50, 90, 95, 99)
EXACT_LIMIT = 100_000
_HDR_UNIT = 1e-9  # the histogram counts nanoseconds
_HDR_MAX_NS = 24 * 3600 * 10**9


def known_sum(total: int | None, value: int | None) -> int | None:
    """A sum that becomes unknown once one part is unknown: a partial count must not pass for a total."""
    return None if total is None or value is None else total + value


def describe(values_s: Sequence[float]) -> LatencyStats:
    """count, mean, std (sample, ddof=1), CV %, min, max, p50/p90/p95/p99 and the raw values, in seconds."""
    arr = np.asarray(values_s, dtype=float)
    n = int(arr.size)
    if n == 0:
        return LatencyStats()
    mean = float(arr.mean())
    std = float(arr.std(ddof=1)) if n > 1 else None  # one value has no spread: not 0, unknown
    pct = np.percentile(arr, PERCENTILES)
    return LatencyStats(
        count=n,
        mean_s=mean,
        std_s=std,
        cv_percent=(100.0 * std / mean) if std is not None and mean > 0 else None,
        min_s=float(arr.min()),
        max_s=float(arr.max()),
        p50_s=float(pct[0]),
        p90_s=float(pct[1]),
        p95_s=float(pct[2]),
        p99_s=float(pct[3]),
        samples_s=tuple(float(v) for v in arr),
    )


class LatencySeries:
    """Timings of one kind of call, in bounded memory (see the module's docstring)."""

    __slots__ = ("_values", "_hist", "count", "_mean", "_m2", "_min", "_max", "_cached")

    def __init__(self) -> None:
        self._values: list[float] | None = []
        self._hist: Any = None
        self.count = 0
        self._mean = 0.0
        self._m2 = 0.0
        self._min = math.inf
        self._max = -math.inf
        self._cached: LatencyStats | None = None

    def add(self, seconds: float) -> None:
        self.count += 1
        if self._values is not None:
            # While exact, numpy describes the values themselves: no running sums on this hot path.
            self._values.append(seconds)
            if len(self._values) > EXACT_LIMIT:
                self._to_histogram()
        else:
            self._running(seconds, self.count)
            self._record(seconds)
        self._cached = None

    def _running(self, seconds: float, n: int) -> None:
        # Welford's update (the n-th value): exact running mean and variance, whatever the count.
        delta = seconds - self._mean
        self._mean += delta / n
        self._m2 += delta * (seconds - self._mean)
        self._min = min(self._min, seconds)
        self._max = max(self._max, seconds)

    def _to_histogram(self) -> None:
        from hdrh.histogram import HdrHistogram

        self._hist = HdrHistogram(1, _HDR_MAX_NS, 3)
        for n, v in enumerate(self._values or (), 1):
            self._running(v, n)
            self._record(v)
        self._values = None

    def _record(self, seconds: float) -> None:
        self._hist.record_value(min(_HDR_MAX_NS, max(1, round(seconds / _HDR_UNIT))))

    @property
    def values(self) -> list[float] | None:
        """Every value, while the series is exact; None past the bound."""
        return self._values

    def stats(self) -> LatencyStats:
        # A redraw asks again and again between two calls: describe the values once per change.
        if self._cached is None:
            self._cached = describe(self._values) if self._values is not None else self._from_histogram()
        return self._cached

    def _from_histogram(self) -> LatencyStats:
        std = math.sqrt(self._m2 / (self.count - 1)) if self.count > 1 else None
        q = {p: self._hist.get_value_at_percentile(p) * _HDR_UNIT for p in PERCENTILES}
        return LatencyStats(
            count=self.count,
            mean_s=self._mean,
            std_s=std,
            cv_percent=100.0 * std / self._mean if std is not None and self._mean > 0 else None,
            min_s=self._min,
            max_s=self._max,
            p50_s=q[50],
            p90_s=q[90],
            p95_s=q[95],
            p99_s=q[99],
            samples_s=None,
            quantiles="histogram",
        )
