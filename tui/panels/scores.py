"""Scores: a similarity run's matrix and ranking, a sweep's points and fit, an MTEB run's task table, a load's knee."""

from __future__ import annotations

from typing import Any

from embprof.engine import report
from embprof.engine.tables import fmt
from embprof.engine.results import (
    KneeResult,
    LatencyFit,
    MtebRun,
    MtebTask,
    SimilarityResult,
    SweepResult,
)
from rich.table import Table as RichTable
from rich.text import Text
from textual.app import ComposeResult
from textual.color import Color, Gradient
from textual.widgets import DataTable, Static

from ..view import RunView
from .base import Panel, Plot, fill_table, pairs

HEAT = Gradient.from_colors(Color.parse("#1f3b73"), Color.parse("#5f6f7a"), Color.parse("#f2a541"), Color.parse("#e8523c"))
SCORED = ("similarity", "sweep", "mteb", "knee")
SWEEP_AXES = ("lines", "batch", "tokens", "threads", "max_seq_length", "truncate_dim")


def has_scores(view: RunView | None) -> bool:
    return view is not None and any(k in view.run.results for k in SCORED)


class ScoresPanel(Panel):
    panel_title = "Scores"
    # Phases too: an MTEB task's live peak is re-read as its phases start and end.
    depends_on = ("results", "phases")
    DEFAULT_CSS = """
    ScoresPanel #scores-head { height: auto; }
    ScoresPanel DataTable { height: 1fr; }
    ScoresPanel #scores-foot { height: auto; }
    ScoresPanel #sweep-plot { height: 1fr; display: none; }
    ScoresPanel.-sweep #sweep-plot { display: block; }
    """

    def compose(self) -> ComposeResult:
        yield Static(id="scores-head")
        yield DataTable(id="scores-table", zebra_stripes=False, cursor_type="row")
        yield Static(id="scores-foot")
        yield Plot(id="sweep-plot")  # a sweep's latency by its axis, with the fit; hidden otherwise

    def show(self, view: RunView | None) -> None:
        head = self.query_one("#scores-head", Static)
        table = self.query_one("#scores-table", DataTable)
        foot = self.query_one("#scores-foot", Static)
        table.clear(columns=True)
        results = view.run.results if view is not None else {}
        mteb, sweep, sim = results.get("mteb"), results.get("sweep"), results.get("similarity")
        knee = results.get("knee")
        self.set_class((isinstance(sweep, SweepResult) or isinstance(knee, KneeResult)) and mteb is None, "-sweep")
        if isinstance(knee, KneeResult):
            self._show_knee(knee, head, table, foot)
        elif view is not None and isinstance(mteb, MtebRun):
            self._show_mteb(view, mteb, head, table, foot)
        elif isinstance(sweep, SweepResult):
            self._show_sweep(sweep, head, table, foot)
        elif isinstance(sim, SimilarityResult):
            self._show_similarity(sim, head, table, foot)
        elif view is not None and view.training:
            head.update(Text("A training run's scores, before and after, are in the Training panel (key 6).", style="dim"))
            foot.update("")
        else:
            head.update(Text("No scores yet. Press n and choose the similarity, sweep or mteb workload.", style="dim"))
            foot.update("")

    # -- similarity ----------------------------------------------------------------------------------
    def _show_similarity(self, sim: SimilarityResult, head: Static, table: DataTable[Any], foot: Static) -> None:
        head.update(pairs(
            ("query prompt", Text(repr(sim.query_prompt), style="bold")),
            ("document prompt", Text(repr(sim.document_prompt), style="bold")),
            ("similarity", sim.similarity_fn or "n/a"),
        ))
        scores = sim.scores
        lo = min(min(r) for r in scores)
        hi = max(max(r) for r in scores)
        span = (hi - lo) or 1.0
        rows: list[list[Text | str]] = []
        for di, doc in enumerate(sim.documents):
            cells: list[Text | str] = [str(di + 1)]
            for qi in range(len(scores)):
                v = scores[qi][di]
                bg = HEAT.get_color((v - lo) / span)
                fg = "black" if bg.brightness > 0.5 else "white"
                cells.append(Text(f" {v:.4f} ", style=f"{fg} on {bg.hex}"))
            cells.append(Text(doc))  # a document is data: a str cell would be read as markup
            rows.append(cells)
        fill_table(table, ["#", *(f"q{qi + 1}" for qi in range(len(sim.queries))), "document"], rows)
        # One cell per label and per value: wrapped or captured, "margin 0.0900" never runs into
        # the verdict ("3margin 0.0900right document first" was seen with plain text).
        grid = RichTable.grid(padding=(0, 1))
        for style, wrap in (("bold", False), ("", True), ("dim", False), ("", False), ("dim", False), ("bold", False), ("", False)):
            grid.add_column(style=style, no_wrap=not wrap, overflow="fold" if wrap else "ellipsis")
        for qi, q in enumerate(sim.queries):
            verdict = sim.top1_correct[qi] if qi < len(sim.top1_correct) else None
            shown = Text("")
            if verdict is not None:
                shown = Text("right document first" if verdict else "WRONG document first", style="green" if verdict else "bold red")
            grid.add_row(f"q{qi + 1}", Text(q), "ranking", " > ".join(str(i + 1) for i in sim.rankings[qi]), "margin",
                         fmt(sim.margins[qi], 4), shown)
        foot.update(grid)

    # -- sweep ---------------------------------------------------------------------------------------
    def _show_sweep(self, sweep: SweepResult, head: Static, table: DataTable[Any], foot: Static) -> None:
        text = Text()
        for f in sweep.fits:
            group = " ".join(f"{k}={v}" for k, v in f.group.items())
            text.append("latency = ", style="dim")
            text.append(f.formula, style="bold")
            r2 = f"R² {f.r2:.3f}" if f.r2 is not None else "exact through its points"
            text.append(f"   {r2}   {group}\n", style="dim")
            if f.padding_percent_range:
                lo, hi = f.padding_percent_range
                text.append(f"  part of the fixed cost is padding: {lo:.0f}–{hi:.0f} % of tokens across the points\n", style="dim italic")
        limit = sweep.memory_limit
        if limit is not None:
            text.append(f"largest {limit.axis} that fits: ", style="dim")
            text.append(report.largest_fit_text(limit), style="bold")
            text.append(f"   ({limit.stopped})\n", style="dim")
        text.rstrip()
        head.update(text if text else Text("no fit: too few points", style="dim"))
        estimate = any(p.gflops_estimate is not None for p in sweep.points)
        cols = ["point", "status", "median s", "±% (95% CI)", "ended by", "repeats", "items/s", "peak RSS MiB"]
        if estimate:
            cols.append(report.GFLOPS_LABEL)
        rows: list[list[Text | str]] = []
        for p in sweep.points:
            style = "green" if p.status == "ok" else "bold red"
            row: list[Text | str] = [Text(p.label), Text(p.status, style=style), fmt(p.median_s, 4), fmt(p.ci_half_width_percent, 2),
                                     Text(p.stop or ""), str(p.repeats), fmt(p.items_per_s, 1), fmt(p.peak_rss_mib, 1)]
            if estimate:
                row.append(fmt(p.gflops_estimate, 1))
            rows.append(row)
        fill_table(table, cols, rows)
        foot.update(Text("partial: the sweep is still running", style="dim italic") if sweep.partial else "")
        self._draw_sweep(sweep)

    def _draw_sweep(self, sweep: SweepResult) -> None:
        plot = self.query_one("#sweep-plot", Plot)
        plt = plot.plt
        plt.clear_figure()
        points = [p for p in sweep.points if p.median_s is not None]
        axis = next((a for a in SWEEP_AXES if len({p.params.get(a) for p in points if a in p.params}) > 1), None)
        if axis is None:
            plot.changed()
            return
        pts = sorted(points, key=lambda p: float(p.params[axis]))
        xs = [float(p.params[axis]) for p in pts]
        plt.title(f"median latency (ms) by {axis}")
        fit = _line_fit(sweep.fits) if axis == "lines" else None
        if fit is not None:
            c = fit.coef
            grid = [min(xs) + (max(xs) - min(xs)) * k / 40 for k in range(41)]
            plt.plot(grid, [(c["fixed"] + c.get("per_line", 0.0) * g) * 1e3 for g in grid], color="orange", label=fit.formula)
        # The measured medians last, so that the fitted line never hides them.
        plt.scatter(xs, [(p.median_s or 0.0) * 1e3 for p in pts], marker="●", color="cyan", label="measured")
        plot.changed()

    # -- the knee ------------------------------------------------------------------------------------
    def _show_knee(self, knee: KneeResult, head: Static, table: DataTable[Any], foot: Static) -> None:
        sustainable = Text("n/a", style="dim") if knee.sustainable_per_s is None else Text(f"{knee.sustainable_per_s:,.4g}/s", style="bold")
        head.update(pairs(
            ("sustainable rate", sustainable),
            ("objective", f"p99 ≤ {knee.objective_p99_s * 1e3:g} ms, failed ≤ {knee.objective_errors_percent:g} %"),
            ("latency from", "when each request was due"),
        ))
        rows: list[list[Text | str]] = []
        for i, st in enumerate(knee.steps, 1):
            verdict = Text("holds", style="green") if st.passed else Text(f"breaks: {st.why}", style="bold red")
            rows.append([str(i), fmt(st.offered_per_s, 1), fmt(st.achieved_per_s, 1), fmt(None if st.p50_s is None else st.p50_s * 1e3, 1),
                         fmt(None if st.p99_s is None else st.p99_s * 1e3, 1), str(st.errors), verdict])
        fill_table(table, ["step", "offered/s", "answered/s", "p50 ms", "p99 ms", "failed", "objective"], rows)
        foot.update(Text(f"first rate: {knee.start_from}; each step {knee.step_s:g} s", style="dim"))
        self._draw_knee(knee)

    def _draw_knee(self, knee: KneeResult) -> None:
        """The curve: answered against offered (the diagonal is keeping up), and p99 on the right-hand axis."""
        plot = self.query_one("#sweep-plot", Plot)
        plt = plot.plt
        plt.clear_figure()
        pts = sorted((st for st in knee.steps if st.achieved_per_s is not None), key=lambda st: st.offered_per_s)
        if not pts:
            plot.changed()
            return
        xs = [st.offered_per_s for st in pts]
        plt.title("answered/s (left) and p99 ms (right) against offered/s")
        plt.plot(xs, xs, color="gray", label="offered")
        plt.plot(xs, [st.achieved_per_s or 0.0 for st in pts], marker="●", color="cyan", label="answered/s")
        lat = [(st.offered_per_s, st.p99_s * 1e3) for st in pts if st.p99_s is not None]
        if lat:
            plt.plot([x for x, _ in lat], [y for _, y in lat], marker="●", color="orange", label="p99 ms", yside="right")
        plot.changed()

    # -- MTEB ----------------------------------------------------------------------------------------
    def _show_mteb(self, view: RunView, info: MtebRun, head: Static, table: DataTable[Any], foot: Static) -> None:
        head.update(pairs(
            ("MTEB", Text(info.model_name, style="bold")),
            ("results", f"{info.results_dir}/"),
            ("scores", "computed by mteb"),
        ))
        run = view.run
        rows = report.mteb_rows(run.results, run.phase_peak)
        open_tasks = {p.name: p for p in run.open_phases}
        shown: list[list[Text | str]] = []
        for row in rows:
            name, status = str(row[0]), str(row[1])
            if status == "not run" and name in open_tasks:
                p = open_tasks[name]
                status = "running"
                row = [name, status, None, None, run.last_t_s - p.start_s, p.peak("rss_mib"), None]
            style = {"ok": "green", "failed": "bold red", "running": "yellow", "cancelled": "yellow"}.get(status, "dim")
            cells = [Text(c if isinstance(c, str) else ("" if c is None and status != "ok" else fmt(c)), style=style if i == 1 else "")
                     for i, c in enumerate(row)]
            shown.append(list(cells))
        fill_table(table, list(report.MTEB_COLUMNS), shown)
        failures = Text()
        for name in info.tasks:
            r = run.results.get(f"mteb:{name}")
            if isinstance(r, MtebTask) and r.status == "failed":
                failures.append(f"{name} failed: ", style="bold red")
                failures.append(f"{r.error or ''}\n")
        innermost = run.open_phases[-1] if run.open_phases else None
        if innermost is not None and view.running:
            failures.append("now: ", style="dim")
            failures.append(innermost.path or innermost.label, style="bold")
        failures.rstrip()
        foot.update(failures)


def _line_fit(fits: tuple[LatencyFit, ...]) -> LatencyFit | None:
    """The one fit a latency-by-lines chart can draw: fixed + per line, no per-token term."""
    if len(fits) != 1 or "per_token" in fits[0].terms:
        return None
    return fits[0]
