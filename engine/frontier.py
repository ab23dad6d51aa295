"""Which matrix cells are worth running: the Pareto frontier of quality against each cost axis.

A cell is on an axis's frontier when no other cell is at least as good in quality and at least as
cheap on that axis, and strictly better in one of the two. Only cells that finished ``ok`` with both
figures measured take part: an unmeasured figure is never read as 0 (which would make a cell look
free or worthless), and an unstable, failed or out-of-memory cell's figures are not comparable.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .matrix.row import COST_AXES, Frontier, MatrixRow


def pareto(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points that are Pareto-optimal for quality (first, higher is better) against
    cost (second, lower is better), cheapest first (equal costs in index order).

    A point is dominated when another has quality >= and cost <= with at least one of them strict,
    so identical duplicates are both kept. A point with a NaN or infinite figure is never on the
    frontier and dominates nothing: it was not measured properly.
    """
    if len(points) == 0:
        return []
    arr = np.asarray(points, dtype=float).reshape(len(points), 2)
    index = np.flatnonzero(np.isfinite(arr).all(axis=1))
    if index.size == 0:
        return []
    q, c = arr[index, 0], arr[index, 1]
    # Cheapest first and, at one cost, best first; lexsort is stable, so ties stay in index order.
    order = np.lexsort((-q, c))
    qs, cs = q[order], c[order]
    # One group per distinct cost: its first element has the group's best quality.
    starts = np.flatnonzero(np.r_[True, cs[1:] != cs[:-1]])
    group = np.cumsum(np.r_[True, cs[1:] != cs[:-1]]) - 1
    best_here = qs[starts]
    # The best quality among strictly cheaper costs: a point must beat it, or a cheaper point dominates it.
    best_cheaper = np.r_[-np.inf, np.maximum.accumulate(best_here)[:-1]]
    # At its own cost a point must equal the best there, or the better point at that cost dominates it.
    keep = (qs == best_here[group]) & (qs > best_cheaper[group])
    return [int(i) for i in index[order[keep]]]


def _axis_figure(row: MatrixRow, field: str) -> float | None:
    value = getattr(row, field)
    return None if value is None else float(value)


def _no_frontier_why(rows: Sequence[MatrixRow], field: str, label: str) -> str:
    """One sentence for an axis no cell can be placed on."""
    if field == "energy_j_per_1000" and rows and all(r.energy_j_per_1000 is None for r in rows):
        # When every cell says why it has no energy figure, that reason is the useful one (a machine
        # without RAPL or NVML energy counters), not the generic sentence.
        reasons = list(dict.fromkeys(r.energy_why for r in rows if r.energy_why))
        if reasons and all(r.energy_why for r in rows):
            return f"no cell measured energy: {'; '.join(reasons)}"
    return _no_figure_why(label)


def _no_figure_why(label: str) -> str:
    return f"no cell has both a quality score and {label}"


def frontiers(rows: Sequence[MatrixRow]) -> tuple[Frontier, ...]:
    """One :class:`Frontier` per entry of ``COST_AXES``, over the ok cells with a quality score and
    that axis's figure; ``cells`` and ``considered`` are cheapest first."""
    out: list[Frontier] = []
    for field, label, _unit in COST_AXES:
        candidates: list[tuple[float, float, MatrixRow]] = []
        for row in rows:
            cost = _axis_figure(row, field)
            if row.status != "ok" or row.quality is None or cost is None:
                continue
            candidates.append((float(row.quality), cost, row))
        # Cheapest first; equal costs best first, then the matrix's run order, so the output is stable.
        candidates.sort(key=lambda t: (t[1], -t[0], t[2].order, t[2].cell_id))
        if not candidates:
            out.append(Frontier(axis=field, why=_no_frontier_why(rows, field, label)))
            continue
        on = pareto([(q, c) for q, c, _ in candidates])
        out.append(
            Frontier(
                axis=field,
                cells=tuple(candidates[i][2].cell_id for i in on),
                considered=tuple(r.cell_id for _, _, r in candidates),
                # Every candidate non-finite: no frontier, and the one sentence every view shows. Not the energy
                # sentence: a candidate here has an energy figure, so not every cell lacks one.
                why=None if on else _no_figure_why(label),
            )
        )
    return tuple(out)
