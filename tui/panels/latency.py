"""Latency: the encode calls' statistics and throughput, batch times over the run, the calls' spread."""

from __future__ import annotations

from embprof.engine import report
from embprof.engine.fold import CallGroup, RequestGroup
from embprof.engine.tables import fmt
from embprof.engine.results import LoadResult, TokenCounts
from rich.table import Table as RichTable
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Static

from ..view import RunView
from .base import Panel, Plot, pairs, put, secs, thin

FEW_CALLS = 10  # below this many calls a histogram says less than the calls themselves
BAR_CELLS = 12  # the longest call's bar: short enough to leave its value room in a narrow panel


def tokens_na_reason(view: RunView) -> str:
    counts = view.run.results.get("token_counts")  # filed as soon as the server's first count was judged
    return report.tokens_missing(server=view.run.target is not None and view.run.target.backend == "http",
                                 counts=counts if isinstance(counts, TokenCounts) else None).reason


def words_na_reason(view: RunView) -> str:
    return "not counted in MTEB runs" if view.workload_name == "mteb" else "not counted"


def rate(value: float | None, unit: str, why: str, digits: int = 0) -> Text:
    if value is None:
        return Text.assemble((f"{unit} ", "dim"), ("n/a", "bold"), (f" ({why})", "dim"))
    return Text.assemble((f"{value:,.{digits}f}", "bold"), (f" {unit}", "dim"))


