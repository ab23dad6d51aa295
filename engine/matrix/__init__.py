"""A matrix of runs: models × backends × weights × output precision × dimensions × devices, and
servers, each cell measured for cost and quality in its own process, with the frontier over them.

The package, from the bottom up (each module imports only those listed before it):

* ``spec``: what a matrix measures (``MatrixSpec``) and the cells it expands into, with their ids;
* ``paths``: where a matrix's files lie in its folder;
* ``launch``: the ``Launcher`` protocol, a cell's ``CellOutcome`` and ``Provenance``, the local
  ``ProcessLauncher``, and the one writer and reader of a crash record;
* ``row``: a cell's ``MatrixRow``, read from its snapshot or crash record alone;
* ``folder``: the manifest, the rows of a whole folder (``rows``), and what a run reports (``MatrixEvent``);
* ``ray``: the same cells on a Ray cluster (``RayLauncher``, and ``RayRun``, embprof's side of the driver);
* ``driver``: the Ray driver's process (``python -m embprof.engine.matrix.driver``);
* ``run``: the loop that runs a matrix (``run_matrix``), here or through the Ray driver;
* ``cellproc``: the process a cell runs in (``python -m embprof.engine.matrix.cellproc``).

Here, the names the command line, the dashboard and the tests use. ``ray``, ``driver`` and
``cellproc`` are not imported here: the first two are needed only with ``--ray``, and the two
processes run as programs of their own.
"""

from __future__ import annotations

from .folder import (
    ClusterLost,
    Manifest,
    MatrixEvent,
    MatrixInterrupted,
    MatrixListener,
    read_manifest,
    rows,
    write_manifest,
)
from .launch import CellOutcome, CrashRecord, Launcher, ProcessLauncher, Provenance, RayWorker
from .paths import crash_path, snapshot_path
from .row import COST_AXES, CellStatus, Frontier, MatrixRow, beside_other_work, finished, row_of
from .run import check_inputs, check_placements, prewarm, run_matrix
from .spec import (
    MATRIX_VERSION,
    Cell,
    Dropped,
    Expansion,
    MatrixSpec,
    ServerCell,
    expand,
    graph_key,
    int8_mode,
    label_of,
    load_spec,
    model_key,
    short_model,
    validate_spec,
)

__all__ = [
    "COST_AXES",
    "MATRIX_VERSION",
    "Cell",
    "CellOutcome",
    "CellStatus",
    "ClusterLost",
    "CrashRecord",
    "Dropped",
    "Expansion",
    "Frontier",
    "Launcher",
    "Manifest",
    "MatrixEvent",
    "MatrixInterrupted",
    "MatrixListener",
    "MatrixRow",
    "MatrixSpec",
    "ProcessLauncher",
    "Provenance",
    "RayWorker",
    "ServerCell",
    "beside_other_work",
    "check_inputs",
    "check_placements",
    "crash_path",
    "expand",
    "finished",
    "graph_key",
    "int8_mode",
    "label_of",
    "load_spec",
    "model_key",
    "prewarm",
    "read_manifest",
    "row_of",
    "rows",
    "run_matrix",
    "short_model",
    "snapshot_path",
    "validate_spec",
    "write_manifest",
]
