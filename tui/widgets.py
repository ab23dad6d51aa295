"""The dashboard's panels. Each draws one RunView; none does any work of its own.

Charts are textual-plotext plots, bars and sparklines are Textual's own widgets; the panels only
choose what to plot.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.progress_bar import ProgressBar as RichProgressBar
from rich.table import Table as RichTable
from rich.text import Text
from textual.app import ComposeResult
from textual.color import Color, Gradient
from textual.containers import Horizontal, Vertical
from textual.widget import Widget
from textual.widgets import DataTable, Sparkline, Static
from textual_plotext import PlotextPlot

from embprof.engine.report import MTEB_COLUMNS, fmt, largest_fit_text, mteb_rows

from .state import RunView

PHASE_COLOURS = ("#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#e15759", "#9c755f")
HEAT = Gradient.from_colors(Color.parse("#1f3b73"), Color.parse("#5f6f7a"), Color.parse("#f2a541"), Color.parse("#e8523c"))


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


def _mib(v: float | None) -> str:
    return "N/A" if v is None else f"{v:,.1f} MiB"


def _s(v: float | None) -> str:
    if v is None:
        return "N/A"
    return f"{v * 1000:,.1f} ms" if v < 1 else f"{v:,.3f} s"


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

    def on_mount(self) -> None:
        self.border_title = self.panel_title

    def stamp(self, view: RunView | None) -> tuple[Any, ...]:
        """What this panel's picture depends on: equal stamps, nothing to redraw."""
        # Not the size: a resize re-renders the plots from their own cache key, and a panel that is
        # hidden has no size, so its size would force a rebuild on every switch.
        if view is None:
            return (None,)
        return (view.key, *(view.versions[k] for k in self.depends_on))

    def show(self, view: RunView | None) -> None:
        raise NotImplementedError


