"""Memory: RSS, system RAM and GPU memory over the run, the peaks and the phase each fell in."""

from __future__ import annotations

from typing import Any

from embprof.engine.results import KernelCounters
from rich.table import Table as RichTable
from rich.text import Text
from textual.app import ComposeResult
from textual.widget import Widget
from textual.widgets import Static

from ..view import RunView
from .base import Panel, Plot, mib, put, thin

PHASE_COLOURS = ("#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#e15759", "#9c755f")


class PhaseBands(Widget):
    """The run's phases as coloured bands along the memory chart's time axis, with a legend."""

    DEFAULT_CSS = "PhaseBands { height: 2; }"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.view: RunView | None = None
        self._picture: tuple[int, Text] | None = None  # the last picture drawn, and the width it was drawn for

    def draw(self, view: RunView | None) -> None:
        self.view = view
        # Most redraws of a run leave the bands as they were (one phase running the whole width):
        # an equal picture is not rendered again.
        width = self.size.width
        if self._picture is not None and self._picture == (width, self.picture(width)):
            return
        self._picture = None
        self.refresh()

    def render(self) -> Text:
        width = self.size.width
        if self._picture is None or self._picture[0] != width:
            self._picture = (width, self.picture(width))
        return self._picture[1]

    def picture(self, width: int) -> Text:
        """The bands and their legend at ``width`` cells."""
        view = self.view
        width = max(10, width)
        if view is None or not view.run.phases:
            return Text("")
        phases = view.run.phases
        end = max(view.run.last_t_s, max((p.end_s or 0) for p in phases), 1e-9)
        colour_of: dict[str, str] = {}
        for p in phases:
            colour_of.setdefault(p.name, PHASE_COLOURS[len(colour_of) % len(PHASE_COLOURS)])
        cells: list[str | None] = [None] * width
        for p in phases:
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
    live_interval_s = 2.0
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
        bands.draw(view)
        if view is None or not view.samples:
            peaks_w.update(Text("No resource sample yet.", style="dim"))
            plot.changed()
            return
        self._plot(view, plot)
        peaks = view.run.peaks
        put(peaks_w, self._peaks(view), (view.has_gpu, *(k in peaks for k in ("rss_mib", "server_rss_mib", "gpu_process_mib")),
                                         "kernel_counters" in view.run.results))

    def _plot(self, view: RunView, plot: Plot) -> None:
        p = plot.plt
        samples = list(view.samples)
        xs = [s.t_ns / 1e9 for s in samples]
        limit = 2 * max(20, plot.size.width)  # braille: two points a cell
        p.title("MiB over run time (s)")
        p.plot(*thin(xs, [s.rss_mib for s in samples], limit), label="process RSS", color="cyan", marker="braille")
        p.plot(*thin(xs, [s.sys_ram_used_mib for s in samples], limit), label="system RAM used", color="gray", marker="braille")
        series = [("server_rss_mib", "server RSS", "green")]  # an embedding server's own process, beside the client
        if view.has_gpu:
            series += [("gpu_used_mib", "GPU device used", "magenta"), ("gpu_process_mib", "GPU this process", "red"),
                       ("torch_reserved_mib", "torch reserved", "orange"), ("torch_allocated_mib", "torch allocated", "yellow")]
        for name, label, colour in series:
            pts = [(x, getattr(s, name)) for x, s in zip(xs, samples) if getattr(s, name) is not None]
            if pts:
                p.plot(*thin([a for a, _ in pts], [b for _, b in pts], limit), label=label, color=colour, marker="braille")
        if "rss_mib" in view.run.peaks:
            value, at_ns = view.run.peaks["rss_mib"]
            p.scatter([at_ns / 1e9], [value], marker="●", color="red")
        plot.changed()

    def _peaks(self, view: RunView) -> RichTable:
        peaks = view.run.peaks
        out = RichTable.grid()
        out.add_column()
        first = Text()
        if "rss_mib" in peaks:
            value, at_ns = peaks["rss_mib"]
            at = at_ns / 1e9
            first.append("peak RSS ", style="dim")
            first.append(mib(value), style="bold")
            first.append(f" at {at:.1f} s during {view.run.phase_at(at) or '—'}", style="dim")
        if "server_rss_mib" in peaks:
            first.append("   server peak RSS ", style="dim")
            first.append(mib(peaks["server_rss_mib"][0]), style="bold")
        counters = view.run.results.get("kernel_counters")
        if isinstance(counters, KernelCounters) and counters.ru_maxrss_mib is not None:
            first.append("   ru_maxrss ", style="dim")
            first.append(mib(counters.ru_maxrss_mib))
        out.add_row(first)
        second = Text()
        if view.has_gpu:
            for name, label in (("gpu_process_mib", "GPU this process"), ("gpu_used_mib", "GPU device used"), ("torch_reserved_mib", "torch reserved")):
                if name in peaks:
                    second.append(f"{label} peak ", style="dim")
                    second.append(mib(peaks[name][0]) + "   ")
            if "gpu_process_mib" not in peaks:
                second.append("GPU this process: n/a (MIG or not reported)", style="dim")
        else:
            reason = view.run.host_only_reason or "no GPU"
            second.append(f"No GPU: host-only sampling ({reason}).", style="yellow")
        out.add_row(second)
        return out
