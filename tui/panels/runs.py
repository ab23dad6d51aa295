"""Runs: this session's runs and the snapshots in the profiles folder; Enter opens one."""

from __future__ import annotations

from pathlib import Path

from embprof.engine.tables import fmt
from embprof.engine.text import printable
from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import DataTable, Static

from ..view import RunView
from .base import Panel, fill_table

# The model first: it is what a reader looks for, and what a narrow cell must not cut.
COLUMNS = ("model", "workload", "device", "status", "mean", "peak RSS", "where", "file")


def live_row(view: RunView, marked: bool) -> list[str]:
    head = view.run.headline()
    rss = view.run.peaks.get("rss_mib")
    return [
        view.model_name,
        view.workload_name,
        str((t.device_resolved or t.device or "") if (t := view.run.target) is not None else ""),
        view.state_text,
        fmt(head.stats.mean_s, 4) if head is not None and head.stats.mean_s is not None else "",
        f"{rss[0]:,.0f} MiB" if rss else "",
        ("✓ " if marked else "") + "this session",
        Path(view.snapshot_path).name if view.snapshot_path else "",
    ]


def snapshot_row(path: Path) -> list[str]:
    """A saved snapshot's cells (read on a worker thread); a file that cannot be read says so in its row."""
    from embprof.engine.listing import snapshot_row as row_of

    row = row_of(path)
    return [
        row.model,
        row.workload,
        row.device,
        row.status,
        f"{row.mean_s:.4f}" if row.mean_s is not None else "",
        f"{row.peak_rss_mib:,.0f} MiB" if row.peak_rss_mib else "",
        "saved",
        row.file,
    ]


# A snapshot's row by path, with the file's size and modification time it was read at: the list is
# refreshed after every run, and only new or changed files are read again (a long session's folder
# holds hundreds). Filled on the worker that lists; one worker lists at a time (exclusive).
_ROWS: dict[str, tuple[tuple[int, int], list[str]]] = {}


def list_snapshots(folder: Path) -> list[tuple[str, list[str]]]:
    """Every snapshot in the folder, newest first: (path, cells). Reads what changed: a worker's job."""
    files = sorted(folder.glob("*.json"), reverse=True) if folder.is_dir() else []
    out: list[tuple[str, list[str]]] = []
    for f in files:
        try:
            st = f.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except OSError:
            out.append((str(f), snapshot_row(f)))  # gone or unreadable: said as such by its row
            continue
        known = _ROWS.get(str(f))
        if known is None or known[0] != stamp:
            known = (stamp, snapshot_row(f))
            _ROWS[str(f)] = known
        out.append((str(f), known[1]))
    return out


class RunsPanel(Panel):
    panel_title = "Runs"
    depends_on = ()
    DEFAULT_CSS = """
    RunsPanel DataTable { height: 1fr; }
    RunsPanel #runs-help { height: 1; color: $text-muted; }
    """

    def compose(self) -> ComposeResult:
        yield Static("Enter opens a run or a saved snapshot; m marks it for c (compare).", id="runs-help")
        yield DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        super().on_mount()
        self.fill([])

    def fill(self, rows: list[tuple[str, list[str]]]) -> None:
        # Text, not str: a str cell is read as markup, and a model or file name is data ('[' and ESC included).
        fill_table(self.query_one(DataTable), COLUMNS, [[Text(printable(c)) for c in cells] for _, cells in rows],
                   keys=[key for key, _ in rows])

    def show(self, view: RunView | None) -> None:  # the list does not depend on the run on display
        return