class LatencyPanel(Panel):
    panel_title = "Latency"
    depends_on = ("timing",)
    live_interval_s = 2.0
    DEFAULT_CSS = """
    LatencyPanel #latency-stats { height: auto; }
    LatencyPanel Horizontal { height: 1fr; }
    LatencyPanel #latency-plot { width: 3fr; }
    LatencyPanel #latency-hist { width: 2fr; }
    LatencyPanel #latency-calls { width: 2fr; height: auto; }
    LatencyPanel.-few #latency-hist { display: none; }
    LatencyPanel.-many #latency-calls { display: none; }
    LatencyPanel.-groups #latency-hist { display: none; }
    LatencyPanel.-groups #latency-calls { display: none; }
    """

    _hist_key: tuple[str, int] | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="latency-stats")
        with Horizontal():
            yield Plot(id="latency-plot")
            yield Plot(id="latency-hist")
            yield Static(id="latency-calls")

    def show(self, view: RunView | None) -> None:
        stats_w = self.query_one("#latency-stats", Static)
        plot = self.query_one("#latency-plot", Plot)
        groups = list(view.run.call_groups()) if view is not None else []
        requests = view.run.request_groups() if view is not None and not groups else []
        if view is not None and requests:
            # A load run times requests to a server, not encode calls: its own table, per kind.
            self.set_class(True, "-groups")
            put(stats_w, self._request_table(view, requests), ("requests", tuple(r.group for r in requests)))
            self._draw_batches(view, plot)
            return
        if view is None or (not groups and not view.batches):
            stats_w.update(Text("No encode timed yet.", style="dim"))
            plot.plt.clear_figure()
            plot.changed()
            self._show_calls(view, None)
            return
        timed = [g for g in groups if g.calls]
        headline = timed[0] if len(timed) == 1 else None
        self.set_class(len(timed) > 1, "-groups")
        if headline is not None or not timed:
            g = headline or (groups[0] if groups else None)
            shape: tuple[object, ...] = ("headline", g is not None and g.calls > 0, g is not None and bool(g.warmup_s))
            put(stats_w, self._headline(view, g), shape)
        else:
            put(stats_w, self._group_table(view, timed), ("groups", tuple(g.group for g in timed)))
        self._draw_batches(view, plot)
        self._show_calls(view, headline)

    # -- the figures ---------------------------------------------------------------------------------
    def _headline(self, view: RunView, g: CallGroup | None) -> RichTable:
        out = RichTable.grid()
        out.add_column()
        if g is None or not g.calls:
            out.add_row(Text("no timed call yet", style="dim"))
        else:
            st = g.stats
            out.add_row(pairs(
                ("calls", Text(str(g.calls), style="bold")), ("mean", secs(st.mean_s)),
                ("CV", "n/a (one call)" if st.cv_percent is None else f"{st.cv_percent:.1f}%"),
                ("p50", secs(st.p50_s)), ("p95", secs(st.p95_s)), ("p99", secs(st.p99_s)),
                columns=3,
            ))
        if g is not None and g.warmup_s:
            out.add_row(Text.assemble(("warm-up ", "dim"), (", ".join(secs(w) for w in g.warmup_s), "yellow"),
                                      (" (not counted)", "dim")))
        if g is not None and g.calls:
            out.add_row(self._throughput(view, g))
        return out

    def _throughput(self, view: RunView, g: CallGroup) -> Text:
        parts = [
            rate(g.items_per_s, "items/s", "no timed call", 1),
            rate(g.tokens_per_s, "tokens/s", tokens_na_reason(view)),
            rate(g.words_per_s, "words/s", words_na_reason(view)),
        ]
        if g.padding_percent is not None:
            parts.append(Text.assemble((f"{g.padding_percent:.0f} %", "bold"), (" padding", "dim")))
        return Text("   ").join(parts)

    def _group_table(self, view: RunView, groups: list[CallGroup]) -> RichTable:
        """Calls of different kinds side by side: one p50 over all of them would describe none."""
        table = RichTable(box=None, pad_edge=False, show_edge=False, header_style="dim", expand=True,
                          title="calls of different kinds, each on its own (not pooled)", title_justify="left",
                          title_style="dim italic")
        table.add_column("group", ratio=1)
        for col in ("calls", "p50", "p95", "mean"):
            table.add_column(col, justify="right", no_wrap=True)
        for g in groups:
            st = g.stats
            table.add_row(Text(g.group or "(calls)"), str(g.calls), secs(st.p50_s), secs(st.p95_s), secs(st.mean_s))
        words = [g.words_per_s for g in groups]
        tokens = [g.tokens_per_s for g in groups]
        notes = []
        if all(w is None for w in words):
            notes.append(f"words/s n/a ({words_na_reason(view)})")
        if all(t is None for t in tokens):
            notes.append(f"tokens/s n/a ({tokens_na_reason(view)})")
        if notes:
            table.caption = "   ".join(notes)
            table.caption_justify = "left"
            table.caption_style = "dim"
        return table

    def _request_table(self, view: RunView, groups: list[RequestGroup]) -> RichTable:
        table = RichTable(box=None, pad_edge=False, show_edge=False, header_style="dim", expand=True,
                          title="requests to the server, per kind (warm-ups apart)", title_justify="left", title_style="dim italic")
        table.add_column("group", ratio=1)
        for col in ("requests", "failed", "p50", "p95", "mean"):
            table.add_column(col, justify="right", no_wrap=True)
        for r in groups:
            st = r.stats
            table.add_row(Text(r.group or "(requests)"), f"{r.requests:,}", f"{r.failed:,}", secs(st.p50_s), secs(st.p95_s), secs(st.mean_s))
        load = view.run.results.get("load")
        if isinstance(load, LoadResult):
            table.caption = str(Text("   ").join([
                Text(f"{fmt(load.requests_per_s, 1)} requests/s"),
                Text(f"{fmt(load.items_per_s, 1)} items/s"),
                Text(f"{fmt(load.tokens_per_s, 0)} tokens/s" if load.tokens_per_s is not None
                     else f"tokens/s n/a ({tokens_na_reason(view)})"),
            ]))
            table.caption_justify = "left"
            table.caption_style = "dim"
        return table

    # -- the charts ----------------------------------------------------------------------------------
    def _draw_batches(self, view: RunView, plot: Plot) -> None:
        p = plot.plt
        p.clear_figure()
        p.title("batch latency (ms) over run time (s)")
        limit = 2 * max(20, plot.size.width)
        timed = [b for b in view.batches if not b.warmup]
        warm = [b for b in view.batches if b.warmup]
        if timed:
            xs, ys = thin([b.t_s for b in timed], [b.seconds * 1000 for b in timed], limit)
            p.scatter(xs, ys, marker="dot", color="cyan", label="timed")
        if warm:
            xs, ys = thin([b.t_s for b in warm], [b.seconds * 1000 for b in warm], limit)
            p.scatter(xs, ys, marker="x", color="yellow", label="warm-up")
        plot.changed()

    def _show_calls(self, view: RunView | None, g: CallGroup | None) -> None:
        """The headline's calls: each on its own line below FEW_CALLS, a histogram from there on."""
        hist = self.query_one("#latency-hist", Plot)
        calls_w = self.query_one("#latency-calls", Static)
        values = [c.seconds for c in view.calls if not c.warmup and c.group == g.group] if view is not None and g is not None else []
        few = len(values) < FEW_CALLS
        self.set_class(few, "-few")
        self.set_class(not few, "-many")
        if few:
            put(calls_w, self._call_bars(values), len(values))
            return
        # The histogram changes only when a whole call ends, not with every batch: rebuilding a
        # plotext chart is the dashboard's most expensive draw.
        key = (view.key if view else "", len(values))
        if key == self._hist_key:
            return
        self._hist_key = key
        h = hist.plt
        h.clear_figure()
        h.title("encode call latency (ms)")
        h.hist([x * 1000 for x in values], bins=min(20, max(3, len(values) // 3)), color="cyan")
        hist.changed()

    @staticmethod
    def _call_bars(values: list[float]) -> RichTable:
        grid = RichTable.grid(padding=(0, 1))
        grid.add_column(style="dim", no_wrap=True)
        grid.add_column(no_wrap=True)
        grid.add_column(justify="right", no_wrap=True)
        if not values:
            grid.add_row("", Text("no timed call yet", style="dim"), "")
            return grid
        grid.title = "encode calls"
        grid.title_style = "dim"
        top = max(values) or 1.0
        for i, v in enumerate(values, 1):
            grid.add_row(f"#{i}", Text("█" * max(1, round(BAR_CELLS * v / top)), style="cyan"), secs(v))
        return grid
