"""The Matrix view: `embprof matrix --dashboard` fills in a table of cells and a frontier chart live.

The matrix runs on a worker thread (``run_matrix``, or an injected runner with its signature); its
listener only posts messages, so no widget is touched off the UI thread. Every row shown is the
``MatrixRow`` the runner reports (built from the cell's snapshot), formatted by the same
``matrix_tables`` as the console table: an unmeasured figure reads "n/a", never 0. Labels, phases,
notes and reasons come from outside the program and are shown as ``Text`` (data, never markup).

q (or ctrl+c) stops after the cell that is running: the runner checks the flag between cells and
raises ``MatrixInterrupted``; the finished cells stay saved in the matrix's folder.
"""

from __future__ import annotations

import functools

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

from embprof.engine.errors import UserError
from embprof.engine.frontier import frontiers
from embprof.engine.matrix import (
    COST_AXES,
    ClusterLost,
    Frontier,
    Manifest,
    MatrixEvent,
    MatrixInterrupted,
    MatrixListener,
    MatrixRow,
    MatrixSpec,
    expand,
    run_matrix,
)
from embprof.engine.matrix_report import AXIS_VIEW, chart_points, frontier_axes, matrix_tables
from embprof.engine.tables import NA, fmt
from rich.text import Text
from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import DataTable, Footer, Log, Static, Tab, Tabs
from textual.worker import Worker, WorkerState

from . import shutdown
from .matrix_tables import CONSOLE_COLUMNS
from .panels.base import Plot, put_cell, widen


class MatrixRunner(Protocol):
    """``run_matrix``'s signature: what the app calls on its worker thread."""

    def __call__(self, spec: MatrixSpec, folder: Path, listener: MatrixListener, *, retry_failed: bool = ...,
                 cancel: Callable[[], bool] = ...) -> Manifest: ...


# The table's columns: the console's (tui.matrix_tables.CONSOLE_COLUMNS) less the per-task scores, which
# vary with the matrix. The frontier comes right after quality: all the columns do not fit 160
# terminal columns, and what a decision needs first should not be the part scrolled off the right.
COLUMNS: tuple[str, ...] = (*CONSOLE_COLUMNS[:3], "frontier", *(c for c in CONSOLE_COLUMNS[3:] if c != "frontier"))
FIGURES = tuple(c for c in COLUMNS[2:] if c != "frontier")
# Digits per figure: a throughput of 1,000.000 items/s claims a precision the measurement does not have.
DIGITS = {"quality": 3, "top-k overlap": 3, "p50 ms": 2, "items/s": 1, "peak RSS MiB": 1, "load s": 2, "energy J/1k": 1}
LABEL_MAX = 56  # the cell column's widest label; the whole one is in the status and detail lines
PHASE_MAX = 24  # the status column's phase text, likewise
STATUS_STYLE = {"ok": "green", "running": "yellow", "pending": "dim", "incomplete": "yellow", "unstable": "bold red",
                "oom": "bold red", "failed": "bold red"}
AXIS_KEYS = ("l", "m", "e")  # latency, memory, energy: the AXIS_VIEW short names' first letters


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- messages: the worker thread's only way to the UI ----------------------------------------------
class CellsListed(Message):
    """The matrix's cells in run order (cell id, label, reference), before the runner starts."""

    def __init__(self, cells: list[tuple[str, str, bool]]) -> None:
        super().__init__()
        self.cells = cells


class MatrixEventArrived(Message):
    def __init__(self, event: MatrixEvent) -> None:
        super().__init__()
        self.event = event


@dataclass(frozen=True)
class Outcome:
    """How the worker ended: the matrix ran to its end, was stopped between cells, or could not run."""

    kind: Literal["done", "stopped", "error"]
    message: str | None = None


