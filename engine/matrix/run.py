"""Running a matrix: the cells that have no snapshot yet, each launched in a process of its own.

``run_matrix`` expands the spec, writes the manifest, and launches what is missing: here, one cell
at a time (``ProcessLauncher``: allocator state and imports do not leak from one cell into the next,
and no cell measures beside another), interleaved across models so that a machine's drift does not
favour one; or, with ``--ray``, on a cluster through the Ray driver process (``ray.RayRun``, whose
``RayLauncher`` launches each cell as a Ray task). Either way each cell's row is then read from what
it left in the folder (``row.row_of``), as ``export`` will read it later.

A cell finished in an earlier run is reused only while what it read is unchanged: its model's files, its
tasks' data, its cost text and its plan, by content (``row.Fingerprints``), against the record of inputs
it left as it ended. Otherwise it runs again, and the run and the reports say why.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..crash import process_end
from ..errors import UserError
from ..files import folder_lock
from ..plan import LocalTarget
from ..targets.fingerprint import FileHashes
from ..text import one_line
from .folder import Manifest, MatrixEvent, MatrixInterrupted, MatrixListener, check_folder, check_inputs_of, read_manifest, write_manifest
from .launch import CELL_MODULE, CellOutcome, Launcher, ProcessLauncher, Progress, ProgressKind
from .paths import crash_path, manifest_path, snapshot_path
from .row import (
    CellInputs,
    Fingerprints,
    InputsRecord,
    MatrixRow,
    finished,
    hashes_path,
    inputs_path,
    read_inputs,
    row_of,
    why_not_reused,
    write_inputs,
)
from .spec import Cell, MatrixSpec, expand, graph_key
from .warm import WarmParent

if TYPE_CHECKING:  # only for the annotations: the Ray side is imported when a matrix runs with --ray
    from .ray import RayRun


def run_matrix(spec: MatrixSpec, folder: Path, listener: MatrixListener, *, retry_failed: bool = False,
               cancel: Callable[[], bool] = lambda: False, ray_address: str | None = None, ray_cpus: int = 1,
               cold: bool = False) -> Manifest:
    """Run every cell that has no finished snapshot; returns the manifest. Raises MatrixInterrupted on Ctrl-C.

    ``cold``: start each cell in a fresh interpreter, rather than forked from a warm parent that imported once
    (``warm.py``; the figures are the same, the start is not).

    One matrix run at a time per folder: two would run the same cells side by side, each measuring the
    other's load, and race on the manifest."""
    # Every check that can refuse the matrix comes before its lock, cells or manifest: a refused matrix
    # leaves nothing behind, whichever front end started it.
    check_placements(spec, ray_address)
    check_folder(folder)
    check_inputs_of(spec, folder)
    with folder_lock(folder, "matrix folder"):
        return _run_matrix(spec, folder, listener, retry_failed=retry_failed, cancel=cancel, ray_address=ray_address,
                           ray_cpus=ray_cpus, cold=cold)


def _run_matrix(spec: MatrixSpec, folder: Path, listener: MatrixListener, *, retry_failed: bool,
                cancel: Callable[[], bool], ray_address: str | None = None, ray_cpus: int = 1, cold: bool = False) -> Manifest:
    (folder / "cells").mkdir(exist_ok=True)
    if ray_address is None:
        return _run_cells(spec, folder, listener, retry_failed=retry_failed, cancel=cancel, ray_run=None, have_cuda=None, cold=cold)
    from .ray import RayRun

    ray_run = RayRun(ray_address, folder, ray_cpus, cold=cold)
    try:
        cluster = ray_run.survey(cancel)  # before expanding: the cluster's GPUs decide which CUDA cells can run, not this machine's
        return _run_cells(spec, folder, listener, retry_failed=retry_failed, cancel=cancel, ray_run=ray_run, have_cuda=cluster.has_gpu,
                          cold=cold)
    finally:
        ray_run.close()


