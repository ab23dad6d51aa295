"""What every panel shares: the titled frame, the cached plot, and how a figure is written."""

from __future__ import annotations

import weakref
from collections.abc import Hashable, Sequence
from typing import Any

from rich.table import Table as RichTable
from rich.text import Text
from textual import events
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import DataTable, Static
from textual.widgets.data_table import ColumnKey
from textual_plotext import PlotextPlot

from ..view import RunView


class Plot(PlotextPlot):
    """A PlotextPlot that builds its chart once per change of data or size, not on every paint.

    textual-plotext rebuilds the whole chart in render(); a panel switch or a notification
    passing over it would redo that work for an unchanged picture.
    """

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self._cache: tuple[Any, Any] | None = None
        self._generation = 0

    def changed(self) -> None:
        self._generation += 1
        self.refresh()

    def render(self) -> Any:
        key = (self._generation, self.size, self.app.theme)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, super().render())
        return self._cache[1]


class Panel(Vertical):
    """A titled region of the dashboard that draws one RunView."""

    DEFAULT_CSS = """
    Panel {
        border: round $primary-background-lighten-2;
        border-title-color: $accent;
        border-title-style: bold;
        padding: 0 1;
        height: 1fr;
    }
    Panel .empty { color: $text-muted; }
    """

    panel_title = ""
    depends_on: tuple[str, ...] = ("timing", "samples", "results", "phases")
    # Seconds between redraws of a visible panel while its run goes on: a chart rebuilt for every
    # batch would cost the run more than it shows. A finished run, a switch or a resize draws at once.
    live_interval_s = 0.0

    class Resized(Message):
        """A panel was laid out at a new size: what it drew was fitted to the old one."""

        def __init__(self, panel: Panel) -> None:
            super().__init__()
            self.panel = panel

    def on_mount(self) -> None:
        self.border_title = self.panel_title

    def on_resize(self, event: events.Resize) -> None:
        # Sent once the layout has given the panel (and its charts) the new size, not before: a
        # redraw then fits the figures to it. A panel shown again at the size it had sends nothing.
        self.post_message(self.Resized(self))

    def stamp(self, view: RunView | None) -> tuple[Any, ...]:
        """What this panel's picture depends on: equal stamps, nothing to redraw."""
        # Not the size: a panel laid out at a new size draws again through Panel.Resized, and a panel
        # that is hidden has no size, so its size would force a rebuild on every switch.
        if view is None:
            return (None,)
        return (view.key, view.snapshot_path, *(view.versions[k] for k in self.depends_on))

    def show(self, view: RunView | None) -> None:
        raise NotImplementedError


# The shape each Static was last given, kept beside the widget rather than on it (a widget's attributes
# are Textual's); weak, so a widget that is removed takes its entry with it.
_SHAPES: weakref.WeakKeyDictionary[Static, Hashable] = weakref.WeakKeyDictionary()
# What each Static was last given to show, where its caller says (``figures``); same weak keeping.
_FIGURES: weakref.WeakKeyDictionary[Static, object] = weakref.WeakKeyDictionary()
_NONE = object()


def put(widget: Static, content: Any, shape: Hashable, figures: object = _NONE) -> None:
    """Update a Static, asking for a layout pass only when its shape (the number and kind of rows it
    holds, as the caller describes it) changed: a layout pass recomposes the whole screen, and a line
    of figures that only changes its digits needs none. A resize lays everything out anyway.

    ``figures``, when given, is everything the content is drawn from: equal to what it was at the last
    update, the widget keeps its picture (Textual would re-render an equal one, line by line)."""
    if figures is not _NONE:
        if widget in _FIGURES and widget in _SHAPES and _SHAPES[widget] == shape and _FIGURES[widget] == figures:
            return
        _FIGURES[widget] = figures
    else:
        _FIGURES.pop(widget, None)
    layout = widget not in _SHAPES or _SHAPES[widget] != shape
    _SHAPES[widget] = shape
    widget.update(content, layout=layout)


def cell_width(cell: Text | str) -> int:
    """The cells a DataTable cell takes on its one line: a str is read as markup there, as the table reads it."""
    text = cell if isinstance(cell, Text) else Text.from_markup(cell)
    return max((line.cell_len for line in text.split("\n")), default=0)


def fill_table(table: DataTable[Any], columns: Sequence[str], rows: Sequence[Sequence[Text | str]],
               keys: Sequence[str] | None = None) -> None:
    """Clear ``table`` (its columns too: a column only ever widens, and a width left from a transient state
    would outlive it) and fill it, each column given the width of its widest cell here.

    Why the widths are set rather than left to the table: a DataTable measures its auto-width columns
    later, when its message queue is idle, and caches each cell it draws under a key that leaves the
    widths out. A frame painted before that idle (a busy machine) keeps its cells cut to the headers'
    widths ("STS1" for STS16) for as long as the table is not filled again."""
    table.clear(columns=True)
    for i, col in enumerate(columns):
        width = max([cell_width(col), *(cell_width(r[i]) for r in rows if i < len(r))])
        table.add_column(col, key=col, width=width)
    for n, row in enumerate(rows):
        table.add_row(*row, key=None if keys is None else keys[n])


def put_cell(table: DataTable[Any], row: str, column: str, value: Text) -> None:
    """Update one cell of a table that is filled as figures arrive, its column widened here first (never narrowed:
    a column that shrank and grew again as cells changed would make the rows jump), for the reason fill_table
    gives: a width left to the table's idle turn is one a frame painted before it does not have."""
    widen(table, column, value)
    table.update_cell(row, column, value)


def widen(table: DataTable[Any], column: str, value: Text | str) -> None:
    """Make ``column`` at least as wide as ``value`` now, before the table draws again."""
    col = table.columns[ColumnKey(column)]
    col.content_width = max(col.content_width, cell_width(value))


def mib(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.1f} MiB"


def secs(v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v * 1000:,.1f} ms" if v < 1 else f"{v:,.3f} s"


def pairs(*items: tuple[str, Text | str], columns: int | None = None) -> RichTable:
    """Label and value pairs as cells of a grid: wrapped or captured, a label never runs into the
    value before it (``query prompt ''document prompt`` was seen with plain text)."""
    grid = RichTable.grid(padding=(0, 1))
    n = columns or len(items)
    for _ in range(n):
        grid.add_column(style="dim", no_wrap=True)
        grid.add_column(overflow="fold")
    row: list[Text | str] = []
    for label, value in items:
        # A value is data (a model name, a prompt, a task): Text, so that a '[' in it is never read as markup.
        row += [label, Text(value) if isinstance(value, str) else value]
        if len(row) == 2 * n:
            grid.add_row(*row)
            row = []
    if row:
        grid.add_row(*row)
    return grid


def thin(xs: list[float], ys: list[float], limit: int) -> tuple[list[float], list[float]]:
    """At most ``limit`` points, keeping each bucket's maximum so a peak is never thinned away."""
    n = len(xs)
    if n <= limit or limit <= 0:
        return xs, ys
    step = -(-n // limit)
    out_x: list[float] = []
    out_y: list[float] = []
    for i in range(0, n, step):
        chunk = ys[i : i + step]
        j = max(range(len(chunk)), key=chunk.__getitem__)
        out_x.append(xs[i + j])
        out_y.append(chunk[j])
    return out_x, out_y
