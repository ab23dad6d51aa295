"""The Textual dashboard: `embprof` with no subcommand.

Attributes go down, messages come up: a run is a ``RunPlan``; the engine runs it on a worker thread,
and its events arrive through a Bridge that holds them for the UI's once-a-second tick (only the first
event after a quiet spell, the run's end and an error wake the UI at once). The app folds them into the
RunView on display (the engine's own fold plus bounded chart buffers), and the same tick redraws only the
visible panels whose data changed, each at most every live_interval_s while the run goes on. File work
(listing, opening, exporting, comparing snapshots) runs on worker threads
that end in a message: the UI thread never waits on the disk.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

from embprof.engine.errors import UserError
from embprof.engine.events import ErrorEvent, RunFinished
from embprof.engine.plan import RunPlan
from embprof.engine.session import RunnerFactory, RunnerLike, Session, engine_runner
from embprof.engine.text import clean, one_line, printable
from textual import events, on
from textual.app import App, ComposeResult, SystemCommand
from textual.notifications import SeverityLevel
from textual.binding import Binding, BindingType
from textual.containers import Grid
from textual.geometry import Size
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Tab, Tabs
from textual.worker import Worker, WorkerState

from . import shutdown
from .messages import (
    Bridge,
    CompareReady,
    EventsReady,
    FileWritten,
    RunRefused,
    RunSaved,
    RunStarting,
    SnapshotOpened,
    SnapshotsListed,
)
from .panels import (
    CpuPanel,
    LatencyPanel,
    MemoryPanel,
    Panel,
    RunsPanel,
    ScoresPanel,
    StatusBar,
    TrainingPanel,
    has_training,
)
from .panels.runs import list_snapshots, live_row
from .panels.scores import has_scores
from .screens import CompareScreen, ExportScreen, HelpScreen, RunForm
from .view import RunView

PANELS: tuple[tuple[str, str], ...] = (
    ("latency", "Latency"),
    ("memory", "Memory"),
    ("cpu", "CPU"),
    ("scores", "Scores"),
    ("runs", "Runs"),
    ("training", "Training"),  # last: keys 1–5 stay where users learnt them
)
WIDE_MIN = (150, 40)  # at least this many columns and rows: every panel at once
# In that layout a training run's panel takes the cells of these (see app.tcss); other runs hide it.
WIDE_HIDDEN_TRAINING = ("latency", "scores")
# Runs held in full (their figures and chart buffers, each up to a few MiB): older saved ones are read
# back from their snapshots when opened again.
MAX_VIEWS = 12


class PanelTabs(Tabs):
    """The tabs of the one-panel layout, which hold the keyboard focus as a dashboard starts (arrows switch panels)."""

    def on_show(self) -> None:
        # Hidden in the all-panels layout, the tabs lost the focus (Textual moves it off a widget that is
        # hidden, here to nothing): a terminal made small again gets them back as a dashboard started small has them.
        if self.screen.focused is None:
            self.focus()


class EmbprofApp(App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "embprof"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("n", "new_run", "New run"),
        Binding("r", "rerun", "Run again"),
        Binding("s", "stop", "Stop"),
        Binding("ctrl+s", "save", "Save"),
        Binding("o", "open", "Open"),
        Binding("e", "export", "Export"),
        Binding("m", "mark", "Mark", show=False),
        Binding("c", "compare", "Compare", show=False),
        Binding("question_mark", "help", "Help"),
        Binding("q", "quit", "Quit"),
        *[Binding(str(i + 1), f"show_panel('{pid}')", title, show=False) for i, (pid, title) in enumerate(PANELS)],
    ]

    def __init__(
        self,
        plan: RunPlan | None = None,
        *,
        autostart: bool = True,
        profiles_dir: Path = Path("profiles"),
        clock: Callable[[], float] = time.monotonic,
        runner_factory: RunnerFactory = engine_runner,
        refresh_hz: float = 1.0,
        save_snapshots: bool = True,
        cursor_blink: bool = True,
    ) -> None:
        super().__init__()
        # Animated tab underlines cost a dozen extra frames per panel switch, each competing with
        # the run for the CPU; a profiler's UI has no use for them.
        self.animation_level = "none"
        self.save_snapshots = save_snapshots
        self.stopped_by: int | None = None  # the stop signal that ended the dashboard, for the exit status
        self._idle = threading.Event()  # set while no run is being run or saved (read off the UI thread)
        self._idle.set()
        self.cursor_blink = cursor_blink  # off in snapshot tests: a blinking cursor is not reproducible
        self.plan = plan or RunPlan()  # the form's starting point, and "run again" before any run
        self.autostart = autostart
        self.profiles_dir = profiles_dir
        self.clock = clock
        self.runner_factory = runner_factory
        self.refresh_hz = refresh_hz
        self.views: dict[str, RunView] = {}
        self.current: RunView | None = None
        self.runner: RunnerLike | None = None
        self._bridges: dict[str, Bridge] = {}
        # Bridges held after a drain: while events keep coming the tick takes them, once a second, just
        # before it redraws (the panels redraw every second or two anyway); the end of a run and an error
        # still wake the UI at once (messages.URGENT), and a saved run is taken when its RunSaved arrives.
        self._held: set[str] = set()
        self._started_at: dict[str, float] = {}
        self._drawn: dict[str, Any] = {}
        self._drawn_at: dict[str, float] = {}  # time.monotonic of each panel's last draw (not self.clock: tests freeze that)
        self._status: StatusBar
        self._main_screen: Screen[Any] | None = None
        self._panels: dict[str, Panel] = {}
        self._keys = itertools.count(1)
        self.active_panel = "latency"
        self.marked: list[str] = []  # snapshot files marked in the Runs panel, for compare
        self._file_rows: list[tuple[str, list[str]]] = []  # the profiles folder, as last listed by a worker

    # -- layout --------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield StatusBar(clock=self.clock, id="status")
        yield PanelTabs(*[Tab(title, id=f"tab-{pid}") for pid, title in PANELS], id="tabs")
        with Grid(id="panels"):
            # First in the grid: in the all-panels layout a training run's panel takes the Latency panel's
            # cell (and the Scores panel's below it, which a training run does not fill); other runs hide it.
            yield TrainingPanel(id="training")
            yield LatencyPanel(id="latency")
            yield MemoryPanel(id="memory")
            yield CpuPanel(id="cpu")
            yield ScoresPanel(id="scores")
            yield RunsPanel(id="runs")
        yield Footer()

    def on_mount(self) -> None:
        # SIGTERM (a scheduler, `kill`), SIGHUP (the terminal or ssh session closed) and SIGINT quit as q does:
        # the run stops at its next batch boundary and its snapshot keeps what was measured.
        shutdown.on_event_loop(self._stop_signal)
        # References held, not queried on every tick: a timer can fire while the DOM is torn down.
        self._status = self.query_one(StatusBar)
        # The screen that holds the panels: the layout classes go on it, never on a dialog (the new-run
        # form, help, compare) that is on top when the terminal is resized or a run's figures arrive.
        self._main_screen = self.screen
        self._panels = {pid: self.query_one(f"#{pid}", Panel) for pid, _ in PANELS}
        self._apply_layout()
        self.action_show_panel("latency")
        # One timer for the panels and the status bar's clock: one wake-up a tick, not two.
        self.set_interval(1 / self.refresh_hz, self.tick)
        self.list_snapshots()
        self.redraw(force=True)
        if self.autostart:
            # After the first frame: the import of torch is then a phase on screen, not a frozen terminal.
            self.call_after_refresh(self.start_run, self.plan)

    def on_resize(self, event: events.Resize | None = None) -> None:
        # The event's size: this handler runs before Textual's own (App._on_resize) has stored it, so
        # self.size here is still the size before this resize.
        self._apply_layout(event.size if event is not None else None)

    def _apply_layout(self, size: Size | None = None) -> None:
        main = self._main_screen
        if main is None or not self.screen_stack:  # not mounted yet, or the last screen is gone: the app is closing
            return
        width, height = size if size is not None else self.size
        main.set_class(width >= WIDE_MIN[0] and height >= WIDE_MIN[1], "wide")
        # The wide cell of the bottom row goes where the data is: the Scores tables when the run on
        # display has scores, the Runs list (and its model names) otherwise.
        self._set_layout_classes(self.current)
        # Not forced: the panels are not laid out at the new size yet. Each one that changes size draws
        # again once it has (Panel.Resized); this takes what changed while a panel was hidden.
        self.redraw()

    def _set_layout_classes(self, view: RunView | None) -> None:
        main = self._main_screen
        if main is None:
            return
        main.set_class(not has_scores(view), "-no-scores")
        main.set_class(has_training(view), "-training")

    @on(Panel.Resized)
    def _panel_resized(self, message: Panel.Resized) -> None:
        # What a panel drew was fitted to its old size (a chart's points thinned to its width, a
        # sparkline's samples to its cells): it draws again, at once, at the size it now has.
        self._drawn.pop(message.panel.id or "", None)
        self.redraw()

    def _first_panel(self, view: RunView | None) -> str:
        """The panel a run opens on: a training run's own, else the latency."""
        return "training" if has_training(view) else "latency"

    def action_show_panel(self, panel_id: str) -> None:
        self.active_panel = panel_id
        for pid, panel in self._panels.items():
            panel.set_class(pid == panel_id, "-active")
        tabs = self.query_one(Tabs)
        if tabs.active != f"tab-{panel_id}":
            tabs.active = f"tab-{panel_id}"
        # First the switch itself, from what the panel drew last; then whatever changed meanwhile.
        self.call_after_refresh(self.redraw)

    @on(Tabs.TabActivated)
    def _tab(self, event: Tabs.TabActivated) -> None:
        if event.tab.id:
            pid = event.tab.id.removeprefix("tab-")
            if pid != self.active_panel:
                self.action_show_panel(pid)

    # -- drawing ---------------------------------------------------------------------------------
    def _visible_panels(self) -> Iterable[Panel]:
        main = self._main_screen
        if main is None:
            return
        wide = main.has_class("wide")
        # Read from the classes, not from the computed display: a class just set is styled at the next refresh.
        hidden = WIDE_HIDDEN_TRAINING if main.has_class("-training") else ("training",)
        for pid, panel in self._panels.items():
            if (wide and pid not in hidden) or pid == self.active_panel:
                yield panel

    def tick(self) -> None:
        for key in list(self._held):
            self._drain(key)
        self.redraw()
        if self.screen_stack and self.is_running:
            self._status.tick()

    def redraw(self, force: bool = False) -> None:
        """Draw the visible panels and the status bar from the run on display: each one whose figures changed
        since its last draw (while a run goes on, a panel at most every live_interval_s), or, ``force``, all
        of them now. The tick calls it; so may anything that wants the screen up to date at once."""
        # A resize can arrive before the mount; a queued redraw (a timer tick, a panel switch's
        # after-refresh) can arrive after the last screen is gone at exit. Shutdown clears is_running
        # first, then removes the screens' widgets while the stack still lists them: a tick in between
        # would find a panel without its children.
        if not self._panels or not self.screen_stack or not self.is_running:
            return
        view = self.current
        now = time.monotonic()
        running = view is not None and view.running
        for panel in self._visible_panels():
            pid = panel.id or ""
            stamp = panel.stamp(view)
            if not force and self._drawn.get(pid) == stamp:
                continue
            # A chart rebuilt for every batch costs the run its throughput: while the run goes on, a
            # visible panel redraws every live_interval_s. A panel just switched to has no recent draw,
            # so it is drawn at once. Half a tick of slack: the ticks come a little late by varying
            # amounts, and without it a panel due every 2 s would wait 3 whenever its last tick was later.
            if not force and running and self._drawn.get(pid, (None,))[0] == stamp[0] \
                    and now - self._drawn_at.get(pid, 0.0) < panel.live_interval_s - 0.5 / self.refresh_hz:
                continue
            self._drawn[pid] = stamp
            self._drawn_at[pid] = now
            panel.show(view)
        status = (view.key, view.state_text, view.snapshot_path) if view else None
        if force or self._drawn.get("status") != status:
            self._drawn["status"] = status
            self._status.show(view, self._started_at.get(view.key) if view else None)

    def show_view(self, view: RunView) -> None:
        self.current = view
        self._set_layout_classes(view)
        self.redraw(force=True)

    # -- runs --------------------------------------------------------------------------------------
    def start_run(self, plan: RunPlan) -> None:
        if self.runner is not None and not self.runner.finished:
            self.notify("A run is in progress: stop it first (s).", severity="warning")
            return
        self.plan = plan
        key = f"run-{next(self._keys)}"
        self._idle.clear()
        self.run_worker(lambda: self._work(key, plan), thread=True, exclusive=True, exit_on_error=False, group="run", name=key)

    def _work(self, key: str, plan: RunPlan) -> None:
        """The run's own thread: prepare, run, save. Everything it learns arrives as messages."""
        try:
            self._run_and_save(key, plan)
        finally:
            self._idle.set()

    def _run_and_save(self, key: str, plan: RunPlan) -> None:
        from embprof.engine import snapshot as snap_mod

        view = RunView(key=key, plan=plan)
        bridge = Bridge(self, key)
        try:
            session = Session(plan, [bridge], runner_factory=self.runner_factory)
        except UserError as exc:  # a missing file, an unknown model, a server that cannot be reached
            self.post_message(RunRefused(str(exc)))
            return
        self.post_message(RunStarting(view, bridge))
        self.runner = session.runner
        session.run()
        if not self.save_snapshots:
            return
        folder = self.profiles_dir
        try:
            # A run that failed on its input is shown and kept here, as any failed run is.
            outcome = session.finish(lambda snap: (snap_mod.save(snap, folder), None), refuse_input_errors=False)
            failure: BaseException | None = outcome.save_error
        except Exception as exc:  # noqa: BLE001 - the run's data stays on screen even if the disk refuses it
            failure = exc
        if failure is not None:
            self.post_message(RunSaved(key, None, f"snapshot not saved: {failure}"))
        else:
            self.post_message(RunSaved(key, str(outcome.path), None))

    @on(RunStarting)
    def _on_run_starting(self, message: RunStarting) -> None:
        view, bridge = message.view, message.bridge
        self.views[view.key] = view
        self._bridges[view.key] = bridge
        self._started_at[view.key] = self.clock()
        self.show_view(view)
        if has_training(view) or self.active_panel == "training":
            # A training run opens on its own panel; another run does not open on that panel's empty hint.
            self.action_show_panel(self._first_panel(view))
        self._fill_runs()

    @on(EventsReady)
    def _events(self, message: EventsReady) -> None:
        self._drain(message.key)

    def _drain(self, key: str) -> None:
        view = self.views.get(key)
        bridge = self._bridges.get(key)
        if view is None or bridge is None:
            self._held.discard(key)
            return
        events = bridge.drain(hold=True)
        if not events:
            self._held.discard(key)  # the hold has ended: the next event posts EventsReady again
            return
        # Held: what arrives meanwhile is taken in one batch at the next tick, not one message each.
        self._held.add(key)
        scored, training = has_scores(view), has_training(view)
        view.apply_all(events)
        for e in events:
            if isinstance(e, ErrorEvent):
                where = f" during {e.phase}" if e.phase else ""
                self.notify(
                    e.message,
                    title=f"{e.error_kind}{where}",
                    severity="warning" if e.error_kind == "cancelled" else "error",
                    timeout=8,
                )
            elif isinstance(e, RunFinished):
                self._fill_runs()
                self.redraw(force=view is self.current)  # the final figures at once, not at the next tick
        if view is self.current and (has_scores(view) != scored or has_training(view) != training):
            self._set_layout_classes(view)
            if has_training(view) and not training:
                self.action_show_panel("training")

    @on(RunSaved)
    def _saved(self, message: RunSaved) -> None:
        # The run's last events may still wait in its held bridge: take them first, so a saved run
        # is never shown as one still running.
        self._drain(message.key)
        view = self.views.get(message.key)
        if message.path and view is not None:
            view.saved(message.path)
            self.notify(f"snapshot: {message.path}", title=f"run {view.state}", timeout=6)
        elif message.error:
            self.notify(message.error, severity="error", timeout=10)
        self._bridges.pop(message.key, None)  # drained for the last time: the run sends nothing more
        self._held.discard(message.key)
        self._trim_views()
        self.list_snapshots()

    def _trim_views(self) -> None:
        """Hold at most MAX_VIEWS runs in full, so that a dashboard left running a loop of runs for hours
        stays flat in memory: the oldest saved run not on display goes first. It stays in the Runs list
        as its snapshot (read back from the folder's listing) and opens from there again."""
        for key in list(self.views):
            if len(self.views) <= MAX_VIEWS:
                break
            v = self.views[key]
            if v is self.current or v.running or (v.source == "live" and not v.snapshot_path):
                continue
            del self.views[key]
            self._bridges.pop(key, None)
            self._started_at.pop(key, None)

    @on(RunRefused)
    def _refused(self, message: RunRefused) -> None:
        self.notify(message.message, title="cannot run", severity="error", timeout=10)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR:
            what = "the run" if event.worker.group == "run" else "a file task"
            self.notify(f"{what} stopped on an internal error: {event.worker.error}", severity="error", timeout=10)

    # -- the runs list -----------------------------------------------------------------------------
    def list_snapshots(self) -> None:
        """Read the profiles folder on a worker; SnapshotsListed fills the Runs panel."""
        folder = self.profiles_dir
        self.run_worker(lambda: self.post_message(SnapshotsListed(list_snapshots(folder))), thread=True,
                        exclusive=True, exit_on_error=False, group="list", name="list snapshots")

    @on(SnapshotsListed)
    def _listed(self, message: SnapshotsListed) -> None:
        self._file_rows = message.rows
        self._fill_runs()

    def _fill_runs(self) -> None:
        """This session's runs, then the folder's other snapshots: from memory, no disk read."""
        rows: list[tuple[str, list[str]]] = []
        for key, v in reversed(list(self.views.items())):
            if v.source == "live":
                rows.append((f"live:{key}", live_row(v, v.snapshot_path in self.marked)))
        saved_here = {v.snapshot_path for v in self.views.values() if v.snapshot_path and v.source == "live"}
        for path, cells in self._file_rows:
            if path in saved_here:
                continue
            shown = list(cells)
            shown[-2] = ("✓ " if path in self.marked else "") + shown[-2]
            rows.append((f"file:{path}", shown))
        # A listing (or a run's end) that arrives while the app is closing finds no panel to fill, or one
        # whose table is already taken down (is_running is cleared first): nothing is left to show it on.
        if not self.is_running:
            return
        for panel in self.query(RunsPanel):
            panel.fill(rows)

    @on(DataTable.RowSelected, "#runs-table")
    def _open_row(self, event: DataTable.RowSelected) -> None:
        key = str(event.row_key.value)
        if key.startswith("live:"):
            view = self.views.get(key.removeprefix("live:"))
            if view is not None:
                self.show_view(view)
                self.action_show_panel(self._first_panel(view))
        elif key.startswith("file:"):
            self.open_snapshot(Path(key.removeprefix("file:")))

    def open_snapshot(self, path: Path) -> None:
        """Load and replay a snapshot on a worker; SnapshotOpened shows it."""
        key = f"file-{next(self._keys)}"

        def read() -> None:
            from embprof.engine.snapshot import load

            try:
                snap = load(path)
            except UserError as exc:
                self.post_message(SnapshotOpened(str(path), None, str(exc)))
                return
            view = RunView(key=key, source="snapshot", plan=snap.plan, plan_note=snap.plan_note, snapshot_path=str(path))
            view.apply_all([clean(e) for e in snap.events])  # a snapshot's fields are data: no control character reaches the screen
            self.post_message(SnapshotOpened(str(path), view, None))

        self.run_worker(read, thread=True, exit_on_error=False, group="files", name=f"open {path.name}")

    @on(SnapshotOpened)
    def _opened(self, message: SnapshotOpened) -> None:
        if message.view is None:
            self.notify(message.error or "cannot open", title="cannot open", severity="error", timeout=10)
            return
        self.views[message.view.key] = message.view
        self.show_view(message.view)
        self.action_show_panel(self._first_panel(message.view))
        self._trim_views()

    def _highlighted_snapshot(self) -> str | None:
        table = self.query_one("#runs-table", DataTable)
        if table.row_count == 0:
            return None
        key = str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)
        if key.startswith("file:"):
            return key.removeprefix("file:")
        view = self.views.get(key.removeprefix("live:"))
        return view.snapshot_path if view is not None else None

    def action_mark(self) -> None:
        """Mark (or unmark) the highlighted run in the Runs panel for a comparison."""
        if self.active_panel != "runs":
            self.action_show_panel("runs")
            return
        path = self._highlighted_snapshot()
        if path is None:
            self.notify("only a saved run can be compared; this one has no snapshot yet", severity="warning")
            return
        if path in self.marked:
            self.marked.remove(path)
        else:
            self.marked.append(path)
        table = self.query_one("#runs-table", DataTable)
        row = table.cursor_row
        self._fill_runs()
        table.move_cursor(row=row)

    def action_compare(self) -> None:
        if len(self.marked) < 2:
            self.notify("mark two or more saved runs in the Runs panel (5) with m, then press c", severity="warning")
            return
        marked = list(self.marked)

        def compare() -> None:
            from embprof.engine.compare import compare_tables
            from embprof.engine.snapshot import load

            try:
                snaps = [clean(load(p)) for p in marked]
                names = [Path(p).stem for p in marked]
                self.post_message(CompareReady(compare_tables(snaps, names), snaps, names, None))
            except UserError as exc:
                self.post_message(CompareReady([], [], [], str(exc)))

        self.run_worker(compare, thread=True, exclusive=True, exit_on_error=False, group="compare", name="compare")

    @on(CompareReady)
    def _compared(self, message: CompareReady) -> None:
        if message.error:
            self.notify(message.error, title="cannot compare", severity="error", timeout=10)
            return
        self.push_screen(CompareScreen(message.tables, message.snaps, message.names, self.profiles_dir))

    # -- actions -----------------------------------------------------------------------------------
    def action_new_run(self) -> None:
        def chosen(plan: RunPlan | None) -> None:
            if plan is not None:
                self.start_run(plan)

        shown = self.current.plan if self.current is not None and self.current.plan is not None else self.plan
        self.push_screen(RunForm(shown), chosen)

    def action_rerun(self) -> None:
        """Run exactly the plan of the run on display (live or from a snapshot) once more."""
        view = self.current
        if view is None:
            self.start_run(self.plan)
        elif view.plan is None:
            why = f" ({view.plan_note})" if view.plan_note else ""
            self.notify(f"this snapshot records no plan to run again{why}; press n for a new run", severity="warning", timeout=8)
        else:
            self.start_run(view.plan)

    def action_stop(self) -> None:
        if self.runner is not None and not self.runner.finished:
            self.runner.cancel()
            # self.plan is the plan of the run in progress (start_run set it).
            where = shutdown.stop_point(self.plan.workload.name, self.plan.target.kind == "server")
            self.notify(f"{where}; what was measured is kept")
        else:
            self.notify("nothing is running")

    def action_save(self) -> None:
        v = self.current
        if v is None:
            self.notify("no run on display")
        elif v.snapshot_path:
            self.notify(f"saved: {v.snapshot_path}")
        elif v.running:
            self.notify("the run is saved when it ends (stop it with s)")
        else:
            self.notify("the snapshot could not be written; check the profiles folder", severity="warning")

    def action_open(self) -> None:
        self.list_snapshots()
        self.action_show_panel("runs")
        self.query_one("#runs-table", DataTable).focus()

    def action_export(self) -> None:
        v = self.current
        if v is None or not v.snapshot_path:
            self.notify("no saved run on display to export", severity="warning")
            return
        path = Path(v.snapshot_path)

        def chosen(fmt_name: str | None) -> None:
            if fmt_name is not None:
                self.run_worker(lambda: self._export(path, fmt_name), thread=True, exit_on_error=False, group="files",
                                name=f"export {fmt_name}")

        self.push_screen(ExportScreen(), chosen)

    def _export(self, path: Path, fmt_name: str) -> None:
        """On a worker: read the snapshot, format it, write the file beside it."""
        from embprof.engine.files import atomic_write_bytes
        from embprof.engine.report import export
        from embprof.engine.snapshot import load

        try:
            out = path.with_suffix({"md": ".md", "csv": ".csv", "json": ".export.json"}[fmt_name])
            atomic_write_bytes(out, export(load(path), fmt_name).encode("utf-8"))
        except (UserError, OSError) as exc:
            self.post_message(FileWritten(None, f"export failed: {exc}"))
            return
        self.post_message(FileWritten(str(out), None))

    @on(FileWritten)
    def _written(self, message: FileWritten) -> None:
        if message.path:
            self.notify(f"exported: {message.path}")
        else:
            self.notify(message.error or "not written", severity="error")

    def notify(self, message: str, *, title: str = "", severity: SeverityLevel = "information", timeout: float | None = None,
               markup: bool = False) -> None:
        """Every notification is plain text with control characters escaped: most carry text from outside
        (an error a server sent, a file or model name), where a '[' is not markup and an ESC is not a command."""
        super().notify(printable(message), title=one_line(title), severity=severity, timeout=timeout, markup=markup)

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def _stop_signal(self, signum: int) -> None:
        first = self.stopped_by is None
        self.stopped_by = signum
        if not first:
            return
        self.call_later(self.action_quit)
        if signum == getattr(signal, "SIGHUP", None):
            # The terminal is gone: Textual's own ending writes to it (restoring the screen) and can block
            # on a queue nobody drains. The run is stopped and saved off the UI thread, and the process
            # then ends whatever the UI is doing.
            threading.Thread(target=self._end_after_hangup, args=(signum,), name="embprof-hangup", daemon=True).start()

    def _end_after_hangup(self, signum: int) -> None:
        # Polled: a run being prepared has no runner yet, and must be stopped as soon as it has one.
        while not self._idle.wait(0.1):  # idle: the run has ended and its snapshot is written (or its failure posted)
            runner = self.runner
            if runner is not None and not runner.finished:
                runner.cancel(shutdown.name(signum))
        os._exit(128 + signum)

    async def action_quit(self) -> None:
        runner = self.runner
        if runner is not None and not runner.finished:
            self.notify("stopping the run before quitting…")
            runner.cancel(shutdown.name(self.stopped_by) if self.stopped_by is not None else "the user")
            while not runner.wait(0):  # polled, so no executor thread outlives the app
                await asyncio.sleep(0.05)
        await self.workers.wait_for_complete()
        self.exit()

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("New run", "Choose model, device, dtype and workload", self.action_new_run)
        yield SystemCommand("Run again", "Run the plan of the run on display once more", self.action_rerun)
        yield SystemCommand("Stop", "Stop the run at the next batch boundary", self.action_stop)
        yield SystemCommand("Open snapshot", "Open a saved snapshot from the profiles folder", self.action_open)
        yield SystemCommand("Export", "Export the run on display", self.action_export)
        for pid, title in PANELS:
            yield SystemCommand(f"Show {title}", f"Show the {title} panel", lambda p=pid: self.action_show_panel(p))