def _run_cells(spec: MatrixSpec, folder: Path, listener: MatrixListener, *, retry_failed: bool, cancel: Callable[[], bool],
               ray_run: RayRun | None, have_cuda: bool | None, cold: bool = False) -> Manifest:
    exp = expand(spec, folder) if ray_run is None else expand(spec, folder, have_cuda=have_cuda, where="any node of the Ray cluster")
    # The cells as they will run (on a cluster its GPUs, not this machine's, decided which exist).
    listener(MatrixEvent("listed", cells=tuple((c.cell_id, c.label, c.reference) for c in exp.cells)))
    previous = read_manifest(folder).exports if manifest_path(folder).is_file() else {}
    exports: dict[str, Any] = dict(previous)
    write_manifest(folder, spec, exp, exports)
    for d in exp.dropped:
        listener(MatrixEvent("note", label=d.label, text=f"dropped: {d.reason}"))
    for n in exp.notes:
        listener(MatrixEvent("note", text=n))
    # Each cell's snapshot is read once here: it says both whether the cell runs and, if not, its row. A finished
    # cell is reused only while what it read (model files, task data, cost text, plan) is what it read then.
    table: dict[str, MatrixRow] = {c.cell_id: row_of(folder, c, exports, i) for i, c in enumerate(exp.cells)}
    hashes = FileHashes(hashes_path(folder))
    fingerprints = Fingerprints(folder, hashes)
    inputs = {c.cell_id: fingerprints.of(c) for c in exp.cells}
    again: dict[str, str] = {}  # cell id -> why a finished cell is measured again
    todo: list[Cell] = []
    for c in exp.cells:
        if finished(table[c.cell_id], retry_failed):
            why = _why_again(folder, c, inputs[c.cell_id])
            if why is None:
                continue
            again[c.cell_id] = why
        todo.append(c)
    hashes.save()
    if todo:
        check_inputs(todo[0])
    total = len(exp.cells)
    index = {c.cell_id: i for i, c in enumerate(exp.cells)}
    for i, c in enumerate(exp.cells):
        if c not in todo:
            listener(MatrixEvent("skip", c.cell_id, c.label, i + 1, total, "finished in an earlier run", table[c.cell_id]))
        elif c.cell_id in again:
            listener(MatrixEvent("note", c.cell_id, c.label, i + 1, total, f"runs again: {again[c.cell_id]}"))
    manifest = Manifest(spec, exp.cells, exp.dropped, exp.notes, exports)

    def ended(outcome: CellOutcome) -> None:
        c = exp.cells[index[outcome.cell_id]]
        # What the cell read, taken again now it has ended: a Hub model it fetched is in the cache now, and
        # an input that changed while it ran leaves figures that belong to neither state (the record says so).
        after = Fingerprints(folder, hashes).of(c)
        write_inputs(folder, c.cell_id, InputsRecord(after, after.changed_from(inputs[c.cell_id]), again.get(c.cell_id)))
        hashes.save()
        table[c.cell_id] = row_of(folder, c, exports, index[c.cell_id])
        listener(MatrixEvent("end", c.cell_id, c.label, index[c.cell_id] + 1, total, row=table[c.cell_id]))

    def begin(c: Cell) -> None:
        """What an earlier run left of the cell goes (a launch that ends without a snapshot must not leave the
        earlier one standing as this run's); its record of inputs is written before it starts, so a stop
        between its end and ``ended`` does not leave a finished cell without one."""
        for path in (snapshot_path(folder, c), crash_path(folder, c.cell_id), inputs_path(folder, c.cell_id)):
            path.unlink(missing_ok=True)
        write_inputs(folder, c.cell_id, InputsRecord(inputs[c.cell_id], (), again.get(c.cell_id)))

    if todo and ray_run is not None:
        # On a cluster each cell runs where Ray places it: an exported graph a worker lacks is built in the
        # cell's own process, in an "export" phase of its own (still apart from its load time).
        for c in todo:
            begin(c)
        ray_run.run(todo, exp.cells, listener, cancel, ended)
    elif todo:
        warm = None if cold else WarmParent(os.environ)  # started as the first cell launches, after the exports
        try:
            _run_here(ProcessLauncher(folder, warm), todo, exp.cells, exports, listener, cancel, ended,
                      lambda: write_manifest(folder, spec, exp, exports), begin, {cid: i.model.digest for cid, i in inputs.items()})
        finally:
            if warm is not None:
                warm.close()
    manifest.rows = list(table.values())
    return manifest


