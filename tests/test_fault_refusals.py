"""Fault suite: a refused command writes nothing.

Every check that can end in exit 2 runs before anything is created: a run refused on its input (before it
starts, or once it has: a server that cannot be reached) leaves no profiles folder; a training run refused on
a labelled file leaves no folder for its model; a refused matrix leaves no folder, lock, manifest or
``cells/`` (and an existing matrix's folder byte for byte as it was); a matrix pointed at a folder of other
files (``-o /``, ``-o .``) is refused before it writes among them. Each test runs the real command line in a
folder of its own and compares the whole tree, hidden files included, before and after; ``-o /`` is tried on
the real root as well, comparing its listing.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from cli_helpers import run_cli_in_process

# The faults this file tries, by kind, and the tests that try each (tests/test_reliability_doc.py counts them for
# docs/reliability.md).
FAULT_KINDS = {
    "a run refused on its input": "test_a_run_refused_on_its_input_leaves_no_profiles_folder",
    "a run refused once started": "test_a_run_refused_once_it_has_started_leaves_no_profiles_folder",
    "a training run refused": "test_a_training_run_refused_on_a_labelled_file_leaves_no_folders",
    "a matrix refused on its input, into a new folder": "test_a_matrix_refused_on_its_input_leaves_no_folder",
    "a matrix refused on its input, into an existing matrix folder":
        "test_a_matrix_refused_on_its_input_leaves_an_existing_matrix_folder_as_it_was",
    "a matrix -o a folder of other files": "test_a_matrix_into_a_folder_of_other_files_is_refused_before_it_writes",
    "a matrix -o .": "test_a_matrix_into_a_folder_of_other_files_is_refused_before_it_writes",
    "a matrix -o /": "test_a_matrix_into_the_root_is_refused_before_it_writes",
}
NOT_FAULTS: tuple[str, ...] = ()

Tree = dict[str, tuple[str, bytes | None]]


def tree(root: Path) -> Tree:
    """Every path under ``root`` (hidden ones too), with what it is and a file's bytes."""
    out: Tree = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p).encode())
        elif p.is_dir():
            out[rel] = ("folder", None)
        else:
            out[rel] = ("file", p.read_bytes())
    return out


def one_error(rc: int, err: str, expect: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, (rc, err[-3000:])
    assert len(lines) == 1 and lines[0].startswith("embprof: error: ") and expect in lines[0], err[-3000:]


@pytest.fixture()
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder of the test's own as the working folder, with the profiles folder left at its default (./profiles)."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.delenv("EMBPROF_PROFILES_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (folder / "lines.txt").write_text("one short line\nanother short line\n")
    return folder


def test_a_run_refused_on_its_input_leaves_no_profiles_folder(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = tree(work)
    rc, out, err = run_cli_in_process(["run", "encode", "--input", "missing.txt"], capsys)
    one_error(rc, err, "input file 'missing.txt' does not exist")
    rc, out, err = run_cli_in_process(["run", "encode", "--input", "missing.txt", "--profiles-dir", "runs/today/profiles"], capsys)
    one_error(rc, err, "does not exist")
    assert tree(work) == before


def test_a_run_refused_once_it_has_started_leaves_no_profiles_folder(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A server that cannot be reached is found once the run has begun (its target connects on the run's thread):
    the refusal comes after the start, and still nothing was written."""
    with socket.socket() as s:  # a port nothing listens on: bound, then let go
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    before = tree(work)
    rc, out, err = run_cli_in_process(["run", "encode", "--server", f"http://127.0.0.1:{port}", "--input", "lines.txt", "-q"], capsys)
    one_error(rc, err, f"127.0.0.1:{port}")
    assert tree(work) == before


def test_a_training_run_refused_on_a_labelled_file_leaves_no_folders(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "pairs.jsonl").write_text('{"anchor": "a", "positive": "b"}\n{"anchor": "c", "positive": "d"}\n')
    before = tree(work)
    rc, out, err = run_cli_in_process(["train", "--train-file", "pairs.jsonl", "-o", "models/new/minilm", "--neighbours", "missing.jsonl"],
                                      capsys)
    one_error(rc, err, "labelled file 'missing.jsonl' does not exist")
    assert tree(work) == before  # neither models/new nor profiles


def test_a_matrix_refused_on_its_input_leaves_no_folder(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = tree(work)
    rc, out, err = run_cli_in_process(["matrix", "--cost-workload", "encode:missing.txt", "-t", "STS16", "-o", "m", "-q"], capsys)
    one_error(rc, err, "input file 'missing.txt' does not exist")
    assert tree(work) == before  # no m/, m/.embprof.lock, m/cells or m/matrix.json


def test_a_matrix_refused_on_its_input_leaves_an_existing_matrix_folder_as_it_was(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from embprof.engine.matrix import expand, validate_spec, write_manifest

    folder = work / "m"
    spec = validate_spec({"cost": "encode", "cost_input": str(work / "lines.txt"), "loops": 2, "tasks": []})
    folder.mkdir()
    write_manifest(folder, spec, expand(spec, folder), {})
    before = tree(work)
    # The same matrix with other loops and an input that is gone: its manifest would be the new one's.
    rc, out, err = run_cli_in_process(["matrix", "--cost-workload", "encode:missing.txt", "--loops", "3", "-t", "STS16", "-o", "m", "-q"],
                                      capsys)
    one_error(rc, err, "input file 'missing.txt' does not exist")
    assert tree(work) == before  # the manifest byte for byte, no lock, no cells/


def test_a_matrix_into_a_folder_of_other_files_is_refused_before_it_writes(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``-o /`` as a folder the test owns: a folder holding files that are not a matrix's."""
    root = work / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    (root / ".profile").write_text("# hidden\n")
    before = tree(work)
    rc, out, err = run_cli_in_process(["matrix", "--cost-workload", "encode:missing.txt", "-t", "STS16", "-o", str(root), "-q"], capsys)
    one_error(rc, err, f"matrix folder '{root}' already holds files that are not a matrix's ('.profile' and 1 more)")
    assert tree(work) == before
    # Nor is the working folder a matrix's: -o . is refused the same way.
    rc, out, err = run_cli_in_process(["matrix", "--cost-workload", "encode:lines.txt", "-t", "STS16", "-o", ".", "-q"], capsys)
    one_error(rc, err, "matrix folder '.' already holds files that are not a matrix's")
    assert tree(work) == before


def test_a_matrix_into_the_root_is_refused_before_it_writes(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The real ``-o /``: as root (a container) the old order made /.embprof.lock, /cells and /matrix.json."""
    before = sorted(os.listdir("/"))
    rc, out, err = run_cli_in_process(["matrix", "--cost-workload", "encode:missing.txt", "-t", "STS16", "-o", "/", "-q"], capsys)
    one_error(rc, err, "matrix folder '/' already holds files that are not a matrix's")
    assert sorted(os.listdir("/")) == before