# -- the chart -----------------------------------------------------------------------------------------
class MatrixChart(Vertical):
    """Quality against one cost axis, the frontier cells marked; or, for an axis no cell has a figure
    on, the frontier's reason instead of an empty plot."""

    DEFAULT_CSS = """
    MatrixChart { border: round $primary-background-lighten-2; border-title-color: $accent; border-title-style: bold; }
    MatrixChart #matrix-axes { height: 2; }
    MatrixChart #matrix-plot { height: 1fr; }
    MatrixChart #matrix-why { height: 1fr; padding: 1 2; color: $text-muted; display: none; }
    MatrixChart.-why #matrix-plot { display: none; }
    MatrixChart.-why #matrix-why { display: block; }
    """

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        # What is drawn, kept as data: the plot's picture is characters, a test (or a reader of this
        # widget) wants the figures. (cell id, cost in the shown unit, quality) per considered cell.
        self.axis = COST_AXES[0][0]
        self.points: list[tuple[str, float, float]] = []
        self.frontier: list[str] = []
        self.why: str | None = None

    def compose(self) -> ComposeResult:
        yield Tabs(*[Tab(f"{AXIS_KEYS[i]} {label}", id=f"axis-{field}") for i, (field, label, _) in enumerate(COST_AXES)],
                   id="matrix-axes")
        yield Plot(id="matrix-plot")
        yield Static(id="matrix-why")

    def on_mount(self) -> None:
        self.border_title = "Frontier"

    def show(self, axis: str, rows: dict[str, MatrixRow], fronts: tuple[Frontier, ...]) -> None:
        self.axis = axis
        tabs = self.query_one(Tabs)
        if tabs.active != f"axis-{axis}":
            tabs.active = f"axis-{axis}"
        f = next(x for x in fronts if x.axis == axis)
        axis_label = AXIS_VIEW[axis][3]
        self.points = [(r.cell_id, cost, quality) for r, cost, quality in chart_points(list(rows.values()), f)]
        self.frontier = list(f.cells)
        self.why = f.why if not self.points else None
        self.set_class(self.why is not None, "-why")
        if self.why is not None:
            self.query_one("#matrix-why", Static).update(Text(self.why))
            return
        plot = self.query_one("#matrix-plot", Plot)
        plt = plot.plt
        plt.clear_figure()
        plt.title(f"quality against {axis_label} · {len(self.points)} cells, {len(self.frontier)} on the frontier")
        plt.xlabel(axis_label)
        plt.ylabel("quality")
        on_front = set(self.frontier)
        others = [(x, y) for cid, x, y in self.points if cid not in on_front]
        front = sorted(((x, y) for cid, x, y in self.points if cid in on_front))
        if len(front) > 1:
            # The best quality reachable for at most this cost: flat until the next frontier cell
            # (as the HTML report's chart draws it), so a reader sees what a cheaper cell gives up.
            sx: list[float] = []
            sy: list[float] = []
            for (x0, y0), (x1, _) in zip(front, front[1:]):
                sx += [x0, x1]
                sy += [y0, y0]
            sx.append(front[-1][0])
            sy.append(front[-1][1])
            plt.plot(sx, sy, color="red")
        if others:
            plt.scatter([x for x, _ in others], [y for _, y in others], marker="●", color="cyan", label="cell")
        if front:
            plt.scatter([x for x, _ in front], [y for _, y in front], marker="◆", color="red", label="frontier")
        plot.changed()


