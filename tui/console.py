"""The headless console: progress lines while a run works, tables when it is done (Rich)."""

from __future__ import annotations

import os
import sys
import threading

from embprof.engine.events import (
    EncodeTimed,
    Event,
    Note,
    PhaseEnded,
    PhaseStarted,
    RunStarted,
    TrainStep,
)
from collections.abc import Iterable
from typing import Any

from embprof.engine.tables import Table, fmt
from embprof.engine.text import clean, one_line, printable
from rich.console import Console
from rich.markup import escape
from rich.segment import Segment
from rich.table import Table as RichTable

from .exits import stdout_error

SLOW_PHASES = ("import", "load")
TRAINING_PHASES = ("training", "saving", "epoch ", "evaluation ")  # a training run's own phases (by name or its start)
PRINTED = (RunStarted, PhaseStarted, PhaseEnded, EncodeTimed, Note, TrainStep)  # what ConsoleProgress prints
STEP_LINE_EVERY_S = 2.0  # a training step's line at most this often (and the first step's at once)

# Width for tables written to a pipe or a file (a CI log, `| tee`): there is no terminal to fit there, and Rich's
# default 80 columns folds a sweep's twelve columns into three-letter fragments.
PIPED_WIDTH = 160


class SafeConsole(Console):
    """A Rich console that never sends a control character it was given as text to the terminal.

    Model names, file names, server messages and snapshot fields are printed as data: an ESC inside
    one would otherwise reach the terminal as a command (clear the screen, move the cursor, retitle
    the window). Rich's own styling and cursor control are segments of their own and pass as they are;
    every text segment is escaped (``\\x1b``). Tables escape their cells before layout too
    (``render_table``), so their widths are right; this is the net under everything else printed.
    """

    def _render_buffer(self, buffer: Iterable[Segment]) -> str:
        return super()._render_buffer(
            seg if seg.control or not seg.text else Segment(printable(seg.text), seg.style, seg.control) for seg in buffer
        )

    def on_broken_pipe(self) -> None:
        """Rich exits with status 1 when the reader of its output has gone; embprof decides instead
        (`embprof show … | head` has done what was asked; `run` still reports how its run went)."""
        self.quiet = True
        raise BrokenPipeError()


class StdoutFile:
    """Standard output as the result consoles write to it: whatever ``sys.stdout`` is at the time (a test's
    capture too), with a write that fails (a full disk behind ``>``) raised as the OutputError that names
    standard output (exit 3) instead of an OSError naming no file. A reader gone away stays BrokenPipeError."""

    def write(self, text: str) -> int:
        try:
            return sys.stdout.write(text)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise stdout_error(exc) from None

    def flush(self) -> None:
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise stdout_error(exc) from None

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding …: the stream's own
        return getattr(sys.stdout, name)


def error_console() -> Console:
    """stderr, for progress lines and messages: never folded (soft wrap), so that a message is one line
    however narrow the terminal or the log it goes to."""
    return SafeConsole(stderr=True, highlight=False, soft_wrap=True)


# Below this a table cannot show one column of figures: a COLUMNS of 0 (seen in some CI runners) would
# make Rich draw nothing at all.
MIN_COLUMNS = 20


def output_console() -> Console:
    """A console for results: the terminal's width on a terminal; PIPED_WIDTH on a pipe unless COLUMNS says otherwise."""
    console = SafeConsole(highlight=False, file=StdoutFile())  # type: ignore[arg-type]  # a text stream by duck typing
    columns = os.environ.get("COLUMNS", "")
    usable = columns.isdigit() and int(columns) >= MIN_COLUMNS
    if not console.is_terminal and not usable:
        console.width = PIPED_WIDTH
    elif columns and not usable:
        console.width = 80
    return console


