"""The sweep's statistics against independent arithmetic: the median's interval by counting
binomial probabilities with math.comb, the fit against numpy's polyfit."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from embprof.engine.errors import UserError
from embprof.engine.sweepstats import StopRule, differ, fit_latency, human_seconds, median_ci, relative_half_width
from embprof.engine.plan import parse_axes
from embprof.engine.results import SweepPoint
from embprof.engine.stats import describe
from embprof.engine.workloads.sweep import latency_fits


def coverage(n: int, k: int) -> float:
    """P(x(k) <= median <= x(n-k+1)) = 1 - 2 P(Bin(n, 1/2) <= k - 1), by direct summation."""
    tail = sum(math.comb(n, j) for j in range(k)) / 2**n
    return 1 - 2 * tail


@pytest.mark.parametrize("n", [6, 7, 10, 20, 41])
def test_median_interval_is_the_widest_rank_with_95_percent_coverage(n: int) -> None:
    values = [float(v) for v in range(1, n + 1)]
    random.Random(n).shuffle(values)
    lo, hi = median_ci(values) or (None, None)
    assert lo is not None and hi is not None
    k = int(lo)  # the values are their own ranks
    assert hi == n - k + 1
    assert coverage(n, k) >= 0.95
    assert coverage(n, k + 1) < 0.95  # one rank narrower would not reach 95 %


def test_too_few_values_have_no_interval() -> None:
    assert median_ci([1.0, 2.0, 3.0, 4.0, 5.0]) is None
    assert relative_half_width([1.0] * 5) is None


def test_stop_rule() -> None:
    rule = StopRule(target=0.02, budget_s=10.0)
    steady = [1.0, 1.001, 0.999, 1.002, 0.998, 1.0]
    assert rule.verdict(steady[:5], 5.0) is None  # not yet six values
    assert rule.verdict(steady, 6.0) == "precision"
    noisy = [1.0, 1.3, 0.8, 1.2, 0.9, 1.1]
    assert rule.verdict(noisy, 6.0) is None
    assert rule.verdict(noisy, 9.5) == "budget"  # a seventh repetition would overrun 10 s
    assert StopRule(max_repeats=6).verdict(noisy, 1.0) == "max-repeats"


def test_fit_recovers_a_line_like_polyfit() -> None:
    rng = np.random.default_rng(1)
    lines = np.repeat([25, 50, 100, 200], 6).astype(float)
    secs = 0.28 + 0.0084 * lines + rng.normal(0, 0.002, lines.size)
    fit = fit_latency(lines, lines * 17, secs)  # tokens in step with lines
    assert fit is not None
    slope, intercept = np.polyfit(lines, secs, 1)
    assert fit.coef["per_line"] == pytest.approx(slope, rel=1e-9)
    assert fit.coef["fixed"] == pytest.approx(intercept, rel=1e-9)
    assert fit.dropped == ["per_token"] and "in step" in fit.why_dropped
    assert fit.ci["per_line"][0] < 0.0084 < fit.ci["per_line"][1]
    assert fit.r2 > 0.99
    assert fit.formula() == f"{human_seconds(intercept)} + {human_seconds(slope)} a line"
    assert fit.predict(150, 0) == pytest.approx(intercept + slope * 150)


def test_fit_with_lines_and_tokens_against_lstsq() -> None:
    lines = np.array([10, 10, 20, 20, 40, 40], dtype=float)
    tokens = np.array([100, 400, 200, 900, 400, 1500], dtype=float)
    secs = 0.05 + 0.002 * lines + 0.0001 * tokens
    fit = fit_latency(lines, tokens, secs)
    assert fit is not None and fit.terms == ["fixed", "per_line", "per_token"]
    coef, *_ = np.linalg.lstsq(np.column_stack([np.ones(6), lines, tokens]), secs, rcond=None)
    assert [fit.coef[t] for t in fit.terms] == pytest.approx(list(coef), rel=1e-6, abs=1e-12)


def test_sweep_fit_takes_each_points_median_so_one_slow_call_does_not_move_it() -> None:
    rng = np.random.default_rng(7)
    points = []
    for n in (25, 50, 100, 200):
        samples = list(0.3 + 0.005 * n + rng.normal(0, 0.004, 7))
        if n == 25:
            samples[3] = 3.0  # a call that waited on something else on a busy machine
        points.append(SweepPoint(status="ok", params={"lines": n}, label=f"lines={n}", lines=n, batch_size=32, repeats=7,
                                 tokens=22.0 * n, median_s=float(np.median(samples)), stats=describe(samples),
                                 padding_percent=30.0 + n / 25))
    (fit,) = latency_fits(points)
    medians = [p.median_s for p in points]
    slope, intercept = np.polyfit([25, 50, 100, 200], medians, 1)
    assert fit.coef["per_line"] == pytest.approx(slope, rel=1e-9)
    assert fit.coef["fixed"] == pytest.approx(intercept, rel=1e-9)
    assert fit.observations == 4 and fit.timings == 28
    assert fit.r2 is not None and fit.r2 > 0.99
    assert not fit.padding_note  # 31 % to 38 %: within the spread that passes without a note
    points[0] = points[0].model_copy(update={"padding_percent": 75.0})  # 25 mixed lengths in one batch, padded to the longest
    note = latency_fits(points)[0].padding_note
    assert "from 32 % to 75 %" in note and "fixed cost is padding" in note
    assert latency_fits(points)[0].padding_percent_range == (32.0, 75.0)
    # The same timings fitted one by one: the slow call alone drags R² far down.
    every = fit_latency([p.lines for p in points for _ in range(7)], [0.0] * 28, [s for p in points for s in p.stats.samples_s or ()])
    assert every is not None and every.r2 is not None and every.r2 < 0.5


def test_fit_through_as_many_points_as_terms_is_exact() -> None:
    fit = fit_latency([25.0, 100.0], [0.0, 0.0], [0.4, 0.85])
    assert fit is not None and fit.r2 is None and fit.ci == {}
    assert fit.coef["per_line"] == pytest.approx(0.45 / 75)
    assert fit.predict(25, 0) == pytest.approx(0.4)
    assert fit_latency([25.0], [0.0], [0.4]) is None


def test_differ_says_when_samples_are_apart() -> None:
    a = [1.0, 1.01, 0.99, 1.02, 0.98, 1.0, 1.01]
    assert differ(a, [x * 1.2 for x in a])["beyond_noise"] is True
    assert differ(a, list(reversed(a)))["beyond_noise"] is False
    assert differ([1.0], a)["p_value"] is None


@pytest.mark.parametrize(
    "axes, message",
    [
        ([], "at least one axis"),
        (["lines"], "needs values"),
        (["lines="], "has no values"),
        (["width=3"], "unknown axis 'width'"),
        (["lines=25,x"], "whole numbers, not 'x'"),
        (["lines=0"], "at least 1"),
        (["lines=25,25"], "repeats a value"),
        (["lines=25", "lines=50"], "given twice"),
        (["device=tpu"], "axis 'device'"),
        (["dtype=int8"], "axis 'dtype'"),
    ],
)
def test_bad_axes_get_one_sentence(axes: list[str], message: str) -> None:
    with pytest.raises(UserError, match=message):
        parse_axes(axes)