def _why_again(folder: Path, cell: Cell, now: CellInputs) -> str | None:
    """Why a finished cell is not reused (None: it is): its record of inputs against what it would read now."""
    try:
        record = read_inputs(folder, cell.cell_id)
    except UserError as exc:
        return str(exc)
    return why_not_reused(record, now)


def _run_here(launcher: Launcher, todo: list[Cell], cells: list[Cell], exports: dict[str, Any], listener: MatrixListener,
              cancel: Callable[[], bool], ended: Callable[[CellOutcome], None], save_exports: Callable[[], None],
              begin: Callable[[Cell], None], model_files: dict[str, str | None]) -> None:
    """The cells on this machine: the models' files read once, the graphs exported, then each cell in turn.

    ``model_files``: each cell's model's digest (None: it cannot be taken). A graph exported in an earlier run is
    exported again (found in the graph cache if it is there) once its model's files are not what they were."""
    total = len(cells)
    try:
        prewarm(todo)
        exported: set[str] = set()
        for c in todo:  # the graphs first, each once, in its own process: export time is not load time
            if cancel():
                raise MatrixInterrupted()
            key = graph_key(c.target) if isinstance(c.target, LocalTarget) else None
            digest = model_files.get(c.cell_id)
            found = exports.get(key) if key is not None else None
            if key is None or key in exported or (isinstance(found, dict) and digest is not None and found.get("model_files") == digest):
                continue
            exported.add(key)
            listener(MatrixEvent("export", c.cell_id, c.label, text=f"exporting {key}"))
            exports[key] = {**_export(c), "model_files": digest}
            if "error" in exports[key]:
                listener(MatrixEvent("note", c.cell_id, c.label, text=f"export failed: {exports[key]['error']}"))
            save_exports()
        for c in todo:
            if cancel():
                raise MatrixInterrupted()
            begin(c)
            ended(launcher.launch(c, _progress(listener, c, cells.index(c) + 1, total), cancel))
        if cancel():  # the stop came during the last cell, which it cut short: the matrix did not finish
            raise MatrixInterrupted()
    except KeyboardInterrupt:
        raise MatrixInterrupted() from None


def _progress(listener: MatrixListener, cell: Cell, index: int, total: int) -> Progress:
    def report(kind: ProgressKind, text: str) -> None:
        listener(MatrixEvent(kind, cell.cell_id, cell.label, index, total, text))

    return report


def check_placements(spec: MatrixSpec, ray_address: str | None) -> None:
    """A pinned cell has nowhere to run on one machine: refused before anything starts, not run unpinned."""
    if ray_address is None and spec.placements:
        raise UserError(f"the matrix pins cells to placements ({', '.join(one_line(p.name) for p in spec.placements)}), which only a "
                        "Ray cluster can honour: run it with --ray")


def check_inputs(cell: Cell) -> None:
    """What every cell reads (the cost text, the tasks' data) is checked once, here, before any cell
    starts: bad input is one sentence, not a column of failed cells."""
    from ..execute import make_workload

    make_workload(cell.cell.model_copy(update={"reference": None, "write_reference": None})).prepare()


def _export(cell: Cell) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", CELL_MODULE, "--export", cell.target.model_dump_json()], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": process_end(proc.returncode, proc.stderr or "").reason}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def prewarm(cells: list[Cell]) -> None:
    """Read each local model's files once before the cells run, so every cell of a model loads from
    the same warm page cache (the first cell would otherwise pay the disk alone)."""
    from ..targets import SentenceTransformerTarget, model_folder

    done: set[str] = set()
    for cell in cells:
        t = cell.target
        if not isinstance(t, LocalTarget) or cell.model_key in done:
            continue
        done.add(cell.model_key)
        try:
            st = SentenceTransformerTarget(t)
            st.resolve()
            folder = model_folder(st.location)
        except UserError:
            folder = None
        if folder is not None:
            for f in sorted(folder.rglob("*")):
                if f.is_file():
                    with open(f, "rb") as fh:
                        while fh.read(1 << 23):
                            pass