class ConsoleProgress:
    """An event subscriber that prints one line per finished phase and per timed encode call.

    Lines go to stderr so that stdout holds only the summary and the ``snapshot:`` line.
    """

    def __init__(self, console: Console, quiet: bool = False) -> None:
        self.console = console
        self.quiet = quiet
        self._lock = threading.Lock()
        self._step_printed_ns: int | None = None

    def __call__(self, event: Event) -> None:
        # On the run's own thread, for every event (a load run sends thousands a second): only the few
        # kinds printed are looked at further.
        if self.quiet or not isinstance(event, PRINTED):
            return
        with self._lock:
            try:
                self._print(clean(event))  # escaped before Rich, which would silently drop BEL and CR
            except OSError:  # the terminal is gone (SIGHUP, a closed pipe): the run and its snapshot go on without it
                pass

    def _print(self, e: Event) -> None:
        c = self.console
        if isinstance(e, RunStarted):
            t = e.target
            where = f"device {t.device} · {t.dtype}" if t.device else f"server ({t.api})"
            c.print(
                f"[bold]embprof[/] {escape(one_line(e.workload.name))} · {escape(one_line(t.model_name))} · {escape(one_line(where))} · "
                f"sampling at {e.sample_hz:g} Hz",
                highlight=False,
            )
        elif isinstance(e, PhaseStarted) and (e.name in SLOW_PHASES or e.name.startswith(TRAINING_PHASES)):
            c.print(f"  {one_line(e.name):<8} … {one_line(e.detail)}", style="dim", highlight=False, markup=False)
        elif isinstance(e, PhaseEnded) and (e.name in SLOW_PHASES or e.name.startswith(TRAINING_PHASES)):
            c.print(f"  {one_line(e.name):<8} {e.duration_ns / 1e9:8.3f} s", highlight=False, markup=False)
        elif isinstance(e, TrainStep):
            last = e.steps_planned is not None and e.step >= e.steps_planned
            if self._step_printed_ns is not None and e.t_ns - self._step_printed_ns < STEP_LINE_EVERY_S * 1e9 and not last:
                return
            self._step_printed_ns = e.t_ns
            c.print("  " + step_line(e), highlight=False, markup=False)
        elif isinstance(e, EncodeTimed):
            tag = "warm-up (not counted)" if e.warmup else one_line(e.label)
            tokens = f"{e.tokens:>7} tokens" if e.tokens is not None else "    n/a tokens (not reported)"
            c.print(
                f"  {'encode':<8} {e.duration_ns / 1e9:8.3f} s  {tag:<22} {e.items:>5} texts {tokens}",
                highlight=False, markup=False,
            )
        elif isinstance(e, Note):
            # A note quotes a server, a loader or mteb: one line each, so that none can pass for embprof's own.
            c.print(f"  note: {one_line(e.text)}", style="yellow" if e.level == "warning" else "dim", highlight=False, markup=False)
        # A run's error is said once, by the command, as the last line (`embprof: error: the run failed …`,
        # or the `embprof: interrupted …` notice at the signal): not here as well.


def step_line(e: TrainStep) -> str:
    """One training step in a line: where it is, its loss, its time and what the time went on."""
    of = f"/{e.steps_planned}" if e.steps_planned else ""
    loss = f"loss {e.loss:.4f}" if e.loss is not None else "loss n/a"
    parts = [(name, ns) for name, ns in (("data", e.data_ns), ("fwd", e.forward_ns), ("bwd", e.backward_ns), ("opt", e.optimizer_ns))]
    split = " · ".join(f"{name} {100 * ns / e.duration_ns:.0f}%" for name, ns in parts if ns is not None and e.duration_ns > 0)
    rss = f"  RSS {e.rss_mib:,.0f} MiB" if e.rss_mib is not None else ""
    torch_peak = f"  torch peak {e.torch_peak_allocated_mib:,.0f} MiB" if e.torch_peak_allocated_mib is not None else ""
    return (f"{'step':<8} {e.step}{of}  epoch {e.epoch:.2f}  {loss}  {e.duration_ns / 1e9:.3f} s"
            f"{f' ({split})' if split else ''}  {e.samples} samples{rss}{torch_peak}")


def render_table(console: Console, table: Table) -> None:
    console.print(rich_table(table))
    console.print()


def rich_table(table: Table) -> RichTable:
    # Cells hold text from outside (model names, file names, server answers): data, never markup.
    rt = RichTable(title=escape(printable(table.title)), title_justify="left", show_edge=False, pad_edge=False)
    keyed = table.columns == ["field", "value"]
    for i, col in enumerate(table.columns):
        numeric = any(isinstance(r[i], (int, float)) and not isinstance(r[i], bool) for r in table.rows if i < len(r))
        if keyed and i == 0:
            # A field's name stays on one line (a long value wraps instead), so it can be read, and found.
            width = max((len(fmt(r[0])) for r in table.rows), default=len(col))
            rt.add_column(escape(printable(col)), no_wrap=True, min_width=min(width, 40))
            continue
        rt.add_column(escape(printable(col)), justify="right" if numeric else "left", overflow="fold")
    for row in table.rows:
        rt.add_row(*[escape(printable(fmt(c))) for c in row])
    return rt
