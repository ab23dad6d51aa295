"""A matrix as tables, charts, Markdown and one offline HTML page.

Everything here is drawn from the cells' :class:`MatrixRow` and the :class:`Frontier` computed from
them; nothing is measured or estimated. A figure a cell did not measure is ``n/a`` (with the row's
reason where it has one), never 0. The HTML page is a single file that renders with no network: CSS
inline, charts as inline SVG whose text is drawn as paths (so no font is needed), and every string
that came from outside the program (labels, model and task names, reasons, metadata) escaped.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

from .files import atomic_write_bytes
from .charts import figure_bytes
from .events import MIB
from .matrix.row import COST_AXES, Frontier, MatrixRow
from .tables import NA, Cell, Table, tables_markdown
from .tables import fmt as fmt_cell


# How each cost axis is named and drawn: (short name for the "frontier" column and file names,
# the column header, the factor from the row's unit to the shown one, the chart's axis label).
AXIS_VIEW: dict[str, tuple[str, str, float, str]] = {
    "p50_s": ("latency", "p50 ms", 1e3, "p50 latency per call (ms)"),
    "peak_rss_bytes": ("memory", "peak RSS MiB", 1 / MIB, "peak RSS (MiB)"),
    "energy_j_per_1000": ("energy", "energy J/1k", 1.0, "energy per 1,000 texts (J)"),
}

ChartFormat = Literal["svg", "png"]
AGAIN_COLUMN = "measured again because"


class DroppedCell(Protocol):
    """A combination the matrix did not run (``matrix.Dropped``); a (label, reason) pair works too."""

    @property
    def label(self) -> str: ...

    @property
    def reason(self) -> str: ...


DroppedList = Sequence[DroppedCell | tuple[str, str]]


def _dropped_pair(d: DroppedCell | tuple[str, str]) -> tuple[str, str]:
    return (d[0], d[1]) if isinstance(d, tuple) else (d.label, d.reason)


def _view(field: str) -> tuple[str, str, float, str]:
    label = next((lab for f, lab, _ in COST_AXES if f == field), field)
    return AXIS_VIEW.get(field, (field, label, 1.0, label))


def _axis_label(field: str) -> str:
    return next((lab for f, lab, _ in COST_AXES if f == field), field)


# -- tables -------------------------------------------------------------------------------------------


def _figure(value: float | int | None, *whys: str | None) -> Cell:
    """A measured figure as is; an unmeasured one as n/a with the first reason given, never 0."""
    if value is not None:
        return value
    why = next((w for w in whys if w), None)
    return NA(why) if why else None


def _precise(value: float | None, *whys: str | None) -> Cell:
    """A cosine near 1 to five decimals: 0.99996 and 1 must not both read 1.000."""
    return f"{value:.5f}" if value is not None else _figure(None, *whys)


def _scaled(value: float | int | None, factor: float, *whys: str | None) -> Cell:
    return _figure(None if value is None else float(value) * factor, *whys)


def _not_ok(row: MatrixRow) -> str | None:
    """For a cell that did not finish ok, its status is why its figures are missing."""
    return None if row.status == "ok" else row.status


def _status(row: MatrixRow) -> str:
    return f"{row.status} ({row.reason})" if row.status != "ok" and row.reason else row.status


def _quality(row: MatrixRow) -> Cell:
    if row.quality is not None:
        return row.quality
    if _not_ok(row):
        return NA(row.status)
    if not row.scores:
        return NA("no task scored")
    if any(v is None for v in row.scores.values()):
        return NA("a task has no score")
    return None


def _export(row: MatrixRow) -> Cell:
    if row.export_s is None:
        return NA(_not_ok(row) or "not exported")
    if row.export_cached:
        # The time is that of the run that filled the cache, not of this one: say so beside it.
        return f"{fmt_cell(row.export_s)} (cached)"
    return row.export_s


def _sorted(rows: Sequence[MatrixRow]) -> list[MatrixRow]:
    """Best quality first; cells without a score after all the scored ones, in run order."""
    return sorted(rows, key=lambda r: (r.quality is None, -(r.quality or 0.0), r.order, r.label))


def _tasks(rows: Sequence[MatrixRow]) -> list[str]:
    """Every task any cell was scored on, in the order the cells first met them."""
    seen: dict[str, None] = {}
    for row in sorted(rows, key=lambda r: r.order):
        for task in row.scores:
            seen.setdefault(task, None)
    return list(seen)


def frontier_axes(frontiers: Sequence[Frontier]) -> dict[str, list[str]]:
    """Cell id -> the cost axes (latency, memory, energy) whose frontier the cell is on."""
    on: dict[str, list[str]] = {}
    for f in frontiers:
        for cell in f.cells:
            on.setdefault(cell, []).append(_view(f.axis)[0])
    return on


def matrix_tables(
    rows: Sequence[MatrixRow],
    frontiers: Sequence[Frontier],
    dropped: DroppedList = (),
) -> list[Table]:
    """The matrix table (best quality first), the dropped cells (label, reason) when there are any,
    and one frontier table per cost axis."""
    tasks = _tasks(rows)
    on = frontier_axes(frontiers)
    columns = [
        "cell", "status", "quality", *tasks,
        "agreement mean", "agreement min", "top-k overlap",
        "p50 ms", "p95 ms", "items/s", "peak RSS MiB", "load s", "export s", "disk MiB", "weights MiB",
        "energy J/1k", "frontier",
    ]
    # A finished cell is reused only while what it read is unchanged; one measured again says why (a column of
    # its own only when there is one: a plain run again has nothing to say). Kept before the frontier, the last column.
    again = any(r.ran_again for r in rows)
    if again:
        columns.insert(len(columns) - 1, AGAIN_COLUMN)
    main = Table("matrix", "Matrix: cost and quality per cell (quality = mean of the MTEB main scores)", columns)
    for r in _sorted(rows):
        bad = _not_ok(r)
        scores: list[Cell] = [_figure(r.scores.get(t), bad, "not scored") for t in tasks]
        main.rows.append([
            r.label,
            _status(r),
            _quality(r),
            *scores,
            _precise(r.agreement_mean, r.agreement_why, bad),
            _precise(r.agreement_min, r.agreement_why, bad),
            _figure(r.topk_overlap, r.agreement_why, bad),
            _scaled(r.p50_s, 1e3, bad),
            _scaled(r.p95_s, 1e3, bad),
            _figure(r.items_per_s, bad),
            _scaled(r.peak_rss_bytes, 1 / MIB, bad),
            _figure(r.load_s, bad),
            _export(r),
            _scaled(r.disk_bytes, 1 / MIB, bad),
            _scaled(r.weights_bytes, 1 / MIB, bad),
            _figure(r.energy_j_per_1000, r.energy_why, bad),
            *([r.ran_again or ""] if again else []),
            # Not on any frontier is a fact, not a missing figure: an empty cell, not n/a.
            ", ".join(on.get(r.cell_id, [])),
        ])
    tables = [main]
    if dropped:
        tables.append(Table("dropped", "Dropped cells (not run)", ["cell", "reason"], [[*_dropped_pair(d)] for d in dropped]))
    shared = [r for r in _sorted(rows) if r.beside]
    if shared:
        tables.append(Table("beside-other-work", "Cells that ran beside other work (their costs may be inflated: run them again alone)",
                            ["cell", "host", "other work during the cell"], [[r.label, r.host or "here", r.beside] for r in shared]))
    by_id = {r.cell_id: r for r in rows}
    for f in frontiers:
        short, header, factor, _ = _view(f.axis)
        label = _axis_label(f.axis)
        if f.why is not None:
            tables.append(Table(f"frontier-{short}", f"Frontier: quality against {label} (none: {f.why})",
                                ["cell", "quality", header], [[NA(f.why), None, None]]))
            continue
        t = Table(f"frontier-{short}",
                  f"Frontier: quality against {label} ({len(f.cells)} of {len(f.considered)} cells, cheapest first)",
                  ["cell", "quality", header])
        for cell in f.cells:
            found = by_id[cell]
            t.rows.append([found.label, found.quality, _scaled(getattr(found, f.axis), factor)])
        tables.append(t)
    return tables


# -- charts -------------------------------------------------------------------------------------------


def short_labels(rows: Sequence[MatrixRow]) -> dict[str, str]:
    """Each cell's label without the parts every cell shares (the model, the device …), so the
    points on a chart say what differs; cut at 48 characters."""
    parts = {r.cell_id: [p.strip() for p in r.label.split("·")] for r in rows}
    common: set[str] = set.intersection(*(set(p) for p in parts.values())) if len(rows) > 1 else set()
    out: dict[str, str] = {}
    for r in rows:
        text = " · ".join(p for p in parts[r.cell_id] if p not in common) or r.label
        out[r.cell_id] = text if len(text) <= 48 else text[:47] + "…"
    return out


def chart_points(rows: Sequence[MatrixRow], f: Frontier) -> list[tuple[MatrixRow, float, float]]:
    """(row, cost in the shown unit, quality) for every cell the frontier considered."""
    factor = _view(f.axis)[2]
    by_id = {r.cell_id: r for r in rows}
    out: list[tuple[MatrixRow, float, float]] = []
    for cell in f.considered:
        r = by_id.get(cell)
        cost = None if r is None else getattr(r, f.axis)
        if r is None or cost is None or r.quality is None:
            continue
        out.append((r, float(cost) * factor, float(r.quality)))
    return out


def _chart_bytes(rows: Sequence[MatrixRow], frontiers: Sequence[Frontier], fmt: ChartFormat) -> list[tuple[str, bytes]]:
    """(cost axis field, image bytes) for each axis with at least one point."""
    from .charts import quiet_matplotlib

    quiet_matplotlib()
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    # A Figure without pyplot: no backend is chosen or switched, so this is safe beside a running
    # dashboard and needs no display.
    labels = short_labels(rows)
    out: list[tuple[str, bytes]] = []
    for f in frontiers:
        pts = chart_points(rows, f)
        if not pts:
            continue
        axis_label = _view(f.axis)[3]
        with matplotlib.rc_context({
            "svg.fonttype": "path",  # text as outlines: the page renders the same without any font installed
            "svg.hashsalt": "embprof",  # the same figures give the same SVG bytes
            "text.usetex": False,  # no TeX run on outside strings
            "text.parse_math": False,  # a '$' anywhere is a dollar sign, not mathtext
        }):
            fig = Figure(figsize=(7.5, 4.6))
            ax = fig.add_subplot()
            xs = [x for _, x, _ in pts]
            ys = [y for _, _, y in pts]
            ax.scatter(xs, ys, s=28, color="#7a8ca3", zorder=2, label="cell (ok)", gid="cells")
            on = set(f.cells)
            front = [(x, y) for r, x, y in pts if r.cell_id in on]
            if front:
                fx = [x for x, _ in front]
                fy = [y for _, y in front]
                # Best quality reachable for at most this cost: flat until the next frontier cell.
                ax.step(fx, fy, where="post", color="#c0392b", linewidth=1.4, zorder=3, label="frontier", gid="frontier-line")
                ax.scatter(fx, fy, s=70, facecolors="none", edgecolors="#c0392b", linewidths=1.8, zorder=4,
                           label="on the frontier", gid="frontier")
            for i, (r, x, y) in enumerate(sorted(pts, key=lambda t: (t[1], t[2]))):
                # Neighbours along the cost axis take turns above and below their point, so that close
                # cells' labels overlap less. parse_math=False: a '$' in a label is text, never
                # mathtext (which could fail to parse, or show something else).
                ax.annotate(labels[r.cell_id], (x, y), xytext=(5, 5 if i % 2 == 0 else -11), textcoords="offset points",
                            fontsize=7, parse_math=False)
            lo, hi = min(xs), max(xs)
            if lo > 0 and hi / lo > 10:  # over an order of magnitude a linear axis crushes the cheap cells together
                ax.set_xscale("log")
                # Plain numbers at 1, 2, 5 × 10^k: easier to read than 10^k labels, and no crowded minor labels.
                ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
                ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
                ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel(axis_label)
            ax.set_ylabel("quality (mean MTEB main score)")
            ax.set_title(f"quality against {_axis_label(f.axis)}", parse_math=False)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, loc="best")
            data = figure_bytes(fig, fmt)
        out.append((f.axis, data))
    return out


def matrix_charts(
    rows: Sequence[MatrixRow],
    frontiers: Sequence[Frontier],
    folder: Path,
    stem: str,
    fmt: ChartFormat = "svg",
) -> list[Path]:
    """One scatter of quality against each cost axis that has a point, written atomically as
    ``{stem}-frontier-{latency|memory|energy}.{fmt}`` in ``folder``."""
    paths: list[Path] = []
    for field, data in _chart_bytes(rows, frontiers, fmt):
        path = Path(folder) / f"{stem}-frontier-{_view(field)[0]}.{fmt}"
        atomic_write_bytes(path, data)
        paths.append(path)
    return paths


# -- Markdown and HTML --------------------------------------------------------------------------------


def matrix_markdown(
    title: str,
    rows: Sequence[MatrixRow],
    frontiers: Sequence[Frontier],
    dropped: DroppedList = (),
    images: list[str] | None = None,
) -> str:
    return tables_markdown(f"# {title}", matrix_tables(rows, frontiers, dropped), images)


_PROLOG = re.compile(r"\A.*?(?=<svg[\s>])", re.S)  # the XML declaration and DOCTYPE before the root
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)  # RDF with namespace and matplotlib.org URLs
_XMLNS = re.compile(r'\s+xmlns(?::\w+)?="[^"]*"')  # an HTML parser needs none, and they are URLs
_COMMENT = re.compile(r"\s*<!--.*?-->", re.S)  # each text's characters again (escaped by matplotlib): nothing the page needs
_ID = re.compile(r'\bid="([^"]+)"')


def inline_svg(svg: str, chart_id: str, caption: str) -> str:
    """Matplotlib's SVG made fit to sit inside an HTML page.

    The prolog, the RDF metadata and the namespace declarations go (they hold the only URLs, and
    HTML needs none of them), and so do the comments; every id is prefixed with ``chart_id`` so two
    charts' glyphs, markers and clip paths cannot take each other's; matplotlib's page-wide ``*``
    style is scoped to this chart; the root gets ``id``, a ``chart`` class and a label."""
    svg = _PROLOG.sub("", svg, count=1)
    svg = _METADATA.sub("", svg)
    svg = _XMLNS.sub("", svg)
    svg = _COMMENT.sub("", svg)
    svg = svg.replace("*{stroke-linejoin", f"#{chart_id} *{{stroke-linejoin")
    ids = set(_ID.findall(svg))

    def ref(m: re.Match[str]) -> str:
        name = m.group(2)
        return f"{m.group(1)}{chart_id}-{name}{m.group(3)}" if name in ids else m.group(0)

    svg = re.sub(r'(\bid=")([^"]+)(")', ref, svg)
    svg = re.sub(r'((?:xlink:)?href="#)([^"]+)(")', ref, svg)
    svg = re.sub(r"(url\(#)([^)]+)(\))", ref, svg)
    root = f'<svg id="{html.escape(chart_id)}" class="chart" role="img" aria-label="{html.escape(caption)}"'
    return re.sub(r"\A<svg\b", root, svg, count=1)


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 1.5rem; color: #1d2733; background: #fff; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 1.8rem; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0; }
th, td { border: 1px solid #d5dbe3; padding: 0.25rem 0.5rem; vertical-align: top; }
th { background: #eef2f7; text-align: left; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.na { color: #8a94a3; font-style: italic; }
tr.frontier td:first-child { font-weight: 600; }
.scroll { overflow-x: auto; max-width: 100%; }
figure { margin: 1rem 0; } figcaption { font-size: 0.85rem; color: #4a5868; }
svg.chart { max-width: 100%; height: auto; display: block; }
p.why { color: #8a94a3; font-style: italic; }
"""


