from __future__ import annotations

import statistics

import numpy as np
import pytest

from embprof.engine import stats
from embprof.engine.stats import LatencySeries, describe


def test_describe_agrees_with_the_standard_library() -> None:
    values = [0.51, 0.49, 0.55, 0.62, 0.48, 0.50, 0.53]
    d = describe(values)
    assert d.count == 7
    assert d.mean_s == pytest.approx(statistics.fmean(values))
    assert d.std_s == pytest.approx(statistics.stdev(values))
    assert d.cv_percent == pytest.approx(100 * statistics.stdev(values) / statistics.fmean(values))
    assert d.p50_s == pytest.approx(statistics.median(values))
    assert d.min_s == min(values) and d.max_s == max(values)
    # statistics.quantiles(method="inclusive") is numpy's default linear interpolation
    q = statistics.quantiles(values, n=100, method="inclusive")
    assert d.p90_s == pytest.approx(q[89])
    assert d.p99_s == pytest.approx(q[98])
    assert d.samples_s == tuple(values) and d.quantiles == "exact"


def test_describe_single_and_empty() -> None:
    assert describe([]).count == 0 and describe([]).mean_s is None
    one = describe([1.5])
    # One call has no spread: unknown, never shown as 0.
    assert one.std_s is None and one.cv_percent is None and one.p95_s == 1.5


def test_a_long_series_stays_bounded_and_close_to_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stats, "EXACT_LIMIT", 1_000)
    rng = np.random.default_rng(3)
    values = rng.lognormal(mean=-4.0, sigma=0.6, size=20_000)
    series = LatencySeries()
    for v in values:
        series.add(float(v))
    got = series.stats()
    assert series.values is None and got.samples_s is None and got.quantiles == "histogram"
    # count, mean, std, min and max stay exact; the quantiles are within the histogram's 0.1 %.
    assert got.count == values.size
    assert got.mean_s == pytest.approx(float(values.mean()), rel=1e-9)
    assert got.std_s == pytest.approx(float(values.std(ddof=1)), rel=1e-9)
    assert got.min_s == pytest.approx(float(values.min())) and got.max_s == pytest.approx(float(values.max()))
    for p, field in ((50, "p50_s"), (90, "p90_s"), (99, "p99_s")):
        assert getattr(got, field) == pytest.approx(float(np.percentile(values, p)), rel=2e-3)
