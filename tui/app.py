"""The Textual dashboard: `embprof` with no subcommand.

Attributes go down, messages come up: the engine's events arrive from the run's thread through
a Bridge that coalesces them into one EventsReady message at a time, the app folds them into the
RunView on display, and a timer redraws the panels that changed at most a few times a second.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from textual import on
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, DataTable, Footer, Input, Label, Select, Static, Tab, Tabs
from textual.worker import Worker, WorkerState

from embprof.engine.errors import UserError
from embprof.engine.events import ErrorEvent, Event, Subscriber
from embprof.engine.targets import DTYPES, TargetSpec

from .state import RunView
from .widgets import CpuPanel, LatencyPanel, MemoryPanel, Panel, RunsPanel, SimilarityPanel, StatusBar

PANELS: tuple[tuple[str, str], ...] = (
    ("latency", "Latency"),
    ("memory", "Memory"),
    ("cpu", "CPU"),
    ("similarity", "Scores"),
    ("runs", "Runs"),
)
WIDE_MIN = (150, 40)  # at least this many columns and rows: every panel at once


# -- what the app asks the engine for --------------------------------------------------------------
@dataclass
class RunRequest:
    spec: TargetSpec = field(default_factory=TargetSpec)
    workload: str = "encode"
    server: Any = None  # a ServerSpec: an embedding server instead of a local model
    params: dict[str, Any] = field(default_factory=dict)
    sample_hz: float = 10.0

    def build_workload(self) -> Any:
        """The engine workload for this request; bad parameters raise UserError in prepare()."""
        p = self.params
        if self.workload == "load":
            from embprof.engine.workloads.load import LoadWorkload

            return LoadWorkload(requests=int(p.get("repeats") or 200), concurrency=int(p.get("concurrency") or 1),
                                input=p.get("input") or None)
        if self.workload == "sweep":
            from embprof.engine.workloads.sweep import SweepWorkload, parse_axes

            return SweepWorkload(
                axes=parse_axes(list(p.get("axes") or [])),
                input=p.get("input") or None,
                mode=p.get("mode", "plain"),
                prompt_name=p.get("prompt_name") or None,
                batch_size=int(p.get("batch_size", 32)),
                budget_s=float(p.get("budget", 30.0)),
            )
        if self.workload == "mteb":
            from embprof.engine.workloads.mteb_tasks import MtebWorkload

            return MtebWorkload(
                tasks=list(p.get("tasks") or []),
                data_dir=p.get("data_dir") or None,
                results_dir=str(p.get("results_dir") or "results"),
                batch_size=int(p.get("batch_size", 32)),
                loops=int(p.get("loops") or 7),
                text_file=p.get("text") or None,
            )
        if self.workload == "speed":
            from embprof.engine.workloads.speed import SpeedWorkload

            return SpeedWorkload(text_file=p.get("text") or None, loops=int(p.get("loops", 7)), batch_size=int(p.get("batch_size", 32)))
        if self.workload == "similarity":
            from embprof.engine.workloads.similarity import SimilarityWorkload

            queries = [q for q in [p.get("query") or ""] if q]
            return SimilarityWorkload(queries=queries, docs_file=p.get("docs") or None, prompt_name=p.get("prompt_name") or None)
        from embprof.engine.workloads.encode import EncodeWorkload

        return EncodeWorkload(
            input=p.get("input") or None,
            mode=p.get("mode", "plain"),
            prompt_name=p.get("prompt_name") or None,
            batch_size=int(p.get("batch_size", 32)),
            warmups=int(p.get("warmups", 1)),
            repeats=int(p.get("repeats", 3)),
        )


class RunnerLike(Protocol):
    def run(self) -> None: ...
    def cancel(self) -> None: ...
    def wait(self, timeout: float | None = None) -> bool: ...
    @property
    def finished(self) -> bool: ...


RunnerFactory = Callable[[RunRequest, Any, list[Subscriber]], RunnerLike]


def engine_runner(request: RunRequest, workload: Any, subscribers: list[Subscriber]) -> RunnerLike:
    from embprof.engine.runner import Runner
    from embprof.engine.targets import SentenceTransformerTarget

    if request.server is not None:
        from embprof.engine.http_target import HttpTarget

        target: Any = HttpTarget(request.server)
        target.resolve()  # reachable, and its process found; a UserError here is refused like bad input
    else:
        target = SentenceTransformerTarget(request.spec)
    return Runner(target, workload, sample_hz=request.sample_hz, subscribers=subscribers)


# -- messages ------------------------------------------------------------------------------------------
class EventsReady(Message):
    """Events are waiting in a run's bridge. Posted once until drained: the UI is never behind."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key