class StatusBar(Static):
    """Target, workload, state and elapsed time of the run on display."""

    DEFAULT_CSS = """
    StatusBar { height: 1; background: $primary-background; color: $text; padding: 0 1; }
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, **kw: Any) -> None:
        super().__init__(**kw)
        self._clock = clock
        self.view: RunView | None = None
        self.started_at: float | None = None

    def show(self, view: RunView | None, started_at: float | None = None) -> None:
        self.view = view
        self.started_at = started_at
        self.update(self._text())

    def tick(self) -> None:
        if self.view is not None and self.view.running:
            self.update(self._text())

    def _text(self) -> Text:
        v = self.view
        if v is None:
            return Text.from_markup("[b]embprof[/b]  no run yet · press [b]n[/b] for a new run, [b]r[/b] to run the default")
        t = v.target
        target = f"{t.get('model_name', '?')} · {t.get('backend', '')} · {t.get('device_resolved') or t.get('device', '?')} · {t.get('dtype', '')}"
        if v.running and self.started_at is not None:
            elapsed = self._clock() - self.started_at
        else:
            elapsed = v.duration_s if v.duration_s is not None else v.last_t_s
        colour = {"done": "green", "failed": "red", "stopped": "yellow"}.get(v.state, "cyan")
        src = " (snapshot)" if v.source == "snapshot" else ""
        # State and time first: on a narrow terminal the long model name is what gets cut.
        return Text.assemble(
            ("embprof ", "bold"),
            (v.state_text, f"bold {colour}"),
            (f" {elapsed:,.1f} s{src}", ""),
            ("  │  ", "dim"),
            (str(v.workload.get("name", "")), "bold"),
            ("  │  ", "dim"),
            (target, ""),
        )


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


class LatencyPanel(Panel):
    panel_title = "Latency"
    depends_on = ("timing",)
    DEFAULT_CSS = """
    LatencyPanel #latency-stats { height: auto; }
    LatencyPanel Horizontal { height: 1fr; }
    LatencyPanel #latency-hist { width: 2fr; }
    LatencyPanel #latency-plot { width: 3fr; }
    """

    _hist_key: tuple[str, int] | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="latency-stats")
        with Horizontal():
            yield Plot(id="latency-plot")
            yield Plot(id="latency-hist")

    def show(self, view: RunView | None) -> None:
        stats_w = self.query_one("#latency-stats", Static)
        plot = self.query_one("#latency-plot", Plot)
        hist = self.query_one("#latency-hist", Plot)
        plot.plt.clear_figure()
        # The histogram changes only when a whole call ends, not with every batch: rebuilding a
        # plotext chart is the dashboard's most expensive draw.
        hist_key = (view.key, len(view.timed_s)) if view is not None else None
        rebuild_hist = hist_key != self._hist_key
        self._hist_key = hist_key
        if rebuild_hist:
            hist.plt.clear_figure()
        if view is None or (not view.timed_s and not view.warmup_s and not view.batches):
            stats_w.update(Text("No encode timed yet.", style="dim"))
            plot.changed()
            hist.changed()
            return
        st = view.stats()
        tp = view.throughput()
        row = Text()
        if st.get("count"):
            row.append(f"calls {st['count']}  ", style="bold")
            for key, label in (("mean_s", "mean"), ("p50_s", "p50"), ("p95_s", "p95"), ("p99_s", "p99")):
                row.append(f"{label} ", style="dim")
                row.append(f"{_s(st[key])}  ")
            row.append("CV ", style="dim")
            row.append(f"{st['cv_percent']:.1f}%")
        else:
            row.append("no timed call yet", style="dim")
        if view.warmup_s:
            row.append("   warm-up ", style="dim")
            row.append(", ".join(_s(w) for w in view.warmup_s), style="yellow")
            row.append(" (not counted)", style="dim")
        if tp:
            row.append("\n")
            row.append(f"{tp['items_per_s']:,.1f} items/s  {tp['tokens_per_s']:,.0f} tokens/s  {tp['words_per_s']:,.0f} words/s")
        stats_w.update(row)

        timed = [b for b in view.batches if not b.warmup]
        warm = [b for b in view.batches if b.warmup]
        p = plot.plt
        p.title("batch latency (ms) over run time (s)")
        limit = 2 * max(20, plot.size.width)
        if timed:
            xs, ys = thin([b.t_s for b in timed], [b.seconds * 1000 for b in timed], limit)
            p.scatter(xs, ys, marker="dot", color="cyan", label="timed")
        if warm:
            xs, ys = thin([b.t_s for b in warm], [b.seconds * 1000 for b in warm], limit)
            p.scatter(xs, ys, marker="x", color="yellow", label="warm-up")
        plot.changed()
        if rebuild_hist:
            h = hist.plt
            if view.timed_s:
                h.title("encode call latency (ms)")
                h.hist([x * 1000 for x in view.timed_s], bins=min(20, max(3, len(view.timed_s))), color="cyan")
            hist.changed()


class PhaseBands(Widget):
    """The run's phases as coloured bands along the memory chart's time axis, with a legend."""

    DEFAULT_CSS = "PhaseBands { height: 2; }"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.view: RunView | None = None

    def draw(self, view: RunView | None) -> None:
        self.view = view
        self.refresh()

    def render(self) -> Text:
        view = self.view
        width = max(10, self.size.width)
        if view is None or not view.phases:
            return Text("")
        end = max(view.last_t_s, max((p.end_s or 0) for p in view.phases), 1e-9)
        colour_of: dict[str, str] = {}
        for p in view.phases:
            colour_of.setdefault(p.name, PHASE_COLOURS[len(colour_of) % len(PHASE_COLOURS)])
        cells: list[str | None] = [None] * width
        for p in view.phases:
            a = int(p.start_s / end * (width - 1))
            b = int((p.end_s if p.end_s is not None else end) / end * (width - 1))
            colour = "red" if p.ok is False else colour_of[p.name]
            for x in range(a, min(width, max(a + 1, b + 1))):
                cells[x] = colour
        line = Text()
        for cell in cells:
            line.append("▀" if cell else " ", style=cell or "")
        legend = Text()
        for name, colour in colour_of.items():
            legend.append("■ ", style=colour)
            legend.append(f"{name}  ")
        return Text("\n").join([line, legend])


class MemoryPanel(Panel):
    panel_title = "Memory"
    depends_on = ("samples", "phases", "results")
    DEFAULT_CSS = """
    MemoryPanel #memory-peaks { height: auto; }
    MemoryPanel #memory-plot { height: 1fr; }
    """

    def compose(self) -> ComposeResult:
        yield Static(id="memory-peaks")
        yield Plot(id="memory-plot")
        yield PhaseBands(id="phase-bands")

    def show(self, view: RunView | None) -> None:
        peaks_w = self.query_one("#memory-peaks", Static)
        plot = self.query_one("#memory-plot", Plot)
        bands = self.query_one("#phase-bands", PhaseBands)
        p = plot.plt
        p.clear_figure()
        if view is None or not view.samples:
            peaks_w.update(Text("No resource sample yet.", style="dim"))
            plot.changed()
            bands.draw(view)
            return
        xs = [s.t_ns / 1e9 for s in view.samples]
        limit = 2 * max(20, plot.size.width)  # braille: two points a cell
        p.title("MiB over run time (s)")
        p.plot(*thin(xs, [s.rss_mib for s in view.samples], limit), label="process RSS", color="cyan", marker="braille")
        p.plot(*thin(xs, [s.sys_ram_used_mib for s in view.samples], limit), label="system RAM used", color="gray", marker="braille")
        server_pts = [(x, s.server_rss_mib) for x, s in zip(xs, view.samples) if s.server_rss_mib is not None]
        if server_pts:  # an embedding server's own process, beside the client
            p.plot(*thin([a for a, _ in server_pts], [b for _, b in server_pts], limit), label="server RSS", color="green", marker="braille")
        if view.has_gpu:
            for field, label, colour in (
                ("gpu_used_mib", "GPU device used", "magenta"),
                ("gpu_process_mib", "GPU this process", "red"),
                ("torch_reserved_mib", "torch reserved", "orange"),
                ("torch_allocated_mib", "torch allocated", "yellow"),
            ):
                pts = [(x, getattr(s, field)) for x, s in zip(xs, view.samples) if getattr(s, field) is not None]
                if pts:
                    p.plot(*thin([a for a, _ in pts], [b for _, b in pts], limit), label=label, color=colour, marker="braille")
        if "rss_mib" in view.peaks:
            value, at_ns = view.peaks["rss_mib"]
            p.scatter([at_ns / 1e9], [value], marker="●", color="red")
        plot.changed()
        bands.draw(view)

        text = Text()
        if "rss_mib" in view.peaks:
            value, at_ns = view.peaks["rss_mib"]
            at = at_ns / 1e9
            text.append("peak RSS ", style="dim")
            text.append(_mib(value), style="bold")
            text.append(f" at {at:.1f} s during {view.phase_at(at) or '—'}", style="dim")
        if "server_rss_mib" in view.peaks:
            text.append("   server peak RSS ", style="dim")
            text.append(_mib(view.peaks["server_rss_mib"][0]), style="bold")
        counters = view.results.get("kernel_counters") or {}
        if "ru_maxrss_mib" in counters:
            text.append("   ru_maxrss ", style="dim")
            text.append(_mib(counters["ru_maxrss_mib"]))
        text.append("\n")
        if view.has_gpu:
            for field, label in (("gpu_process_mib", "GPU this process"), ("gpu_used_mib", "GPU device used"), ("torch_reserved_mib", "torch reserved")):
                if field in view.peaks:
                    text.append(f"{label} peak ", style="dim")
                    text.append(_mib(view.peaks[field][0]) + "   ")
            if "gpu_process_mib" not in view.peaks:
                text.append("GPU this process: N/A (MIG or not reported)", style="dim")
        else:
            reason = view.host_only_reason or "no GPU"
            text.append(f"No GPU: host-only sampling ({reason}).", style="yellow")
        peaks_w.update(text)


class CpuPanel(Panel):
    panel_title = "CPU"
    depends_on = ("samples",)
    DEFAULT_CSS = """
    CpuPanel #cpu-summary { height: auto; }
    CpuPanel #cores { height: auto; max-height: 50%; }
    CpuPanel Sparkline { height: 3; margin: 0 0 1 0; }
    CpuPanel .label { height: 1; color: $text-muted; }
    """

    def compose(self) -> ComposeResult:
        yield Static(id="cpu-summary")
        yield Static(id="cores")
        yield Static("process CPU % over time", classes="label")
        yield Sparkline([], id="cpu-spark")
        yield Static("threads over time", classes="label")
        yield Sparkline([], id="threads-spark")

    def show(self, view: RunView | None) -> None:
        summary = self.query_one("#cpu-summary", Static)
        cores = self.query_one("#cores", Static)
        if view is None or not view.samples:
            summary.update(Text("No resource sample yet.", style="dim"))
            cores.update("")
            return
        last = view.samples[-1]
        # Rich's progress bar renderable, one row a core: drawn in the same frame as the numbers
        # beside it (a widget per core would update its bar a frame later than its label).
        grid = RichTable.grid(padding=(0, 1), expand=True)
        grid.add_column(width=7)
        grid.add_column(ratio=1)
        grid.add_column(width=5, justify="right")
        for i, pct in enumerate(last.per_core_percent):
            grid.add_row(f"core {i}", RichProgressBar(total=100, completed=pct), f"{pct:.0f}%")
        cores.update(grid)
        threads_max = max(s.threads for s in view.samples)
        summary.update(
            Text.assemble(
                ("process CPU ", "dim"),
                (f"{last.cpu_percent:.0f}%", "bold"),
                (f" of {len(last.per_core_percent) * 100}%   threads ", "dim"),
                (str(last.threads), "bold"),
                (f" (max {threads_max})", "dim"),
            )
        )
        # A sparkline draws one cell per bucket: the last few hundred samples are all it can show.
        recent = list(view.samples)[-4 * max(20, self.size.width) :]
        self.query_one("#cpu-spark", Sparkline).data = [s.cpu_percent for s in recent]
        self.query_one("#threads-spark", Sparkline).data = [float(s.threads) for s in recent]


class SimilarityPanel(Panel):
    """Scores: the similarity matrix of a similarity run, or the task table of an MTEB run."""

    panel_title = "Scores"
    # Phases too: an MTEB task's live peak is re-read as its phases start and end.
    depends_on = ("results", "phases")
    DEFAULT_CSS = """
    SimilarityPanel #sim-head { height: auto; }
    SimilarityPanel DataTable { height: 1fr; }
    SimilarityPanel #sim-rank { height: auto; }
    SimilarityPanel #sweep-plot { height: 1fr; display: none; }
    SimilarityPanel.-sweep #sweep-plot { display: block; }
    """

    def compose(self) -> ComposeResult:
        yield Static(id="sim-head")
        yield DataTable(id="sim-table", zebra_stripes=False, cursor_type="row")
        yield Static(id="sim-rank")
        yield Plot(id="sweep-plot")  # a sweep's latency by its axis, with the fit; hidden otherwise

    def show(self, view: RunView | None) -> None:
        head = self.query_one("#sim-head", Static)
        table = self.query_one("#sim-table", DataTable)
        rank = self.query_one("#sim-rank", Static)
        sim = view.results.get("similarity") if view else None
        table.clear(columns=True)
        self.set_class(view is not None and "sweep" in view.results and "mteb" not in view.results, "-sweep")
        if view is not None and "mteb" in view.results:
            self._show_mteb(view, head, table, rank)
            return
        if view is not None and "sweep" in view.results:
            self._show_sweep(view, head, table, rank)
            return
        if not sim:
            head.update(Text("No scores yet. Press n and choose the similarity or mteb workload.", style="dim"))
            rank.update("")
            return
        head.update(
            Text.assemble(
                ("query prompt ", "dim"), (repr(sim.get("query_prompt", "")), "bold"),
                ("   document prompt ", "dim"), (repr(sim.get("document_prompt", "")), "bold"),
                ("   ", ""), (str(sim.get("similarity_fn", "")), "dim"),
            )
        )
        scores: list[list[float]] = sim["scores"]
        lo = min(min(r) for r in scores)
        hi = max(max(r) for r in scores)
        span = (hi - lo) or 1.0
        table.add_column("#", key="doc")
        for qi in range(len(sim["queries"])):
            table.add_column(f"q{qi + 1}", key=f"q{qi}")
        table.add_column("document", key="text")
        for di, doc in enumerate(sim["documents"]):
            cells: list[Any] = [str(di + 1)]
            for qi in range(len(scores)):
                v = scores[qi][di]
                bg = HEAT.get_color((v - lo) / span)
                fg = "black" if bg.brightness > 0.5 else "white"
                cells.append(Text(f" {v:.4f} ", style=f"{fg} on {bg.hex}"))
            cells.append(doc)
            table.add_row(*cells)
        lines = Text()
        for qi, q in enumerate(sim["queries"]):
            order = sim["rankings"][qi]
            verdict = sim.get("top1_correct", [None] * len(sim["queries"]))[qi]
            lines.append(f"q{qi + 1} ", style="bold")
            lines.append(q[:60])
            lines.append("  ranking ", style="dim")
            lines.append(" > ".join(str(i + 1) for i in order))
            lines.append("  margin ", style="dim")
            lines.append(fmt(sim["margins"][qi], 4), style="bold")
            if verdict is not None:
                lines.append("  right document first" if verdict else "  WRONG document first", style="green" if verdict else "bold red")
            lines.append("\n")
        rank.update(lines)


    def _show_sweep(self, view: RunView, head: Static, table: DataTable[Any], rank: Static) -> None:
        sweep = view.results["sweep"]
        fits = sweep.get("fits") or []
        text = Text()
        for f in fits:
            group = " ".join(f"{k}={v}" for k, v in f["group"].items())
            text.append("latency = ", style="dim")
            text.append(f["formula"], style="bold")
            r2 = f"R² {f['r2']:.3f}" if f["r2"] is not None else "exact through its points"
            text.append(f"   {r2}   {group}\n", style="dim")
            if f.get("padding_percent_range"):
                lo, hi = f["padding_percent_range"]
                text.append(f"  part of the fixed cost is padding: {lo:.0f}–{hi:.0f} % of tokens across the points\n", style="dim italic")
        limit = sweep.get("memory_limit")
        if limit:
            text.append(f"largest {limit['axis']} that fits: ", style="dim")
            text.append(largest_fit_text(limit), style="bold")
            text.append(f"   ({limit.get('stopped')})\n", style="dim")
        head.update(text if text else Text("no fit: too few points", style="dim"))
        cols = ("point", "status", "median s", "±% (95% CI)", "ended by", "repeats", "items/s", "peak RSS MiB")
        for col in cols:
            table.add_column(col, key=col)
        for p in sweep["points"]:
            status = str(p["status"])
            style = "green" if status == "ok" else "bold red"
            table.add_row(
                p["label"], Text(status, style=style), fmt(p.get("median_s"), 4), fmt(p.get("ci_half_width_percent"), 2),
                str(p.get("stop") or ""), str(p.get("repeats", "")), fmt(p.get("items_per_s"), 1), fmt(p.get("peak_rss_mib"), 1),
            )
        rank.update("")
        self._draw_sweep(sweep, fits)

    def _draw_sweep(self, sweep: dict[str, Any], fits: list[dict[str, Any]]) -> None:
        plot = self.query_one("#sweep-plot", Plot)
        plt = plot.plt
        plt.clear_figure()
        points = [p for p in sweep["points"] if p.get("median_s") is not None]
        axis = next((a for a in ("lines", "batch", "tokens", "threads", "max_seq_length", "truncate_dim")
                     if len({p["params"].get(a) for p in points if a in p["params"]}) > 1), None)
        if axis is None:
            plot.changed()
            return
        pts = sorted(points, key=lambda p: p["params"][axis])
        xs = [float(p["params"][axis]) for p in pts]
        plt.title(f"median latency (ms) by {axis}")
        fit = fits[0] if len(fits) == 1 and axis == "lines" and "per_token" not in fit_terms(fits) else None
        if fit is not None:
            c = fit["coef"]
            grid = [min(xs) + (max(xs) - min(xs)) * k / 40 for k in range(41)]
            plt.plot(grid, [(c["fixed"] + c.get("per_line", 0.0) * g) * 1e3 for g in grid], color="orange", label=fit["formula"])
        # The measured medians last, so that the fitted line never hides them.
        plt.scatter(xs, [p["median_s"] * 1e3 for p in pts], marker="●", color="cyan", label="measured")
        plot.changed()

    def _show_mteb(self, view: RunView, head: Static, table: DataTable[Any], rank: Static) -> None:
        info = view.results["mteb"]
        head.update(
            Text.assemble(
                ("MTEB · ", "dim"), (str(info.get("model_name", "")), "bold"),
                ("   results ", "dim"), (f"{info.get('results_dir', '')}/", ""),
                ("   scores computed by mteb", "dim"),
            )
        )
        rows = mteb_rows(view.results, view.phase_peak)
        open_tasks = {p.name: p for p in view.phases if p.end_s is None}
        for col in MTEB_COLUMNS:
            table.add_column(col, key=col)
        for row in rows:
            name, status = str(row[0]), str(row[1])
            if status == "not run" and name in open_tasks:
                p = open_tasks[name]
                status = "running"
                row = [name, status, None, None, view.last_t_s - p.start_s, view.phase_peak(p.phase_id, "rss_mib"), None]
            style = {"ok": "green", "failed": "bold red", "running": "yellow", "cancelled": "yellow"}.get(status, "dim")
            table.add_row(*[Text(c if isinstance(c, str) else fmt(c), style=style if i == 1 else "") for i, c in enumerate(row)])
        failures = Text()
        for name in (view.results.get("mteb") or {}).get("tasks") or []:
            r = view.results.get(f"mteb:{name}") or {}
            if r.get("status") == "failed":
                failures.append(f"{name} failed: ", style="bold red")
                failures.append(f"{r.get('error', '')}\n")
        innermost = next((p for p in reversed(view.phases) if p.end_s is None), None)
        if innermost is not None and view.running:
            failures.append("now: ", style="dim")
            failures.append(innermost.label, style="bold")
        rank.update(failures)


def fit_terms(fits: list[dict[str, Any]]) -> set[str]:
    return {t for f in fits for t in f.get("terms", [])}


class RunsPanel(Panel):
    panel_title = "Runs"
    depends_on = ()
    DEFAULT_CSS = """
    RunsPanel DataTable { height: 1fr; }
    RunsPanel #runs-help { height: 1; color: $text-muted; }
    """

    def compose(self) -> ComposeResult:
        yield Static("Enter opens a run or a saved snapshot; its panels show exactly what was recorded.", id="runs-help")
        yield DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)

    COLUMNS = ("where", "workload", "model", "device", "status", "mean", "peak RSS", "file")

    def on_mount(self) -> None:
        super().on_mount()
        self.fill([])

    def fill(self, rows: list[tuple[str, list[str]]]) -> None:
        table = self.query_one(DataTable)
        # Columns too: a DataTable column only ever widens, and a width left over from a
        # transient state ("running 3/3") would outlive it.
        table.clear(columns=True)
        for col in self.COLUMNS:
            table.add_column(col, key=col)
        for key, cells in rows:
            table.add_row(*cells, key=key)

    def show(self, view: RunView | None) -> None:  # the list does not depend on the run on display
        return
