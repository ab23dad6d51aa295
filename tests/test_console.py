"""Tables printed by the headless commands: whole on a pipe, the terminal's width when COLUMNS says so."""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = """
from embprof.engine.tables import Table
from embprof.tui.console import output_console, render_table
cols = ["point", "status", "median s", "95% CI ±%", "ended by", "repeats", "items/s", "tokens/s", "padding %", "GFLOP/s",
        "peak RSS MiB", "peak GPU MiB"]
render_table(output_console(), Table("t", "Sweep points", cols, [["batch=128", "over-ceiling", 2.17, None, "max-repeats", 3,
             58.9, 6005.0, 0.0, 272.8, 1028.8, None]]))
"""


def printed(columns: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    if columns is not None:
        env["COLUMNS"] = columns
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, stdout=subprocess.PIPE, check=True, text=True).stdout
    return [line.rstrip() for line in out.splitlines() if line.strip()]


def test_a_pipe_gets_every_column_on_one_line() -> None:
    lines = printed(None)
    header = next(line for line in lines if line.startswith("point"))
    assert "peak RSS MiB" in header and "peak GPU MiB" in header
    assert any(line.startswith("batch=128") and "over-ceiling" in line and "1,028.8" in line for line in lines)
    assert max(len(line) for line in lines) <= 160


def test_columns_sets_the_width() -> None:
    lines = printed("60")
    assert max(len(line) for line in lines) <= 60
    assert not any("peak RSS MiB" in line for line in lines)  # folded, as a 60-column terminal must
