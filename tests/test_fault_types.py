"""Fault suite: a mistyped value is refused, never coerced; a key given twice is refused, the same way everywhere.

Plans (``run --plan FILE``, a snapshot's plan), matrix files (TOML, YAML, JSON) and the matrix's own options take
values of the declared type only: the text "yes" does not switch ``trust_remote_code`` on, "3" and true are no
repeat count, 3.0 is no count, false is no dimension. Pydantic's strict mode refuses them; the sentence names
the field and says what was given, in the file's own spelling ("yes" is text, true a boolean). A whole number
is still a number field's value: JSON and TOML write 10.0 as 10 when they please.

A key given twice (JSON and YAML keep the last silently; TOML refuses with a message that names a line; a
matrix file may name an axis in the singular and the plural; ``--cell backend=torch,backend=onnx``) is one
sentence everywhere: ``… gives the key 'K' twice (where): give each key once``. Two identical chosen cells
(``[[cell]]`` or ``--cell``) are a value given twice, as on an axis.

Everything runs in this process through the command line's ``main`` (``--print-plan``, ``--print-spec``,
``show``): nothing loads a model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import run_cli_in_process
from fake_engine import recorded_run

from embprof.engine.snapshot import build, to_json

# The faults this file tries, by kind, and the tests that try each (tests/test_reliability_doc.py counts them for
# docs/reliability.md): ``{}`` is one kind for each text it stands for in the tests' names.
FAULT_KINDS = {
    "plan file: {}": "test_a_plan_files_value_of_another_type_is_refused[{}]",
    "a snapshot's plan with \"yes\" for a switch": "test_a_snapshots_plan_of_another_type_is_refused",
    "matrix file: {}": "test_a_matrix_files_value_of_another_type_is_refused[{}]",
    "matrix file: false for a dimension, where 0 is full": "test_a_whole_number_is_a_number_fields_value_and_full_stays_full",
    "a key given twice: {}": "test_a_key_given_twice_is_refused_the_same_way_everywhere[{}]",
    "a key given twice beside a YAML merge": "test_a_yaml_merge_overridden_is_no_key_given_twice",
    "a key given twice in a snapshot": "test_a_snapshot_with_a_key_given_twice_is_refused",
    "a key given twice in a JSON Lines row": "test_a_json_lines_row_with_a_key_given_twice_is_refused",
    "{}": "test_a_cell_option_given_twice_is_refused[{}]",
    "two identical cells in a matrix file": "test_two_identical_cells_in_a_file_are_refused",
    "a cell's dimension that is no whole number (\"²\")": "test_a_cells_dimension_that_is_no_whole_number_is_refused",
}
NOT_FAULTS: tuple[str, ...] = ()

SERVER = "http://127.0.0.1:9"


def one_error(rc: int, err: str, *expect: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, (rc, err)
    assert len(lines) == 1 and lines[0].startswith("embprof: error: "), err
    assert "Traceback" not in err
    for part in expect:
        assert part in lines[0], (part, lines[0])
    return lines[0]


def _plan(workload: dict[str, Any] | None = None, target: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    return {"target": target or {"kind": "local"}, "workload": workload or {"name": "encode"}, **top}


def _server(**fields: Any) -> dict[str, Any]:
    return {"kind": "server", "url": SERVER, **fields}


# -- plan files -------------------------------------------------------------------------------------------------------
# (what is tried, the plan with the wrong type, the field as the sentence names it, the value as it is said, the plan
# with a value of the right type, which is taken)
PLAN_TYPES: list[tuple[str, dict[str, Any], str, str, dict[str, Any]]] = [
    ('"yes" is no switch', _plan(target={"kind": "local", "trust_remote_code": "yes"}), "target.local.trust_remote_code", '"yes"',
     _plan(target={"kind": "local", "trust_remote_code": True})),
    ("1 is no switch", _plan(target={"kind": "local", "trust_remote_code": 1}), "target.local.trust_remote_code", "not 1",
     _plan(target={"kind": "local", "trust_remote_code": False})),
    ('"3" is no count', _plan({"name": "encode", "repeats": "3"}), "workload.encode.repeats", '"3"', _plan({"name": "encode", "repeats": 3})),
    ("true is no count", _plan({"name": "encode", "repeats": True}), "workload.encode.repeats", "not true",
     _plan({"name": "encode", "repeats": 1})),
    ("3.0 is no count", _plan({"name": "encode", "batch_size": 3.0}), "workload.encode.batch_size", "not 3.0",
     _plan({"name": "encode", "batch_size": 3})),
    ("true is no dimension", _plan(target={"kind": "local", "truncate_dim": True}), "target.local.truncate_dim", "not true",
     _plan(target={"kind": "local", "truncate_dim": 1})),
    ('"10" is no rate', _plan(recording={"sample_hz": "10"}), "recording.sample_hz", '"10"', _plan(recording={"sample_hz": 10})),
    ("true is no rate", _plan(recording={"sample_hz": True}), "recording.sample_hz", "not true", _plan(recording={"sample_hz": 1.0})),
    ('"true" is no switch of the load', _plan({"name": "load", "find_knee": "true"}, _server()), "workload.load.find_knee", '"true"',
     _plan({"name": "load", "find_knee": True}, _server())),
    ("true on a sweep's axis", _plan({"name": "sweep", "axes": {"lines": [True, 2]}}), "workload.sweep.axes.lines.0", "not true",
     _plan({"name": "sweep", "axes": {"lines": [1, 2]}})),
    ('"0.5" as a mix share', _plan({"name": "load", "mix": [["tokens=8", "0.5"], ["tokens=16", 0.5]]}, _server()),
     "workload.load.mix.0.1", '"0.5"', _plan({"name": "load", "mix": [["tokens=8", 1], ["tokens=16", 0.5]]}, _server())),
    ("true as the plan version", _plan(plan_version=True), "plan version", "true", _plan(plan_version=1)),
]


@pytest.mark.parametrize("plan, field, said, right", [c[1:] for c in PLAN_TYPES], ids=[c[0] for c in PLAN_TYPES])
def test_a_plan_files_value_of_another_type_is_refused(plan: dict[str, Any], field: str, said: str, right: dict[str, Any],
                                                       tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "plan.json"
    f.write_text(json.dumps(plan))
    rc, out, err = run_cli_in_process(["run", "--plan", str(f), "--print-plan"], capsys)
    one_error(rc, err, field, said)
    assert out == ""
    # The same field with a value of its type is taken, and printed with the type it has.
    f.write_text(json.dumps(right))
    rc, out, err = run_cli_in_process(["run", "--plan", str(f), "--print-plan"], capsys)
    assert rc == 0 and err == "", err
    json.loads(out)


def test_a_snapshots_plan_of_another_type_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`rerun` would run what the snapshot's plan says: a text "yes" must not turn the model's own code on."""
    _, rec = recorded_run()
    data = json.loads(to_json(build(rec, {"hostname": "h"})))
    assert data["plan"]["target"]["trust_remote_code"] is False
    data["plan"]["target"]["trust_remote_code"] = "yes"
    f = tmp_path / "snap.json"
    f.write_text(json.dumps(data))
    for argv in (["rerun", str(f), "--print-plan"], ["show", str(f)]):
        rc, out, err = run_cli_in_process(argv, capsys)
        one_error(rc, err, "is damaged", "trust_remote_code", "Input should be a valid boolean")
        assert out == ""


