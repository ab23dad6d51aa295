"""The Pareto frontier against a plain brute force, and which matrix cells take part in it."""

from __future__ import annotations

import numpy as np
import pytest

from embprof.engine.frontier import frontiers, pareto
from embprof.engine.matrix.row import COST_AXES, MatrixRow


def brute_force(points: list[tuple[float, float]]) -> set[int]:
    """The definition, written out: i is kept unless some j is at least as good on both and strictly
    better on one (quality higher is better, cost lower is better)."""
    kept = set()
    for i, (qi, ci) in enumerate(points):
        dominated = False
        for j, (qj, cj) in enumerate(points):
            if j != i and qj >= qi and cj <= ci and (qj > qi or cj < ci):
                dominated = True
                break
        if not dominated:
            kept.add(i)
    return kept


def _random_points(rng: np.random.Generator, n: int, kind: str) -> list[tuple[float, float]]:
    if kind == "continuous":
        q, c = rng.random(n), rng.lognormal(0.0, 2.0, n)
    elif kind == "ties":  # few distinct values: many equal qualities, equal costs and exact duplicates
        q, c = rng.integers(0, 4, n).astype(float), rng.integers(0, 4, n).astype(float)
    else:  # "duplicates": a handful of points, each repeated several times
        base_q, base_c = rng.random(max(1, n // 4)), rng.random(max(1, n // 4))
        pick = rng.integers(0, base_q.size, n)
        q, c = base_q[pick], base_c[pick]
    return [(float(a), float(b)) for a, b in zip(q, c)]


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 7, 42])
@pytest.mark.parametrize("n", [1, 2, 3, 5, 17, 64, 200])
@pytest.mark.parametrize("kind", ["continuous", "ties", "duplicates"])
def test_pareto_matches_brute_force(seed: int, n: int, kind: str) -> None:
    points = _random_points(np.random.default_rng(seed), n, kind)
    got = pareto(points)
    assert len(got) == len(set(got)), "an index is listed twice"
    assert set(got) == brute_force(points)
    # Cheapest first, as documented.
    costs = [points[i][1] for i in got]
    assert costs == sorted(costs)


def test_pareto_keeps_identical_duplicates_and_drops_weak_ties() -> None:
    points = [(0.8, 1.0), (0.8, 1.0), (0.7, 1.0), (0.8, 2.0), (0.9, 3.0), (0.9, 3.0)]
    assert pareto(points) == [0, 1, 4, 5]
    assert pareto([]) == []
    assert pareto([(0.5, 0.0)]) == [0]


def test_pareto_ignores_unmeasured_figures() -> None:
    # A NaN is not a figure: it neither sits on the frontier nor pushes a measured point off it.
    points = [(float("nan"), 0.1), (0.5, 1.0), (0.9, float("nan")), (0.6, float("inf"))]
    assert pareto(points) == [1]


def _row(cell_id: str, order: int, **kw: object) -> MatrixRow:
    base: dict[str, object] = dict(cell_id=cell_id, label=f"m · {cell_id}", order=order, model="m", backend="torch",
                                   status="ok", energy_why=None)
    base.update(kw)
    return MatrixRow.model_validate(base)


def test_frontiers_take_only_ok_cells_with_both_figures() -> None:
    no_counter = "no energy counter on this machine"
    rows = [
        _row("ref", 0, quality=0.82, p50_s=0.040, peak_rss_bytes=900 << 20, energy_why=no_counter),
        _row("int8", 1, quality=0.81, p50_s=0.012, peak_rss_bytes=400 << 20, energy_why=no_counter),
        _row("binary", 2, quality=0.74, p50_s=0.011, peak_rss_bytes=400 << 20, energy_why=no_counter),
        _row("slow-bad", 3, quality=0.70, p50_s=0.050, peak_rss_bytes=950 << 20, energy_why=no_counter),
        # Would dominate everything if it were read: it must not be, it did not finish ok.
        _row("oom", 4, status="oom", reason="out of memory", quality=0.99, p50_s=0.001, peak_rss_bytes=1, energy_why=no_counter),
        _row("unstable", 5, status="unstable", quality=0.99, p50_s=0.001, peak_rss_bytes=1, energy_why=no_counter),
        # ok but unscored, and ok but untimed: never placed at 0.
        _row("no-quality", 6, p50_s=0.0001, peak_rss_bytes=1, energy_why=no_counter),
        _row("no-latency", 7, quality=0.95, peak_rss_bytes=5000 << 20, energy_why=no_counter),
    ]
    fr = {f.axis: f for f in frontiers(rows)}
    assert tuple(fr) == tuple(axis for axis, _, _ in COST_AXES)

    lat = fr["p50_s"]
    assert lat.why is None
    assert lat.considered == ("binary", "int8", "ref", "slow-bad")  # cheapest first
    assert lat.cells == ("binary", "int8", "ref")

    mem = fr["peak_rss_bytes"]
    # binary ties int8 on memory with a lower quality: dominated; no-latency is the best quality at a high cost.
    assert mem.cells == ("int8", "ref", "no-latency")
    assert "oom" not in mem.considered and "no-quality" not in mem.considered

    energy = fr["energy_j_per_1000"]
    assert energy.cells == () and energy.considered == ()
    assert energy.why == "no cell measured energy: no energy counter on this machine"


