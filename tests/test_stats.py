from __future__ import annotations

import math
import statistics
from pathlib import Path

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
    assert d.p95_s == pytest.approx(q[94])
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
    assert got.cv_percent == pytest.approx(100 * float(values.std(ddof=1)) / float(values.mean()), rel=1e-9)
    for p, field in ((50, "p50_s"), (90, "p90_s"), (95, "p95_s"), (99, "p99_s")):
        assert getattr(got, field) == pytest.approx(float(np.percentile(values, p)), rel=2e-3)


# Twenty timings of 0.1, 0.2 … 2.0 s. Their quantiles by hand, with numpy's default (linear) rule: the q-th is at rank
# (20 - 1) q / 100 of the sorted values, between the two values around it: p95 at rank 18.05, 5 % of the way from
# the 19th value (1.9) to the 20th (2.0).
TWENTY = [i / 10 for i in range(1, 21)]
BY_HAND = {"p50_s": 1.05, "p90_s": 1.81, "p95_s": 1.905, "p99_s": 1.981}


def test_the_quantiles_are_those_worked_by_hand() -> None:
    d = describe(TWENTY)
    for field, value in BY_HAND.items():
        assert getattr(d, field) == pytest.approx(value, abs=1e-12), field


def test_show_prints_the_p95_worked_by_hand(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The figure a user reads: twenty timed calls in a snapshot, and the p95 row of `show`'s latency table."""
    from cli_helpers import run_cli_in_process
    from embprof.engine.events import EncodeTimed, RunFinished, RunStarted
    from embprof.engine.plan import RunPlan
    from embprof.engine.results import TargetFacts
    from embprof.engine.snapshot import save
    from embprof.engine.workload_facts import EncodeFacts
    from fake_engine import snapshot_of

    events = [RunStarted(t_ns=0, run_id="r1", started_utc="2026-01-01T00:00:00+00:00",
                         target=TargetFacts(backend="sentence-transformers", model_name="m", device="cpu"), workload=EncodeFacts(),
                         sample_hz=10.0, plan=RunPlan())]
    events += [EncodeTimed(t_ns=i + 1, phase_id=0, call_index=i, label=f"repeat {i + 1}", items=1, tokens=1, words=1, duration_ns=round(v * 1e9),
                           warmup=False, group="encode") for i, v in enumerate(TWENTY)]
    events.append(RunFinished(t_ns=100, status="complete", duration_ns=100))
    path = save(snapshot_of(events), tmp_path)
    rc, out, err = run_cli_in_process(["show", str(path)], capsys)
    assert rc == 0, err
    rows = {line.split()[0]: line.split()[2] for line in out.splitlines() if line.split()[:1] in (["p50"], ["p90"], ["p95"], ["p99"])}
    assert rows == {"p50": "1.050", "p90": "1.810", "p95": "1.905", "p99": "1.981"}, out


def test_a_sum_with_an_unknown_part_is_unknown() -> None:
    assert stats.known_sum(2, 3) == 5
    assert stats.known_sum(None, 3) is None and stats.known_sum(2, None) is None


def test_two_values_have_a_spread_and_zero_timings_no_cv() -> None:
    two = describe([1.0, 3.0])
    assert two.std_s == pytest.approx(math.sqrt(2)) and two.cv_percent == pytest.approx(100 * math.sqrt(2) / 2)
    # Calls too quick for the clock: no spread, and a CV of 0 / 0 is unknown, never a division error.
    zeros = describe([0.0, 0.0])
    assert zeros.std_s == 0.0 and zeros.cv_percent is None and zeros.p95_s == 0.0


def test_an_empty_series_has_no_figures() -> None:
    assert LatencySeries().stats() == describe([]) and LatencySeries().stats().count == 0


def test_a_series_keeps_every_value_up_to_its_bound_and_not_one_more(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stats, "EXACT_LIMIT", 3)
    series = LatencySeries()
    for v in (0.1, 0.2, 0.3):
        series.add(v)
    assert series.values == [0.1, 0.2, 0.3] and series.stats().quantiles == "exact"
    series.add(0.4)
    assert series.values is None and series.stats().quantiles == "histogram" and series.stats().count == 4


def test_a_histogram_of_nanosecond_timings_keeps_them_to_the_nanosecond(monkeypatch: pytest.MonkeyPatch) -> None:
    """The running sums start from nothing (a mean that started anywhere else would carry rounding into a mean of
    nanoseconds), and the histogram resolves a single nanosecond, so 100 ns is 100 ns, not 101."""
    monkeypatch.setattr(stats, "EXACT_LIMIT", 1)
    series = LatencySeries()
    for v in (1e-9, 3e-9):
        series.add(v)
    got = series.stats()
    assert got.quantiles == "histogram" and got.count == 2
    assert got.mean_s == pytest.approx(2e-9, rel=1e-12) and got.std_s == pytest.approx(math.sqrt(2) * 1e-9, rel=1e-12)
    assert got.cv_percent == pytest.approx(100 * math.sqrt(2) / 2, rel=1e-12)
    hundred = LatencySeries()
    for _ in range(5):
        hundred.add(100e-9)
    assert all(getattr(hundred.stats(), f) == pytest.approx(100e-9, rel=1e-3) for f in ("p50_s", "p90_s", "p95_s", "p99_s"))


def test_a_histogram_of_one_value_or_of_zeros_has_no_cv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stats, "EXACT_LIMIT", 0)
    one = LatencySeries()
    one.add(0.5)
    got = one.stats()
    assert got.quantiles == "histogram" and got.count == 1 and got.std_s is None and got.cv_percent is None
    zeros = LatencySeries()
    zeros.add(0.0)
    zeros.add(0.0)
    got = zeros.stats()
    # A timing under the histogram's nanosecond is counted as one: its quantiles say "at most 1 ns".
    assert got.std_s == 0.0 and got.cv_percent is None and got.p50_s == pytest.approx(1e-9) and got.max_s == 0.0
