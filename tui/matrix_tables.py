"""The matrix's table on the terminal: what a headless run prints, and what the dashboard leaves behind
when it closes. Below both ``matrix_cli`` and ``matrix_app``, which each use it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the engine's matrix is imported when a table is printed, not when the command line starts
    from embprof.engine.matrix import Manifest, MatrixRow

# The terminal's table: what a decision needs at a glance; `embprof export DIR --format md|html` has every column.
CONSOLE_COLUMNS = ("cell", "status", "quality", "agreement mean", "top-k overlap", "p50 ms", "items/s", "peak RSS MiB", "load s",
                   "energy J/1k", "frontier")


def print_tables(out: Any, manifest: Manifest, table_rows: list[MatrixRow]) -> None:
    """The compact table (reasons said once, by number, under it), what was dropped, and each frontier."""
    from embprof.engine.frontier import frontiers
    from embprof.engine.matrix_report import matrix_tables
    from embprof.engine.tables import NA, Table

    from .console import render_table

    tables = matrix_tables(table_rows, frontiers(table_rows), [])
    main = tables[0]
    tasks = list(manifest.spec.base.workload.tasks)
    keep = [i for i, c in enumerate(main.columns) if c in CONSOLE_COLUMNS or c in tasks]
    reasons: dict[str, int] = {}
    compact = Table(main.name, main.title, [main.columns[i] for i in keep])
    for row in main.rows:
        cells: list[Any] = []
        for i in keep:
            v = row[i]
            if isinstance(v, NA) and v.reason and main.columns[i] != "cell":
                # A reason shared by a column is said once under the table, by number, not in every cell.
                n = reasons.setdefault(v.reason, len(reasons) + 1)
                v = f"n/a ({n})"
            cells.append(v)
        compact.rows.append(cells)
    render_table(out, compact)
    for reason, n in reasons.items():
        out.print(f"  ({n}) {reason}", markup=False, soft_wrap=True)
    by_reason: dict[str, list[str]] = {}
    for d in manifest.dropped:
        by_reason.setdefault(d.reason, []).append(d.label)
    for reason, labels in by_reason.items():
        out.print(f"dropped {len(labels)}: {reason}: {'; '.join(labels)}", markup=False, soft_wrap=True)
    for r in sorted(table_rows, key=lambda r: r.order):
        if r.ran_again:  # its earlier figures were not reused: what it read had changed
            out.print(f"measured again: {r.label}: {r.ran_again}", markup=False, soft_wrap=True)
    for table in tables[1:]:
        if table.name.startswith("frontier") and table.rows and isinstance(table.rows[0][0], NA):
            out.print(f"{table.title}", markup=False, soft_wrap=True)
            continue
        if table.name.startswith("frontier"):
            render_table(out, table)
