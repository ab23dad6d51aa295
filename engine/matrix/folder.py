"""A matrix's folder: its manifest (``matrix.json``: the spec, the cells in run order, what was dropped,
the exported graphs), its rows read back, and what a run reports as it goes.

The folder is the matrix's whole state: a run, the Ray driver, ``export`` and ``compare`` all read
it from here and nothing else, so an interrupted matrix goes on from where its files say it stopped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from ..errors import UserError
from ..files import atomic_write_bytes, ensure_writable_dir, read_json_file
from ..plan import RunPlan
from ..text import one_line
from .paths import manifest_path
from .row import MatrixRow, row_of
from .spec import MATRIX_VERSION, Cell, Dropped, Expansion, MatrixSpec


# -- before anything is written ------------------------------------------------------------------------------
# What a matrix keeps in its folder, and what a run stopped before its first manifest may have left there.
_OWN_NAMES = frozenset({"matrix.json", "cells", "references", "results", "inputs", ".embprof.lock", "ray-driver.log"})


def check_folder(folder: Path) -> None:
    """The matrix's folder, before anything is written in it: a new folder, an empty one, or a matrix's own
    (one that holds its matrix.json). A folder of other files is refused: the matrix would write its lock,
    cells and manifest among them (``-o /``, ``-o .``, ``-o ~``). Creates nothing; one sentence, exit 2."""
    shown = one_line(folder)
    if str(folder) == "":
        raise UserError("the matrix folder path is empty")
    if folder.exists() and not folder.is_dir():
        raise UserError(f"matrix folder '{shown}' is a file, not a folder")
    if folder.is_dir() and not manifest_path(folder).is_file():
        try:
            # A hidden ".matrix.json.XXXX.tmp" is a manifest's write cut short by SIGKILL: the matrix's too.
            other = sorted(p.name for p in folder.iterdir() if p.name not in _OWN_NAMES and not p.name.startswith(".matrix.json."))
        except OSError as exc:
            raise UserError(f"matrix folder '{shown}' cannot be read ({(exc.strerror or exc.__class__.__name__).lower()})") from None
        if other:
            more = f" and {len(other) - 1} more" if len(other) > 1 else ""
            raise UserError(f"matrix folder '{shown}' already holds files that are not a matrix's ('{one_line(other[0])}'{more}): "
                            "give -o a new or empty folder, or a matrix's own")
    ensure_writable_dir(folder, "matrix folder")


def check_inputs_of(spec: MatrixSpec, folder: Path) -> None:
    """What every cell reads (the cost text or lines, the tasks' data), checked before the folder is touched:
    a refused matrix leaves no manifest, lock or cells behind. Each cell's workload is the base plan's with
    only its own files changed, so checking the base plan's is checking every cell's."""
    from ..execute import make_workload

    make_workload(spec.base.workload.model_copy(update={"results_dir": str(folder / "results")})).prepare()


def write_manifest(folder: Path, spec: MatrixSpec, exp: Expansion, exports: dict[str, Any]) -> None:
    data = {
        "matrix_version": MATRIX_VERSION,
        "spec": json.loads(spec.model_dump_json()),
        "cells": [{"cell_id": c.cell_id, "label": c.label, "model_key": c.model_key, "reference": c.reference, "added": c.added,
                   "plan": json.loads(c.plan.model_dump_json())} for c in exp.cells],
        "dropped": [{"label": d.label, "reason": d.reason} for d in exp.dropped],
        "notes": exp.notes,
        "exports": exports,
    }
    atomic_write_bytes(manifest_path(folder), (json.dumps(data, indent=1) + "\n").encode("utf-8"))


@dataclass
class Manifest:
    spec: MatrixSpec
    cells: list[Cell]
    dropped: list[Dropped]
    notes: list[str]
    exports: dict[str, Any]
    rows: list[MatrixRow] = field(default_factory=list)  # as a run left them (run_matrix); empty when read from the file


def read_manifest(folder: Path) -> Manifest:
    path = manifest_path(folder)
    if not path.is_file():
        raise UserError(f"'{one_line(folder)}' is not a matrix folder (no matrix.json in it)")
    data = read_json_file(path, "matrix manifest")
    try:
        spec = MatrixSpec.model_validate(data["spec"])
        cells = [Cell(c["cell_id"], c["label"], c["model_key"], RunPlan.model_validate(c["plan"]), c.get("reference", False), c.get("added"))
                 for c in data["cells"]]
    except (ValueError, KeyError, TypeError, ValidationError) as exc:
        raise UserError(f"'{one_line(path)}' is not a matrix manifest this embprof reads ({exc.__class__.__name__})") from None
    return Manifest(spec, cells, [Dropped(**d) for d in data.get("dropped", [])], list(data.get("notes", [])), dict(data.get("exports", {})))


def rows(folder: Path) -> tuple[Manifest, list[MatrixRow]]:
    """A matrix folder's manifest and every cell's row, as its files say now."""
    m = read_manifest(folder)
    return m, [row_of(folder, c, m.exports, i) for i, c in enumerate(m.cells)]


# -- what a run reports ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MatrixEvent:
    """What the matrix runner reports as it goes: a cell starts, shows a phase, ends; an export."""

    kind: Literal["listed", "queued", "start", "phase", "end", "skip", "export", "note"]
    cell_id: str = ""
    label: str = ""
    index: int = 0
    total: int = 0
    text: str = ""
    row: MatrixRow | None = None
    cells: tuple[tuple[str, str, bool], ...] = ()  # "listed": every cell (id, label, reference) in run order


MatrixListener = Callable[[MatrixEvent], None]


class MatrixInterrupted(Exception):
    """Ctrl-C: the cell that was running saved what it had; the finished cells are kept."""


class ClusterLost(Exception):
    """``--ray`` only: the cluster stopped answering mid-matrix. The cells that finished are saved; ``str()``
    says so in one sentence. Here, not with the Ray code: the command line and the dashboard catch it
    without importing that."""