class RunSaved(Message):
    def __init__(self, key: str, path: str | None, error: str | None) -> None:
        super().__init__()
        self.key = key
        self.path = path
        self.error = error


class RunStarting(Message):
    """A run's view and bridge; posted before its first event, so the queue keeps them in order."""

    def __init__(self, view: RunView, bridge: Bridge) -> None:
        super().__init__()
        self.view = view
        self.bridge = bridge


class RunRefused(Message):
    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message


class Bridge:
    """An engine subscriber on the run's threads; hands events to the UI thread in batches."""

    def __init__(self, app: App[Any], key: str) -> None:
        self._app = app
        self._key = key
        self._lock = threading.Lock()
        self._buffer: list[Event] = []
        self._pending = False

    def __call__(self, event: Event) -> None:
        with self._lock:
            self._buffer.append(event)
            if self._pending:
                return
            self._pending = True
        self._app.post_message(EventsReady(self._key))

    def drain(self) -> list[Event]:
        with self._lock:
            out, self._buffer = self._buffer, []
            self._pending = False
        return out


# -- screens --------------------------------------------------------------------------------------------
class RunForm(ModalScreen[RunRequest | None]):
    """Choose the target and the workload."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, current: RunRequest) -> None:
        super().__init__()
        self.current = current

    def compose(self) -> ComposeResult:
        c = self.current
        p = c.params
        with Vertical(id="form"):
            yield Label("New run", id="form-title")
            with Grid(id="form-grid"):
                yield Label("model")
                yield Input(compact=True, value=c.spec.model or "", placeholder="HF id or folder (empty: bundled all-MiniLM-L6-v2)", id="f-model")
                yield Label("server URL")
                # Shown without credentials: never on screen (type them again to change the server).
                yield Input(compact=True, value=(c.server.display_name.rsplit(" (", 1)[0] if c.server else ""), placeholder="instead of a model, e.g. http://127.0.0.1:8080", id="f-server")
                yield Label("server API")
                yield Select([(a, a) for a in ("llama", "openai")], compact=True, value=(c.server.api if c.server else "llama"), allow_blank=False, id="f-api")
                yield Label("device")
                yield Select([(d, d) for d in ("auto", "cpu", "cuda", "mps")], compact=True, value=c.spec.device, allow_blank=False, id="f-device")
                yield Label("dtype")
                yield Select([(d, d) for d in DTYPES], compact=True, value=c.spec.dtype, allow_blank=False, id="f-dtype")
                yield Label("workload")
                yield Select([(w, w) for w in ("encode", "speed", "similarity", "mteb", "sweep", "load")], compact=True, value=c.workload, allow_blank=False, id="f-workload")
                yield Label("encode as")
                yield Select([(m, m) for m in ("plain", "query", "document")], compact=True, value=p.get("mode", "plain"), allow_blank=False, id="f-mode")
                yield Label("batch size")
                yield Input(compact=True, value=str(p.get("batch_size", 32)), type="integer", id="f-batch")
                yield Label("repeats / loops")
                yield Input(compact=True, value=str(p.get("repeats", p.get("loops", ""))), type="integer", placeholder="encode 3, speed 7", id="f-repeats")
                yield Label("file")
                yield Input(compact=True, value=p.get("input", "") or p.get("docs", "") or p.get("text", "") or "", placeholder="encode: lines · similarity: documents · speed: the text", id="f-file")
                yield Label("prompt name")
                yield Input(compact=True, value=p.get("prompt_name", "") or "", placeholder="e.g. query, STS (see `embprof prompts`)", id="f-prompt")
                yield Label("query")
                yield Input(compact=True, value=p.get("query", "") or "", placeholder="similarity: a query (with a docs file)", id="f-query")
                yield Label("MTEB tasks")
                yield Input(compact=True, value=" ".join(p.get("tasks") or []), placeholder="mteb: e.g. STS16 JSTS Banking77Classification", id="f-tasks")
                yield Label("MTEB data dir")
                yield Input(compact=True, value=p.get("data_dir", "") or "", placeholder="mteb: local JSON Lines (empty: the Hub)", id="f-data")
                yield Label("sweep axes")
                yield Input(compact=True, value=" ".join(p.get("axes") or []), placeholder="sweep: e.g. lines=25,50,100 threads=1,2", id="f-axes")
                yield Label("sample Hz")
                yield Input(compact=True, value=f"{c.sample_hz:g}", type="number", id="f-hz")
            yield Static("", id="form-error")
            with Horizontal(id="form-buttons"):
                yield Button("Run", variant="primary", id="f-run", compact=True)
                yield Button("Cancel", id="f-cancel", compact=True)

    def on_mount(self) -> None:
        if not getattr(self.app, "cursor_blink", True):
            for field_ in self.query(Input):
                field_.cursor_blink = False

    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed, "#f-cancel")
    def _cancel(self) -> None:
        self.dismiss(None)

    @on(Input.Submitted)
    @on(Button.Pressed, "#f-run")
    def _submit(self) -> None:
        try:
            self.dismiss(self._request())
        except UserError as exc:
            self.query_one("#form-error", Static).update(str(exc))

    def _request(self) -> RunRequest:
        v = lambda i: self.query_one(f"#{i}", Input).value.strip()  # noqa: E731
        sel = lambda i: str(self.query_one(f"#{i}", Select).value)  # noqa: E731
        workload = sel("f-workload")
        try:
            batch = int(v("f-batch") or 32)
            repeats = int(v("f-repeats")) if v("f-repeats") else None
            hz = float(v("f-hz") or 10)
        except ValueError:
            raise UserError("batch size, repeats and sample Hz must be numbers") from None
        if not 1 <= hz <= 100:
            raise UserError(f"sample rate must be between 1 and 100 Hz, not {hz:g}")
        spec = TargetSpec(model=v("f-model") or None, device=sel("f-device"), dtype=sel("f-dtype"))
        spec.validate()
        server = None
        if v("f-server"):
            from embprof.engine.http_target import ServerSpec

            if v("f-model"):
                raise UserError("give a model or a server URL, not both")
            server = ServerSpec(url=v("f-server"), api=sel("f-api"))  # type: ignore[arg-type]
            server.validate()
        params: dict[str, Any] = {"batch_size": batch, "prompt_name": v("f-prompt") or None}
        if workload == "encode":
            params.update(repeats=repeats or 3, input=v("f-file") or None, mode=sel("f-mode"))
        elif workload == "speed":
            params.update(loops=repeats or 7, text=v("f-file") or None)
        elif workload == "load":
            if not v("f-server"):
                raise UserError("the load workload drives a server: give its URL")
            params.update(repeats=repeats or 200, input=v("f-file") or None)
        elif workload == "sweep":
            axes = v("f-axes").split()
            if not axes:
                raise UserError("give at least one sweep axis, e.g. lines=25,50,100")
            from embprof.engine.workloads.sweep import parse_axes

            parse_axes(axes)  # one sentence here rather than a refused run
            params.update(axes=axes, input=v("f-file") or None, mode=sel("f-mode"))
        elif workload == "mteb":
            tasks = v("f-tasks").replace(",", " ").split()
            if not tasks:
                raise UserError("name at least one MTEB task, e.g. STS16")
            params.update(tasks=tasks, data_dir=v("f-data") or None, loops=repeats or 7)
        else:
            params.update(query=v("f-query") or None, docs=v("f-file") or None)
        return RunRequest(spec=spec, workload=workload, params=params, sample_hz=hz, server=server)


class ExportScreen(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def compose(self) -> ComposeResult:
        with Vertical(id="export"):
            yield Label("Export the run on display as")
            with Horizontal():
                yield Button("Markdown", id="md", variant="primary")
                yield Button("CSV", id="csv")
                yield Button("JSON", id="json")
                yield Button("Cancel", id="cancel")

    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed)
    def _pick(self, event: Button.Pressed) -> None:
        self.dismiss(None if event.button.id == "cancel" else event.button.id)


class CompareScreen(ModalScreen[None]):
    """The marked snapshots side by side, the same tables `embprof compare` prints."""

    BINDINGS = [Binding("escape", "close", "Close"), Binding("w", "write", "Write Markdown + chart")]

    def __init__(self, tables: list[Any], snaps: list[Any], names: list[str], out_dir: Path) -> None:
        super().__init__()
        self.tables = tables
        self.snaps = snaps
        self.names = names
        self.out_dir = out_dir

    def compose(self) -> ComposeResult:
        from textual.containers import VerticalScroll

        from .console import rich_table

        with VerticalScroll(id="compare"):
            yield Label("Compare (A is the first marked) — w writes Markdown and a chart, Esc closes", id="compare-title")
            for t in self.tables:
                yield Static(rich_table(t), classes="compare-table")

    def action_close(self) -> None:
        self.dismiss(None)

    def action_write(self) -> None:
        from datetime import datetime

        from embprof.engine.charts import compare_chart
        from embprof.engine.files import atomic_write_bytes
        from embprof.engine.report import tables_markdown

        stem = "compare-" + datetime.now().strftime("%Y%m%dT%H%M%S")
        try:
            images = [p.name for p in compare_chart(self.snaps, self.names, self.out_dir, stem)]
            path = self.out_dir / f"{stem}.md"
            atomic_write_bytes(path, tables_markdown("# embprof comparison", self.tables, images).encode("utf-8"))
        except OSError as exc:
            self.app.notify(f"not written: {exc}", severity="error")
            return
        self.app.notify(f"written: {path}")


HELP = """\
[b]embprof[/b] — keys

  [b]n[/b]  new run: choose model, device, dtype, workload and its parameters
  [b]r[/b]  run again with the last settings
  [b]s[/b]  stop the run at the next batch boundary (what was measured is kept)
  [b]ctrl+s[/b]  save the run on display as a snapshot (finished runs are saved automatically)
  [b]o[/b]  open a saved snapshot (the Runs panel)
  [b]e[/b]  export the run on display (Markdown, CSV, JSON) next to its snapshot
  [b]m[/b]  in Runs: mark a saved run; [b]c[/b] compare the marked runs side by side
  [b]1–5[/b]  Latency, Memory, CPU, Scores (similarity or MTEB), Runs (one at a time in a small terminal)
  [b]ctrl+p[/b]  command palette
  [b]?[/b]  this help      [b]q[/b]  quit (stops a running run first)