# -- the app -------------------------------------------------------------------------------------------
class MatrixApp(App[int]):
    TITLE = "embprof matrix"
    CSS = """
    #matrix-status { height: 1; padding: 0 1; background: $boost; }
    #matrix-table { height: 1fr; }
    #matrix-detail { height: auto; max-height: 4; padding: 0 1; color: $text-muted; }
    #matrix-bottom { height: 20; }
    #matrix-chart { width: 3fr; }
    #matrix-log { width: 2fr; border: round $primary-background-lighten-2; border-title-color: $accent; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "stop", "Stop / quit"),
        # In the dashboard's raw terminal ctrl+c is a key, not SIGINT: it must stop the matrix the
        # same careful way, not leave a cell's process orphaned.
        Binding("ctrl+c", "stop", "Stop", show=False, priority=True),
        *[Binding(key, f"axis('{field}')", label, show=False) for key, (field, label, _) in zip(AXIS_KEYS, COST_AXES)],
        Binding("a", "next_axis", "Cost axis"),
    ]

    def __init__(self, spec: MatrixSpec, folder: Path, *, retry_failed: bool = False, runner: MatrixRunner = run_matrix) -> None:
        super().__init__()
        self.animation_level = "none"  # no tab-underline animation competing with the cells for the CPU
        self.spec = spec
        self.folder = folder
        self.retry_failed = retry_failed
        self.runner = runner
        # A threading.Event, not a bare attribute: it is read on the worker thread, set on the UI thread.
        self._stop = threading.Event()
        self.order: list[str] = []  # cell ids in run order, as the table shows them
        self.labels: dict[str, str] = {}
        self.where: dict[str, str] = {}  # on a cluster: "on HOST" for each cell that started there
        self.reference: dict[str, bool] = {}
        self.done: dict[str, MatrixRow] = {}  # cells that ended (or had ended in an earlier run)
        self.running: str | None = None
        self.phase = ""
        self.exporting: str | None = None
        self.total = 0
        self.fronts: tuple[Frontier, ...] = frontiers([])
        self.axis = COST_AXES[0][0]
        self.outcome: Outcome | None = None
        self._columns_ready = False
        self.stopped_by: int | None = None  # the stop signal, for the exit status
        self._worker_done = threading.Event()  # the matrix's thread has ended (read off the UI thread)

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    # -- layout --------------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Static(id="matrix-status")
        # The cell's label stays in view while the figures scroll sideways.
        yield DataTable(id="matrix-table", cursor_type="row", zebra_stripes=True, fixed_columns=1)
        yield Static(id="matrix-detail")
        with Horizontal(id="matrix-bottom"):
            yield MatrixChart(id="matrix-chart")
            yield Log(id="matrix-log", highlight=False)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#matrix-table", DataTable)
        for col in COLUMNS:
            table.add_column(col, key=col)
        self.query_one("#matrix-log", Log).border_title = "Notes"
        self._show_status()
        self._show_chart()
        self.run_worker(self._work, thread=True, exit_on_error=False, group="matrix", name="matrix")
        # SIGINT, SIGTERM and SIGHUP stop the matrix as q does (the running cell stops at a batch boundary, the
        # finished cells are kept), and the dashboard then ends by itself: nobody is there to press q.
        shutdown.on_event_loop(self._stop_signal)

    def _stop_signal(self, signum: int) -> None:
        import signal

        first = self.stopped_by is None
        self.stopped_by = self.stopped_by or signum
        if first and signum == signal.SIGHUP:
            # The terminal is gone: Textual's own ending can block writing to it. Once the matrix's thread
            # has ended (the running cell saved), the process ends whatever the UI is doing.
            threading.Thread(target=self._end_after_hangup, args=(signum,), name="embprof-hangup", daemon=True).start()
        if self.outcome is not None:
            self.exit(self.exit_code())
        elif not self._stop.is_set():
            self._stop.set()
            self._show_status()

    def _end_after_hangup(self, signum: int) -> None:
        import os

        self._worker_done.wait()
        os._exit(128 + signum)

    # -- the worker thread ---------------------------------------------------------------------------
    def _work(self) -> Outcome:
        """Expand, then run the matrix; everything it learns goes to the UI as a message."""
        try:
            return self._expand_and_run()
        finally:
            self._worker_done.set()

    def _expand_and_run(self) -> Outcome:
        try:
            exp = expand(self.spec, self.folder)
            self.post_message(CellsListed([(c.cell_id, c.label, c.reference) for c in exp.cells]))
            self.runner(self.spec, self.folder, self._listener, retry_failed=self.retry_failed, cancel=self._stop.is_set)
        except MatrixInterrupted:
            return Outcome("stopped")
        except (UserError, ClusterLost) as exc:  # bad input, or a cluster gone mid-matrix: one sentence, as headless says it
            return Outcome("error", str(exc))
        return Outcome("done")

    def _listener(self, event: MatrixEvent) -> None:
        self.post_message(MatrixEventArrived(event))

    # -- the UI thread -------------------------------------------------------------------------------
    @on(CellsListed)
    def _cells(self, message: CellsListed) -> None:
        for cid, label, ref in message.cells:
            self._ensure_row(cid, label, ref)
        self.total = max(self.total, len(message.cells))
        self._show_status()

    @on(MatrixEventArrived)
    def _event(self, message: MatrixEventArrived) -> None:
        e = message.event
        if e.total:
            self.total = e.total
        log = self.query_one("#matrix-log", Log)
        if e.kind == "note":
            log.write_line(f"{e.label}: {e.text}" if e.label else e.text)
        elif e.kind == "export":
            self.exporting = e.text or e.label
            log.write_line(f"export: {e.text}" + (f" (for {e.label})" if e.label else ""))
        elif e.kind == "listed":
            self._relist(e.cells)
        elif e.kind in ("queued", "start", "phase") and e.cell_id in self.done:
            pass  # on a cluster a cell's last phase can arrive after its end: the finished row stands
        elif e.kind == "queued":
            self._ensure_row(e.cell_id, e.label)
            # On a cluster: queued there, or held until its reference cell has finished.
            waits = e.text not in ("", "queued on the cluster")
            self._set_status_cell(e.cell_id, Text(f"queued · {_cut(e.text, PHASE_MAX)}" if waits else "queued", style="dim"))
        elif e.kind == "start":
            self.exporting = None
            self._ensure_row(e.cell_id, e.label)
            self.running, self.phase = e.cell_id, ""
            # On a cluster: where it runs, and whether this is a retry (kept beside each phase that follows).
            self.where[e.cell_id] = e.text.split(" (", 1)[0] if e.text.startswith("on ") else ""
            self._set_status_cell(e.cell_id, Text(f"running {_cut(e.text, PHASE_MAX)}".strip(), style=STATUS_STYLE["running"]))
        elif e.kind == "phase":
            self._ensure_row(e.cell_id, e.label)
            self.running, self.phase = e.cell_id, e.text
            where = self.where.get(e.cell_id, "")
            self._set_status_cell(e.cell_id, Text(f"running {_cut(where, PHASE_MAX)} · {_cut(e.text, PHASE_MAX)}" if where else
                                                  f"running · {_cut(e.text, PHASE_MAX)}", style=STATUS_STYLE["running"]))
        elif e.kind in ("end", "skip"):
            if e.kind == "skip":
                log.write_line(f"{e.label}: {e.text}" if e.text else f"{e.label}: skipped")
            if e.cell_id == self.running:
                self.running, self.phase = None, ""
            if e.row is not None:
                self._finish(e.row)
            elif e.kind == "end":  # a runner with no row for its cell: say so, invent no figures
                self._set_status_cell(e.cell_id, Text("ended (no row)", style="bold red"))
        self._show_status()

    def _relist(self, cells: tuple[tuple[str, str, bool], ...]) -> None:
        """The runner's own list of the cells: a row this view listed that will not run goes (on a cluster
        its GPUs, not this machine's, decide which CUDA cells exist), and the rest are added in order."""
        keep = {cid for cid, _, _ in cells}
        table = self.query_one("#matrix-table", DataTable)
        for cid in [c for c in self.order if c not in keep and c not in self.done]:
            table.remove_row(cid)
            self.order.remove(cid)
            self.labels.pop(cid, None)
            self.reference.pop(cid, None)
        for cid, label, ref in cells:
            self._ensure_row(cid, label, ref)
        self.total = len(cells)

    def _ensure_row(self, cid: str, label: str, reference: bool | None = None) -> None:
        """A row per cell; a cell the runner reports that the expansion did not list gets one too."""
        table = self.query_one("#matrix-table", DataTable)
        if reference is not None:
            self.reference[cid] = reference
        if cid not in self.labels:
            self.order.append(cid)
            self.labels[cid] = label
            cells = [self._label_text(cid), Text("pending", style=STATUS_STYLE["pending"]), *[Text("") for _ in COLUMNS[2:]]]
            for col, cell in zip(COLUMNS, cells):
                widen(table, col, cell)
            table.add_row(*cells, key=cid)
        elif label and label != self.labels[cid]:
            # The runner's label is the one its row and snapshot carry: show that one.
            self.labels[cid] = label
            put_cell(table, cid, "cell", self._label_text(cid))

    def _label_text(self, cid: str) -> Text:
        text = Text(_cut(self.labels[cid], LABEL_MAX))
        if self.reference.get(cid):
            text.append(" (reference)", style="dim")
        return text

    def _set_status_cell(self, cid: str, value: Text) -> None:
        put_cell(self.query_one("#matrix-table", DataTable), cid, "status", value)

    def _finish(self, row: MatrixRow) -> None:
        self.reference[row.cell_id] = row.reference
        self._ensure_row(row.cell_id, row.label)
        self.done[row.cell_id] = row
        table = self.query_one("#matrix-table", DataTable)
        figures = row_figures(row)
        put_cell(table, row.cell_id, "status", Text(row.status, style=STATUS_STYLE.get(row.status, "")))
        for col in FIGURES:
            put_cell(table, row.cell_id, col, cell_text(figures[col], DIGITS.get(col, 3)))
        # A new cell can push others off the frontier: every finished row's mark is recomputed.
        self.fronts = frontiers(list(self.done.values()))
        marks = frontier_axes(self.fronts)
        for cid in self.done:
            put_cell(table, cid, "frontier", Text(", ".join(marks.get(cid, [])), style="bold red"))
        self._show_chart()
        self._show_detail()

    def _show_chart(self) -> None:
        self.query_one(MatrixChart).show(self.axis, self.done, self.fronts)

    def status_text(self) -> Text:
        """The status line: cells finished of all, and what is happening now."""
        text = Text()
        text.append(f"{len(self.done)}/{self.total} cells", style="bold")
        if self.outcome is not None:
            ok = sum(1 for r in self.done.values() if r.status == "ok")
            if self.outcome.kind == "error":
                text.append(" · cannot run: ", style="bold red")
                text.append(self.outcome.message or "internal error")
            elif self.outcome.kind == "stopped":
                text.append(" · stopped: the finished cells are kept in ", style="yellow")
                text.append(str(self.folder))
            else:
                text.append(f" · finished: {ok} ok, {len(self.done) - ok} not ok", style="green" if ok == len(self.done) else "yellow")
            text.append(" · q to quit", style="dim")
            return text
        if self.running is not None:
            text.append(" · running: ")
            text.append(self.labels.get(self.running, self.running), style="bold")
            if self.phase:
                text.append(" · ")
                text.append(self.phase)
        elif self.exporting:
            text.append(" · export: ")
            text.append(self.exporting)
        else:
            text.append(" · preparing" if not self.done else " · between cells", style="dim")
        if self._stop.is_set():
            text.append(" · stopping after this cell (its process is not interrupted)", style="bold yellow")
        return text

    def _show_status(self) -> None:
        self.query_one("#matrix-status", Static).update(self.status_text())

    @on(DataTable.RowHighlighted, "#matrix-table")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_detail()

    def _show_detail(self) -> None:
        """The highlighted cell's whole label, its status's reason, and why each n/a is n/a."""
        table = self.query_one("#matrix-table", DataTable)
        detail = self.query_one("#matrix-detail", Static)
        if table.row_count == 0:
            detail.update("")
            return
        cid = str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)
        text = Text(self.labels.get(cid, cid), style="bold")
        row = self.done.get(cid)
        if row is not None:
            if row.reason:
                text.append(f" · {row.status}: ")
                text.append(row.reason)
            reasons: dict[str, list[str]] = {}
            for col, value in row_figures(row).items():
                if isinstance(value, NA) and value.reason and value.reason != row.status:
                    reasons.setdefault(value.reason, []).append(col)
            for reason, cols in reasons.items():
                text.append(f"\n{', '.join(cols)} n/a: ", style="dim")
                text.append(reason)
        detail.update(text)

    # -- when the worker ends --------------------------------------------------------------------------
    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "matrix" or event.state not in (WorkerState.SUCCESS, WorkerState.ERROR, WorkerState.CANCELLED):
            return
        if event.state == WorkerState.SUCCESS and isinstance(event.worker.result, Outcome):
            self.outcome = event.worker.result
        else:
            self.outcome = Outcome("error", f"the matrix stopped on an internal error: {event.worker.error}")
        self.running, self.phase, self.exporting = None, "", None
        if self.outcome.kind == "error":
            self.query_one("#matrix-log", Log).write_line(f"cannot run: {self.outcome.message}")
        self._show_status()
        if self._stop.is_set():
            self.exit(self.exit_code())

    def exit_code(self) -> int:
        """0: every cell ok; 128 + N: stopped before the end (130 by q or ctrl+c, 143 by SIGTERM, 129 by
        SIGHUP); 1 otherwise (a failed cell, or no run)."""
        if self.outcome is None or self.outcome.kind == "stopped" or self.stopped_by is not None:
            return 128 + (self.stopped_by or 2)
        if self.outcome.kind == "error":
            return 1
        return 0 if self.order and all(cid in self.done and self.done[cid].status == "ok" for cid in self.order) else 1

    # -- actions ---------------------------------------------------------------------------------------
    def action_stop(self) -> None:
        if self.outcome is not None:
            self.exit(self.exit_code())
            return
        if self._stop.is_set():
            self.notify("already stopping: waiting for the running cell to save what it measured", severity="warning")
            return
        self._stop.set()
        self._show_status()

    async def action_quit(self) -> None:
        # ctrl+q as well: never leave the worker and a cell's process behind.
        self.action_stop()

    def action_axis(self, field: str) -> None:
        self.axis = field
        self._show_chart()

    def action_next_axis(self) -> None:
        fields = [f for f, _, _ in COST_AXES]
        self.action_axis(fields[(fields.index(self.axis) + 1) % len(fields)])

    @on(Tabs.TabActivated, "#matrix-axes")
    def _axis_tab(self, event: Tabs.TabActivated) -> None:
        field = (event.tab.id or "").removeprefix("axis-")
        if field and field != self.axis:
            self.action_axis(field)