# -- matrix files -----------------------------------------------------------------------------------------------------
SPEC_TYPES: list[tuple[str, str, str, tuple[str, ...]]] = [
    ('TOML "3" as loops', "m.toml", 'loops = "3"\n', ("matrix field 'loops'", '"3"')),
    ("YAML 3.0 as loops", "m.yaml", "loops: 3.0\n", ("matrix field 'loops'", "not 3.0")),
    ("TOML false as a dimension", "m.toml", "truncate_dim = [false, 128]\n", ("matrix field 'truncate_dims.0'", "not false")),
    ('YAML "yes" as a switch', "m.yaml", 'trust_remote_code: "yes"\n', ("matrix field 'trust_remote_code'", '"yes"')),
    ('JSON "5" as a rate', "m.json", '{"sample_hz": "5"}', ("matrix field 'sample_hz'", '"5"')),
    ("TOML true as a cell's backend", "m.toml", "[[cell]]\nbackend = true\n", ("matrix field 'cells.0.backend'", "not true")),
    ("YAML a number as a cell's model", "m.yaml", "cell:\n  - {model: 3}\n", ("matrix field 'cells.0.model'", "not 3")),
    ("TOML true as the matrix version", "m.toml", "matrix_version = true\n", ("matrix field 'matrix_version'", "not true")),
]