Press any key to close.
"""


class HelpScreen(ModalScreen[None]):
    def compose(self) -> ComposeResult:
        yield Static(HELP, id="help")

    def on_key(self) -> None:
        self.dismiss(None)


def _snapshot_row(path: Path) -> list[str]:
    """A saved snapshot's headline, read without validating it: listing stays quick, and a file
    that does not parse is only refused, with its reason, when it is opened."""
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        target, summary = data.get("target", {}), data.get("summary", {})
        stats = summary.get("encode", {}).get("stats", {})
        rss = (summary.get("peaks", {}).get("rss_mib") or {}).get("sampled")
        return [
            str(data.get("workload", {}).get("name", "")),
            str(target.get("model_name", "")),
            str(target.get("device_resolved") or target.get("device", "")),
            str(data.get("status", "")),
            f"{stats['mean_s']:.4f}" if stats.get("count") else "",
            f"{rss:,.0f} MiB" if rss else "",
        ]
    except (OSError, ValueError, AttributeError, TypeError, KeyError):
        return ["", "", "", "unreadable", "", ""]


# -- the app -------------------------------------------------------------------------------------------
class EmbprofApp(App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "embprof"
    BINDINGS = [
        Binding("n", "new_run", "New run"),
        Binding("r", "rerun", "Run"),
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
        request: RunRequest | None = None,
        *,
        autostart: bool = True,
        profiles_dir: Path = Path("profiles"),
        clock: Callable[[], float] = time.monotonic,
        runner_factory: RunnerFactory = engine_runner,
        refresh_hz: float = 2.0,
        save_snapshots: bool = True,
        cursor_blink: bool = True,
    ) -> None:
        super().__init__()
        # Animated tab underlines cost a dozen extra frames per panel switch, each competing with
        # the run for the CPU; a profiler's UI has no use for them.
        self.animation_level = "none"
        self.save_snapshots = save_snapshots
        self.cursor_blink = cursor_blink  # off in snapshot tests: a blinking cursor is not reproducible
        self.request = request or RunRequest()
        self.autostart = autostart
        self.profiles_dir = profiles_dir
        self.clock = clock
        self.runner_factory = runner_factory
        self.refresh_hz = refresh_hz
        self.views: dict[str, RunView] = {}
        self.current: RunView | None = None
        self.runner: RunnerLike | None = None
        self._bridges: dict[str, Bridge] = {}
        self._started_at: dict[str, float] = {}
        self._drawn: dict[str, Any] = {}
        self._status: StatusBar
        self._panels: dict[str, Panel] = {}
        self._keys = itertools.count(1)
        self.active_panel = "latency"
        self.marked: list[str] = []  # snapshot files marked in the Runs panel, for compare

    # -- layout --------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield StatusBar(clock=self.clock, id="status")
        yield Tabs(*[Tab(title, id=f"tab-{pid}") for pid, title in PANELS], id="tabs")
        with Grid(id="panels"):
            yield LatencyPanel(id="latency")
            yield MemoryPanel(id="memory")
            yield CpuPanel(id="cpu")
            yield SimilarityPanel(id="similarity")
            yield RunsPanel(id="runs")
        yield Footer()

    def on_mount(self) -> None:
        # References held, not queried on every tick: a timer can fire while the DOM is torn down.
        self._status = self.query_one(StatusBar)
        self._panels = {pid: self.query_one(f"#{pid}", Panel) for pid, _ in PANELS}
        self._apply_layout()
        self.action_show_panel("latency")
        self.set_interval(1 / self.refresh_hz, self._redraw)
        self.set_interval(0.5, self._status.tick)
        self._fill_runs()
        self._redraw(force=True)
        if self.autostart:
            # After the first frame: the import of torch is then a phase on screen, not a frozen terminal.
            self.call_after_refresh(self.start_run, self.request)

    def on_resize(self) -> None:
        self._apply_layout()

    def _apply_layout(self) -> None:
        if not self.screen_stack:  # the last screen is already gone: the app is closing
            return
        wide = self.size.width >= WIDE_MIN[0] and self.size.height >= WIDE_MIN[1]
        self.screen.set_class(wide, "wide")
        self._redraw(force=True)

    def action_show_panel(self, panel_id: str) -> None:
        self.active_panel = panel_id
        for pid, panel in self._panels.items():
            panel.set_class(pid == panel_id, "-active")
        tabs = self.query_one(Tabs)
        if tabs.active != f"tab-{panel_id}":
            tabs.active = f"tab-{panel_id}"
        # First the switch itself, from what the panel drew last; then whatever changed meanwhile.
        self.call_after_refresh(self._redraw)

    @on(Tabs.TabActivated)
    def _tab(self, event: Tabs.TabActivated) -> None:
        if event.tab.id:
            pid = event.tab.id.removeprefix("tab-")
            if pid != self.active_panel:
                self.action_show_panel(pid)

    # -- drawing ---------------------------------------------------------------------------------
    def _visible_panels(self) -> Iterable[Panel]:
        wide = self.screen.has_class("wide")
        for pid, panel in self._panels.items():
            if wide or pid == self.active_panel:
                yield panel

    def _redraw(self, force: bool = False) -> None:
        # A resize can arrive before the mount; a queued redraw (a timer tick, a panel switch's
        # after-refresh) can arrive after the last screen is gone at exit.
        if not self._panels or not self.screen_stack:
            return
        view = self.current
        for panel in self._visible_panels():
            stamp = panel.stamp(view)
            if force or self._drawn.get(panel.id or "") != stamp:
                self._drawn[panel.id or ""] = stamp
                panel.show(view)
        status = (view.key, view.version) if view else None
        if force or self._drawn.get("status") != status:
            self._drawn["status"] = status
            self._status.show(view, self._started_at.get(view.key) if view else None)

    def show_view(self, view: RunView) -> None:
        self.current = view
        self._redraw(force=True)

    # -- runs --------------------------------------------------------------------------------------
    def start_run(self, request: RunRequest) -> None:
        if self.runner is not None and not self.runner.finished:
            self.notify("A run is in progress: stop it first (s).", severity="warning")
            return
        self.request = request
        key = f"run-{next(self._keys)}"
        self.run_worker(lambda: self._work(key, request), thread=True, exclusive=True, exit_on_error=False, group="run", name=key)

    def _work(self, key: str, request: RunRequest) -> None:
        """The run's own thread: prepare, run, save. Everything it learns arrives as messages."""
        from embprof.engine import environment
        from embprof.engine import snapshot as snap_mod

        workload = request.build_workload()
        try:
            workload.prepare()
        except UserError as exc:
            self.post_message(RunRefused(str(exc)))
            return
        view = RunView(key=key)
        bridge = Bridge(self, key)
        recorder = snap_mod.Recorder()
        try:
            runner = self.runner_factory(request, workload, [recorder, bridge])
        except UserError as exc:  # a server that cannot be reached, say: refused like bad input
            self.post_message(RunRefused(str(exc)))
            return
        self.post_message(RunStarting(view, bridge))
        self.runner = runner
        runner.run()
        if not self.save_snapshots:
            return
        try:
            snap = snap_mod.build(recorder.events(), environment.capture(), recorder)
            path = snap_mod.save(snap, self.profiles_dir)
            self.post_message(RunSaved(key, str(path), None))
        except Exception as exc:  # the run's data stays on screen even if the disk refuses it
            self.post_message(RunSaved(key, None, f"snapshot not saved: {exc}"))

    @on(RunStarting)
    def _on_run_starting(self, message: RunStarting) -> None:
        view, bridge = message.view, message.bridge
        self.views[view.key] = view
        self._bridges[view.key] = bridge
        self._started_at[view.key] = self.clock()
        self.show_view(view)
        self._fill_runs()

    @on(EventsReady)
    def _events(self, message: EventsReady) -> None:
        view = self.views.get(message.key)
        bridge = self._bridges.get(message.key)
        if view is None or bridge is None:
            return
        events = bridge.drain()
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
            elif getattr(e, "kind", "") == "run_finished":
                self._fill_runs()
                self._redraw()  # the final figures at once, not at the next tick

    @on(RunSaved)
    def _saved(self, message: RunSaved) -> None:
        view = self.views.get(message.key)
        if message.path and view is not None:
            view.snapshot_path = message.path
            view.version += 1
            self.notify(f"snapshot: {message.path}", title=f"run {view.state}", timeout=6)
        elif message.error:
            self.notify(message.error, severity="error", timeout=10)
        self._fill_runs()

    @on(RunRefused)
    def _refused(self, message: RunRefused) -> None:
        self.notify(message.message, title="cannot run", severity="error", timeout=10)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR and event.worker.group == "run":
            self.notify(f"the run stopped on an internal error: {event.worker.error}", severity="error", timeout=10)

    # -- the runs list -----------------------------------------------------------------------------
    def _fill_runs(self) -> None:
        from embprof.engine.report import fmt

        rows: list[tuple[str, list[str]]] = []
        for key, v in reversed(list(self.views.items())):
            st = v.stats()
            rss = v.peaks.get("rss_mib")
            rows.append(
                (
                    f"live:{key}",
                    [
                        ("✓ " if v.snapshot_path in self.marked else "") + "this session",
                        str(v.workload.get("name", "")),
                        str(v.target.get("model_name", "")),
                        str(v.target.get("device_resolved") or v.target.get("device", "")),
                        v.state_text,
                        fmt(st.get("mean_s"), 4) if st.get("count") else "",
                        f"{rss[0]:,.0f} MiB" if rss else "",
                        Path(v.snapshot_path).name if v.snapshot_path else "",
                    ],
                )
            )
        saved_here = {v.snapshot_path for v in self.views.values() if v.snapshot_path}
        folder = self.profiles_dir
        files = sorted(folder.glob("*.json"), reverse=True) if folder.is_dir() else []
        for f in files:
            if str(f) in saved_here:
                continue
            rows.append((f"file:{f}", [("✓ " if str(f) in self.marked else "") + "saved", *_snapshot_row(f), f.name]))
        self.query_one(RunsPanel).fill(rows)

    @on(DataTable.RowSelected, "#runs-table")
    def _open_row(self, event: DataTable.RowSelected) -> None:
        key = str(event.row_key.value)
        if key.startswith("live:"):
            view = self.views.get(key.removeprefix("live:"))
            if view is not None:
                self.show_view(view)
                self.action_show_panel("latency")
        elif key.startswith("file:"):
            self.open_snapshot(Path(key.removeprefix("file:")))

    def open_snapshot(self, path: Path) -> None:
        from embprof.engine.snapshot import load

        try:
            snap = load(path)
        except UserError as exc:
            self.notify(str(exc), title="cannot open", severity="error", timeout=10)
            return
        view = RunView(key=f"file-{next(self._keys)}", source="snapshot")
        view.apply_all(snap.events)
        view.snapshot_path = str(path)
        self.views[view.key] = view
        self.show_view(view)
        self.action_show_panel("latency")
        self._fill_runs()

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
        from embprof.engine.compare import compare_tables
        from embprof.engine.snapshot import load

        try:
            snaps = [load(p) for p in self.marked]
            names = [Path(p).stem for p in self.marked]
            tables = compare_tables(snaps, names)
        except UserError as exc:
            self.notify(str(exc), title="cannot compare", severity="error", timeout=10)
            return
        self.push_screen(CompareScreen(tables, snaps, names, self.profiles_dir))

    # -- actions -----------------------------------------------------------------------------------
    def action_new_run(self) -> None:
        def chosen(request: RunRequest | None) -> None:
            if request is not None:
                self.start_run(request)

        self.push_screen(RunForm(self.request), chosen)

    def action_rerun(self) -> None:
        self.start_run(self.request)

    def action_stop(self) -> None:
        if self.runner is not None and not self.runner.finished:
            self.runner.cancel()
            self.notify("stopping at the next batch boundary; what was measured is kept")
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
        self._fill_runs()
        self.action_show_panel("runs")
        self.query_one("#runs-table", DataTable).focus()

    def action_export(self) -> None:
        v = self.current
        if v is None or not v.snapshot_path:
            self.notify("no saved run on display to export", severity="warning")
            return
        path = Path(v.snapshot_path)

        def chosen(fmt_name: str | None) -> None:
            if fmt_name is None:
                return
            from embprof.engine.files import atomic_write_bytes
            from embprof.engine.report import export
            from embprof.engine.snapshot import load

            try:
                suffix = {"md": ".md", "csv": ".csv", "json": ".export.json"}[fmt_name]
                out = path.with_suffix(suffix)
                atomic_write_bytes(out, export(load(path), fmt_name).encode("utf-8"))
                self.notify(f"exported: {out}")
            except (UserError, OSError) as exc:
                self.notify(f"export failed: {exc}", severity="error")

        self.push_screen(ExportScreen(), chosen)

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    async def action_quit(self) -> None:
        runner = self.runner
        if runner is not None and not runner.finished:
            self.notify("stopping the run before quitting…")
            runner.cancel()
            while not runner.wait(0):  # polled, so no executor thread outlives the app
                await asyncio.sleep(0.05)
        await self.workers.wait_for_complete()
        self.exit()

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("New run", "Choose model, device, dtype and workload", self.action_new_run)
        yield SystemCommand("Run again", "Run with the last settings", self.action_rerun)
        yield SystemCommand("Stop", "Stop the run at the next batch boundary", self.action_stop)
        yield SystemCommand("Open snapshot", "Open a saved snapshot from the profiles folder", self.action_open)
        yield SystemCommand("Export", "Export the run on display", self.action_export)
        for pid, title in PANELS:
            yield SystemCommand(f"Show {title}", f"Show the {title} panel", lambda p=pid: self.action_show_panel(p))