def _td(cell: Cell) -> str:
    text = html.escape(fmt_cell(cell))
    if cell is None or isinstance(cell, NA):
        return f'<td class="na">{text}</td>'
    if isinstance(cell, (int, float)) and not isinstance(cell, bool):
        return f'<td class="num">{text}</td>'
    return f"<td>{text}</td>"


def _html_table(table: Table, frontier_col: int | None = None) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body: list[str] = []
    for row in table.rows:
        on = frontier_col is not None and bool(row[frontier_col])
        cls = ' class="frontier"' if on else ""
        body.append(f"<tr{cls}>" + "".join(_td(c) for c in row) + "</tr>")
    return (f'<section id="table-{html.escape(table.name)}"><h2>{html.escape(table.title)}</h2>'
            f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div></section>')


def matrix_html(
    title: str,
    rows: Sequence[MatrixRow],
    frontiers: Sequence[Frontier],
    dropped: DroppedList = (),
    meta: Mapping[str, Any] | None = None,
) -> str:
    """One self-contained page: metadata, a chart per cost axis with a point, and the tables. It
    loads nothing (no script, font, stylesheet or image from anywhere), so it opens offline."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if meta:
        items = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(fmt_cell(v))}</td></tr>" for k, v in meta.items())
        parts.append(f'<section id="meta"><table class="meta"><tbody>{items}</tbody></table></section>')
    charts = dict(_chart_bytes(rows, frontiers, "svg"))
    parts.append('<section id="charts">')
    for f in frontiers:
        label = _axis_label(f.axis)
        if f.axis in charts:
            caption = f"Quality against {label}: every ok cell; the frontier cells circled and joined."
            svg = inline_svg(charts[f.axis].decode("utf-8"), f"chart-{f.axis}", caption)
            parts.append(f"<figure>{svg}<figcaption>{html.escape(caption)}</figcaption></figure>")
        else:
            parts.append(f'<p class="why">No {html.escape(label)} chart: {html.escape(f.why or "")}.</p>')
    parts.append("</section>")
    for table in matrix_tables(rows, frontiers, dropped):
        parts.append(_html_table(table, len(table.columns) - 1 if table.name == "matrix" else None))
    parts.append("</body></html>\n")
    return "\n".join(parts)