# -- formatting ------------------------------------------------------------------------------------------
def row_figures(row: MatrixRow) -> dict[str, Any]:
    """The row's figures by column, as the console and export tables have them (NA with a reason
    for an unmeasured one): one formatting for every view of a matrix."""
    table = matrix_tables([row], ())[0]
    values = table.rows[0]
    out: dict[str, Any] = {}
    for col in FIGURES:
        # The last column of that name: task columns come before the fixed ones and may share a name.
        i = len(table.columns) - 1 - table.columns[::-1].index(col)
        out[col] = values[i]
    return out


def cell_text(value: Any, digits: int = 3) -> Text:
    """A figure as the table shows it: None or NA is "n/a" (its reason is in the detail line)."""
    if value is None or isinstance(value, NA):
        return Text("n/a", style="dim")
    return Text(fmt(value, digits), justify="right" if isinstance(value, (int, float)) else "left")


def run_matrix_app(spec: MatrixSpec, folder: Path, *, retry_failed: bool = False, ray_address: str | None = None,
                   ray_cpus: int = 1, cold: bool = False) -> int:
    """Run the matrix in the dashboard; 0 if every cell is ok, 128 + N if stopped (130 by q), 1 otherwise."""
    runner: MatrixRunner = functools.partial(run_matrix, ray_address=ray_address, ray_cpus=ray_cpus, cold=cold)
    app = MatrixApp(spec, folder, retry_failed=retry_failed, runner=runner)
    result = app.run()
    print_final_table(folder)
    if result is None:  # the app ended another way (an internal error Textual has reported)
        return 1 if app.outcome is None or app.outcome.kind != "stopped" else 128 + (app.stopped_by or 2)
    return int(result)


def print_final_table(folder: Path) -> None:
    """The dashboard's screen goes with it: leave the same table on the terminal as a headless run does."""
    from embprof.engine.matrix import rows

    from .console import output_console
    from .matrix_tables import print_tables

    if not (folder / "matrix.json").is_file():  # the matrix never started (bad input): nothing to show
        return
    try:
        manifest, table_rows = rows(folder)
    except UserError:
        return
    out = output_console()
    print_tables(out, manifest, table_rows)
    out.print(f"matrix: {folder}", markup=False, soft_wrap=True)
