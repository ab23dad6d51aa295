"""CPU: per-core load now, the process's CPU % and thread count over the recent samples."""

from __future__ import annotations

from rich.progress_bar import ProgressBar as RichProgressBar
from rich.table import Table as RichTable
from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import Sparkline, Static

from ..view import RunView
from .base import Panel, put


class CpuPanel(Panel):
    panel_title = "CPU"
    depends_on = ("samples",)
    # As the other live panels: its picture is two sparklines and a bar a core, a frame's worth of work.
    live_interval_s = 2.0
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
            put(summary, Text("No resource sample yet.", style="dim"), "one line")
            put(cores, "", 0)
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
        # Keyed by the figures: a machine at a steady load shows the same bars from sample to sample.
        put(cores, grid, len(last.per_core_percent), figures=last.per_core_percent)
        threads_max = view.run.peaks.get("threads", (float(last.threads), 0))[0]
        line = Text.assemble(
            ("process CPU ", "dim"),
            (f"{last.cpu_percent:.0f}%", "bold"),
            (f" of {len(last.per_core_percent) * 100}%   threads ", "dim"),
            (str(last.threads), "bold"),
            (f" (max {threads_max:.0f})", "dim"),
        )
        put(summary, line, "one line", figures=line)
        # A sparkline draws one cell per bucket: the last few hundred samples are all it can show.
        n = 4 * max(20, self.size.width)
        recent = list(view.samples)[-n:]
        self.query_one("#cpu-spark", Sparkline).data = [s.cpu_percent for s in recent]
        self.query_one("#threads-spark", Sparkline).data = [float(s.threads) for s in recent]
