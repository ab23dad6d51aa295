"""The marked snapshots side by side: the same tables `embprof compare` prints.

The snapshots are loaded and compared on a worker before this screen opens; writing the Markdown
and the charts (w) runs on a worker too, and ends in a FileWritten message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from ..messages import FileWritten


class CompareScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "close", "Close"), Binding("w", "write", "Write Markdown + chart")]

    def __init__(self, tables: list[Any], snaps: list[Any], names: list[str], out_dir: Path) -> None:
        super().__init__()
        self.tables = tables
        self.snaps = snaps
        self.names = names
        self.out_dir = out_dir

    def compose(self) -> ComposeResult:
        from ..console import rich_table

        with VerticalScroll(id="compare"):
            yield Label("Compare (A is the first marked) — w writes Markdown and a chart, Esc closes", id="compare-title")
            for t in self.tables:
                yield Static(rich_table(t), classes="compare-table")

    def action_close(self) -> None:
        self.dismiss(None)

    def action_write(self) -> None:
        self._write()

    @work(thread=True, exclusive=True, exit_on_error=False, group="files")
    def _write(self) -> None:
        from datetime import datetime

        from embprof.engine.charts import compare_chart
        from embprof.engine.files import atomic_write_bytes
        from embprof.engine.tables import tables_markdown

        stem = "compare-" + datetime.now().strftime("%Y%m%dT%H%M%S")
        try:
            images = [p.name for p in compare_chart(self.snaps, self.names, self.out_dir, stem)]
            path = self.out_dir / f"{stem}.md"
            atomic_write_bytes(path, tables_markdown("# embprof comparison", self.tables, images).encode("utf-8"))
        except OSError as exc:
            self.post_message(FileWritten(None, f"not written: {exc}"))
            return
        self.post_message(FileWritten(str(path), None))

    @on(FileWritten)
    def _written(self, message: FileWritten) -> None:
        message.stop()
        if message.path:
            self.app.notify(f"written: {message.path}")
        else:
            self.app.notify(message.error or "not written", severity="error")
