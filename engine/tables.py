"""The table kit: a table of cells, a figure that was not measured (``NA``) and the renderings every
report shares (text, JSON, Markdown, CSV). What goes in the tables is the reports' business
(``report``, ``compare``, ``matrix_report``); how a table is written is decided here, once.

A figure that was not measured is never shown as 0: it is ``None`` (``n/a``) where the reason is
obvious, or an :class:`NA` with the reason where it is not. CSV writes both as an empty cell, JSON as
``null``.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from typing import Any

from .text import one_line, printable


@dataclass(frozen=True)
class NA:
    """A figure that was not measured, with the reason: ``n/a (reason)`` on screen, empty in CSV, null in JSON."""

    reason: str = ""

    def __str__(self) -> str:
        return f"n/a ({self.reason})" if self.reason else "n/a"


Cell = str | int | float | NA | None

@dataclass
class Table:
    name: str  # a slug: what --table takes
    title: str
    columns: list[str]
    rows: list[list[Cell]] = field(default_factory=list)


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, NA):
        return str(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != 0 and abs(value) < 10 ** (-digits):
            return f"{value:.2e}"
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def plain(value: Cell) -> str | int | float | None:
    """A cell as data: an unmeasured figure (None or NA) is None, whatever its reason."""
    return None if isinstance(value, NA) else value


def tables_json(tables: list[Table]) -> str:
    """Tables as JSON: name -> title, columns, rows; an unmeasured figure is null (its reason is for people)."""
    return json.dumps(
        {t.name: {"title": t.title, "columns": t.columns, "rows": [[plain(c) for c in row] for row in t.rows]} for t in tables},
        indent=1,
        default=str,
    ) + "\n"


def kv_table(name: str, title: str, pairs: list[tuple[str, Any]]) -> Table:
    """A field/value table. A None value drops its row (a setting that does not apply); a figure that
    was expected but not measured must be passed as an NA so that its row stays."""
    return Table(name, title, ["field", "value"], [[k, v] for k, v in pairs if v is not None])


def or_na(value: Any, missing: NA) -> Any:
    return missing if value is None else value


# Markdown and CSV are read in terminals (`cat report.md`, a CSV piped to `column`) as much as in
# editors: their text has its control characters escaped (text.printable), as on the console; a
# Markdown cell and a CSV record are one line (line-oriented tools, `grep`, `wc -l`, read a record a line).
# The JSON export is the snapshot itself, where JSON's own escapes keep every byte (text.json_text).
def _md_cell(value: Any) -> str:
    return printable(fmt(value)).replace("|", "\\|").replace("\n", " ")


def tables_markdown(title: str, tables: list[Table], images: list[str] | None = None) -> str:
    lines = [one_line(title), ""]
    for image in images or []:
        lines += [f"![{one_line(image)}]({one_line(image)})", ""]
    for table in tables:
        lines += [f"## {one_line(table.title)}", ""]
        lines.append("| " + " | ".join(_md_cell(c) for c in table.columns) + " |")
        lines.append("|" + "|".join("---" for _ in table.columns) + "|")
        for row in table.rows:
            lines.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
        lines.append("")
    return "\n".join(lines)


def to_csv(table: Table) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([one_line(c) for c in table.columns])
    for row in table.rows:
        writer.writerow(["" if c is None or isinstance(c, NA) else one_line(c) if isinstance(c, str) else c for c in row])
    return buf.getvalue()


def tables_csv(tables: list[Table]) -> str:
    """Several tables in one CSV text, each under a ``# title`` line of its own."""
    return "".join(f"# {one_line(t.title)}\n{to_csv(t)}\n" for t in tables)