def test_frontier_why_in_general() -> None:
    rows = [_row("a", 0, quality=None, p50_s=0.01), _row("b", 1, status="failed", reason="boom", quality=0.5, p50_s=0.02)]
    fr = {f.axis: f for f in frontiers(rows)}
    assert fr["p50_s"].why == "no cell has both a quality score and p50 latency"
    # No row says why it has no energy figure: the general sentence, not an invented reason.
    assert fr["energy_j_per_1000"].why == "no cell has both a quality score and energy per 1,000 texts"
    assert frontiers([])[0].why == "no cell has both a quality score and p50 latency"


def test_frontier_with_energy() -> None:
    rows = [
        _row("a", 0, quality=0.8, energy_j_per_1000=120.0, energy_source="rapl package"),
        _row("b", 1, quality=0.7, energy_j_per_1000=30.0, energy_source="rapl package"),
        _row("c", 2, quality=0.6, energy_j_per_1000=60.0, energy_source="rapl package"),
    ]
    energy = {f.axis: f for f in frontiers(rows)}["energy_j_per_1000"]
    assert energy.why is None
    assert energy.cells == ("b", "a") and energy.considered == ("b", "c", "a")


def test_equal_costs_are_considered_best_first_whatever_their_order() -> None:
    rows = [_row("worse", 0, quality=0.5, p50_s=0.02), _row("better", 1, quality=0.9, p50_s=0.02), _row("cheap", 2, quality=0.1, p50_s=0.01)]
    lat = {f.axis: f for f in frontiers(rows)}["p50_s"]
    assert lat.considered == ("cheap", "better", "worse") and lat.cells == ("cheap", "better")


def test_cells_whose_figures_are_not_finite_place_none_and_say_why() -> None:
    rows = [_row("a", 0, quality=float("nan"), p50_s=0.01), _row("b", 1, quality=0.5, p50_s=float("inf"))]
    lat = {f.axis: f for f in frontiers(rows)}["p50_s"]
    assert lat.considered == ("a", "b") and lat.cells == ()
    assert lat.why == "no cell has both a quality score and p50 latency"


def test_only_the_energy_axis_says_why_no_cell_measured_energy() -> None:
    # Every cell says why it has no energy figure, and none has a quality score either: the latency axis says what
    # it lacks, not the energy reason.
    rows = [_row("a", 0, quality=None, p50_s=0.01, energy_why="no RAPL"), _row("b", 1, quality=None, p50_s=0.02, energy_why="no NVML")]
    fr = {f.axis: f for f in frontiers(rows)}
    assert fr["p50_s"].why == "no cell has both a quality score and p50 latency"
    assert fr["energy_j_per_1000"].why == "no cell measured energy: no RAPL; no NVML"
    # One cell without a reason: no reason is every cell's, so the general sentence.
    rows[1] = _row("b", 1, quality=0.5, p50_s=0.02)
    assert {f.axis: f for f in frontiers(rows)}["energy_j_per_1000"].why == "no cell has both a quality score and energy per 1,000 texts"
    # A cell that measured energy (with a note beside it) but has no quality score: energy was measured.
    measured = [_row("c", 0, quality=None, energy_j_per_1000=50.0, energy_source="rapl package", energy_why="package only")]
    assert {f.axis: f for f in frontiers(measured)}["energy_j_per_1000"].why == \
        "no cell has both a quality score and energy per 1,000 texts"
