"""The status bar: target, workload, state and elapsed time of the run on display."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.text import Text
from textual.widgets import Static

from ..view import RunView


class StatusBar(Static):
    DEFAULT_CSS = """
    StatusBar { height: 1; background: $primary-background; color: $text; padding: 0 1; }
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, **kw: Any) -> None:
        super().__init__(**kw)
        self._clock = clock
        self.view: RunView | None = None
        self.started_at: float | None = None
        self._shown: tuple[Any, ...] | None = None

    def show(self, view: RunView | None, started_at: float | None = None) -> None:
        self.view = view
        self.started_at = started_at
        self._shown = None
        self.tick()

    def tick(self) -> None:
        """Cheap when nothing moved: the text is built from a key and updated only when it differs."""
        v = self.view
        if v is None:
            key: tuple[Any, ...] = (None,)
        else:
            key = (v.key, v.state_text, round(self._elapsed(v), 1), v.model_name, v.source)
        if key == self._shown:
            return
        self._shown = key
        self.update(self._text(), layout=False)  # one line, always: no layout pass for a new second

    def _elapsed(self, v: RunView) -> float:
        if v.running and self.started_at is not None:
            return self._clock() - self.started_at
        return v.elapsed_s

    def _text(self) -> Text:
        v = self.view
        if v is None:
            return Text.from_markup("[b]embprof[/b]  no run yet · press [b]n[/b] for a new run, [b]r[/b] to run the default")
        t = v.run.target
        facts = (t.model_name or "?", t.backend, t.device_resolved or t.device, t.dtype) if t is not None else ("?",)
        target = " · ".join(str(x) for x in facts if x)
        colour = {"done": "green", "failed": "red", "stopped": "yellow"}.get(v.state, "cyan")
        src = " (snapshot)" if v.source == "snapshot" else ""
        # State and time first: on a narrow terminal the long model name is what gets cut.
        return Text.assemble(
            ("embprof ", "bold"),
            (v.state_text, f"bold {colour}"),
            (f" {self._elapsed(v):,.1f} s{src}", ""),
            ("  │  ", "dim"),
            (v.workload_name, "bold"),
            ("  │  ", "dim"),
            (target, ""),
        )
