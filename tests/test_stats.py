from __future__ import annotations

import statistics

import pytest

from embprof.engine.stats import describe


def test_describe_agrees_with_the_standard_library() -> None:
    values = [0.51, 0.49, 0.55, 0.62, 0.48, 0.50, 0.53]
    d = describe(values)
    assert d["count"] == 7
    assert d["mean_s"] == pytest.approx(statistics.fmean(values))
    assert d["std_s"] == pytest.approx(statistics.stdev(values))
    assert d["cv_percent"] == pytest.approx(100 * statistics.stdev(values) / statistics.fmean(values))
    assert d["p50_s"] == pytest.approx(statistics.median(values))
    assert d["min_s"] == min(values) and d["max_s"] == max(values)
    # statistics.quantiles(method="inclusive") is numpy's default linear interpolation
    q = statistics.quantiles(values, n=100, method="inclusive")
    assert d["p90_s"] == pytest.approx(q[89])
    assert d["p99_s"] == pytest.approx(q[98])
    assert d["samples_s"] == values


def test_describe_single_and_empty() -> None:
    assert describe([])["count"] == 0
    one = describe([1.5])
    assert one["std_s"] == 0.0 and one["p95_s"] == 1.5