@pytest.mark.parametrize("name, content, expect", [c[1:] for c in SPEC_TYPES], ids=[c[0] for c in SPEC_TYPES])
def test_a_matrix_files_value_of_another_type_is_refused(name: str, content: str, expect: tuple[str, ...], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    f = tmp_path / name
    f.write_text(content)
    rc, out, err = run_cli_in_process(["matrix", "--spec", str(f), "--print-spec"], capsys)
    one_error(rc, err, f"matrix file '{f}'", *expect)
    assert out == ""


def test_a_whole_number_is_a_number_fields_value_and_full_stays_full(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Strict is by type, not by equality: false == 0 in Python, and 0 means full; false does not."""
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "m.toml"
    f.write_text('sample_hz = 5\nenergy_min_window_s = 2\ntruncate_dim = ["full", 128]\n')
    rc, out, err = run_cli_in_process(["matrix", "--spec", str(f), "--print-spec"], capsys)
    assert rc == 0, err
    printed = json.loads(out)
    assert printed["base"]["recording"]["sample_hz"] == 5.0 and printed["truncate_dims"] == [None, 128]
    f.write_text("truncate_dim = [false]\n")
    rc, out, err = run_cli_in_process(["matrix", "--spec", str(f), "--print-spec"], capsys)
    one_error(rc, err, "truncate_dims.0", "not false")


# -- a key given twice ------------------------------------------------------------------------------------------------
REPEATS: list[tuple[str, str, str, str, str]] = [
    # (what is tried, file name, its text, the key, where it is said to be)
    ("JSON plan", "plan.json", '{"workload": {"name": "encode", "repeats": 3, "repeats": 300}}', "repeats", ""),
    ("JSON matrix", "m.json", '{"loops": 3, "loops": 30}', "loops", ""),
    ("YAML matrix", "m.yaml", "loops: 3\ntasks: []\nloops: 30\n", "loops", "(line 3)"),
    ("YAML matrix, in a cell", "m.yaml", "cell:\n  - {backend: onnx, backend: torch}\n", "backend", "(line 2)"),
    ("TOML matrix", "m.toml", "loops = 3\nloops = 30\n", "loops", "(line 2)"),
    ("TOML matrix, in a cell", "m.toml", '[[cell]]\nbackend = "onnx"\nbackend = "torch"\n', "backend", "(line 3)"),
    ("TOML matrix, singular and plural", "m.toml", 'model = ["a"]\nmodels = ["b"]\n', "models", "(as 'model' and 'models')"),
    ("YAML matrix, two spellings", "m.yaml", "cost-input: a.txt\ncost_input: b.txt\n", "cost_input",
     "(as 'cost-input' and 'cost_input')"),
]


@pytest.mark.parametrize("name, content, key, where", [c[1:] for c in REPEATS], ids=[c[0] for c in REPEATS])
def test_a_key_given_twice_is_refused_the_same_way_everywhere(name: str, content: str, key: str, where: str, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    f = tmp_path / name
    f.write_text(content)
    argv = ["run", "--plan", str(f), "--print-plan"] if name.startswith("plan") else ["matrix", "--spec", str(f), "--print-spec"]
    rc, out, err = run_cli_in_process(argv, capsys)
    what = "plan file" if name.startswith("plan") else "matrix file"
    one_error(rc, err, f"{what} '{f}' gives the key '{key}' twice{' ' + where if where else ''}: give each key once")
    assert out == ""


def test_a_yaml_merge_overridden_is_no_key_given_twice(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """YAML's ``<<`` merge, its keys overridden by the mapping's own, is how YAML shares settings: taken, while the
    same key twice among a mapping's own keys is refused."""
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "m.yaml"
    f.write_text("cell:\n  - &s {backend: onnx, quantize: int8}\n  - {<<: *s, quantize: none}\n")
    rc, out, err = run_cli_in_process(["matrix", "--spec", str(f), "--print-spec"], capsys)
    assert rc == 0, err
    assert json.loads(out)["cells"] == [{"backend": "onnx", "quantize": "int8"}, {"backend": "onnx", "quantize": "none"}]
    f.write_text("cell:\n  - &s {backend: onnx, quantize: int8}\n  - {<<: *s, quantize: none, quantize: int8}\n")
    rc, out, err = run_cli_in_process(["matrix", "--spec", str(f), "--print-spec"], capsys)
    one_error(rc, err, "gives the key 'quantize' twice (line 3)")


def test_a_snapshot_with_a_key_given_twice_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, rec = recorded_run()
    text = to_json(build(rec, {"hostname": "h"}))
    assert '"status": "complete"' in text
    f = tmp_path / "snap.json"
    f.write_text(text.replace('"status": "complete"', '"status": "complete", "status": "failed"', 1))
    rc, out, err = run_cli_in_process(["show", str(f)], capsys)
    one_error(rc, err, f"snapshot '{f}' gives the key 'status' twice: give each key once")
    assert out == ""


def test_a_json_lines_row_with_a_key_given_twice_is_refused(tmp_path: Path) -> None:
    from embprof.engine.errors import UserError
    from embprof.engine.files import json_lines

    f = tmp_path / "pairs.jsonl"
    f.write_text('{"anchor": "a", "positive": "b"}\n{"anchor": "c", "positive": "d", "anchor": "e"}\n')
    with pytest.raises(UserError) as info:
        list(json_lines(str(f), "training file", "a pair"))
    assert str(info.value) == f"training file '{f}' gives the key 'anchor' twice (line 2): give each key once"


@pytest.mark.parametrize("cells, expect", [
    (["backend=torch,backend=onnx"], "--cell 'backend=torch,backend=onnx' gives the key 'backend' twice: give each key once"),
    (["quantize-mode=per-tensor,quantize_mode=per-channel"], "gives the key 'quantize_mode' twice"),
    (["backend=onnx,quantize=int8", "backend=onnx,quantize=int8"], "matrix field 'cells': a value is given twice (cells 1 and 2 are the same)"),
], ids=["--cell with one key twice", "--cell with one key in two spellings", "--cell given twice alike"])
def test_a_cell_option_given_twice_is_refused(cells: list[str], expect: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["matrix", "--print-spec"] + [a for c in cells for a in ("--cell", c)]
    rc, out, err = run_cli_in_process(argv, capsys)
    one_error(rc, err, expect)
    assert out == ""


def test_two_identical_cells_in_a_file_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, the second was dropped without a word (the same cell id): a cell listed twice is a slip, said as one."""
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "m.toml"
    f.write_text('[[cell]]\nbackend = "onnx"\nquantize = "int8"\n[[cell]]\nquantize = "int8"\nbackend = "onnx"\n')
    rc, out, err = run_cli_in_process(["matrix", "--spec", str(f), "--print-spec"], capsys)
    one_error(rc, err, f"matrix file '{f}': matrix field 'cells': a value is given twice (cells 1 and 2 are the same)")


def test_a_cells_dimension_that_is_no_whole_number_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """"²" passes str.isdigit(), and int() cannot read it: the text is a value of another type, said as such."""
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_cli_in_process(["matrix", "--print-spec", "--cell", "truncate_dim=²"], capsys)
    one_error(rc, err, "matrix field 'cells.0.truncate_dim'", 'not "²"')
    rc, out, err = run_cli_in_process(["matrix", "--print-spec", "--cell", "truncate_dim=64"], capsys)
    assert rc == 0 and json.loads(out)["cells"] == [{"truncate_dim": 64}], err
