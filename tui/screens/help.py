"""The keys, one screen; any key closes it."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.screen import ModalScreen
from textual.widgets import Static

HELP = """\
[b]embprof[/b] — keys

  [b]n[/b]  new run: choose model, device, dtype, workload and its parameters
  [b]r[/b]  run again: exactly the plan of the run on display (a live run or a snapshot)
  [b]s[/b]  stop the run at the next batch boundary (what was measured is kept)
  [b]ctrl+s[/b]  save the run on display as a snapshot (finished runs are saved automatically)
  [b]o[/b]  open a saved snapshot (the Runs panel)
  [b]e[/b]  export the run on display (Markdown, CSV, JSON) next to its snapshot
  [b]m[/b]  in Runs: mark a saved run; [b]c[/b] compare the marked runs side by side
  [b]1–6[/b]  Latency, Memory, CPU, Scores (similarity, sweep or MTEB), Runs, Training (loss, step time,
      memory per step, scores before and after); one at a time in a small terminal
  [b]ctrl+p[/b]  command palette
  [b]?[/b]  this help      [b]q[/b]  quit (stops a running run first)

Press any key to close.
"""


class HelpScreen(ModalScreen[None]):
    def compose(self) -> ComposeResult:
        yield Static(HELP, id="help")

    def on_key(self) -> None:
        self.dismiss(None)
