"""The matrix: cells from axes or chosen cells, what is dropped and why, run order, spec files, and
the command line's refusals. (Running cells for real: test_matrix_e2e.py.)"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import embprof_exe
from embprof.engine.matrix import spec as mx
from embprof.engine.errors import UserError
from embprof.engine.matrix import MatrixSpec, expand, load_spec, validate_spec
from embprof.engine.plan import LocalTarget


@pytest.fixture(autouse=True)
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    # What the machine has is part of the expansion; these tests state it rather than read it.
    monkeypatch.setattr(mx, "_have_cuda", lambda: False)


def test_every_invalid_combination_is_dropped_with_its_reason(tmp_path: Path) -> None:
    spec = validate_spec({"devices": ["cpu", "cuda"], "dtypes": ["float32", "bfloat16"], "backends": ["torch", "onnx", "openvino"],
                          "quantize": ["none", "int8"], "tasks": []})
    exp = expand(spec, tmp_path)
    reasons = {d.label: d.reason for d in exp.dropped}
    assert len(exp.cells) + len(exp.dropped) == 2 * 2 * 3 * 2, "every combination is either a cell or dropped"
    assert "int8 weights run through ONNX Runtime or OpenVINO" in reasons["all-MiniLM-L6-v2 · torch · float32 · int8 weights · cpu"]
    assert "float32 graph" in reasons["all-MiniLM-L6-v2 · onnx · bfloat16 · cpu"]
    assert "no NVIDIA GPU" in reasons["all-MiniLM-L6-v2 · torch · float32 · cuda"]
    assert "CPU only" in reasons["all-MiniLM-L6-v2 · onnx · float32 · int8 weights · cuda"]
    assert "OpenVINO runs here on the CPU only" in reasons["all-MiniLM-L6-v2 · openvino · float32 · cuda"]
    labels = [c.label for c in exp.cells]
    assert labels[0] == "all-MiniLM-L6-v2 · torch · float32 · cpu"
    assert sorted(labels) == sorted(["all-MiniLM-L6-v2 · torch · float32 · cpu", "all-MiniLM-L6-v2 · torch · bfloat16 · cpu",
                      "all-MiniLM-L6-v2 · onnx · float32 · cpu", "all-MiniLM-L6-v2 · onnx · int8 per-channel · cpu",
                      "all-MiniLM-L6-v2 · openvino · float32 · cpu", "all-MiniLM-L6-v2 · openvino · int8 weights · cpu"])
    assert exp.cells[0].reference and not any(c.reference for c in exp.cells[1:])
    assert exp.notes == [], "the reference was asked for, so nothing was added"


def test_a_missing_extra_drops_its_cells_in_one_sentence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    exp = expand(validate_spec({"backends": ["torch", "onnx"], "tasks": []}), tmp_path)
    assert [d.reason for d in exp.dropped] == ["the onnx backend needs the optional packages: pip install 'embprof[backends]'"]


def test_chosen_cells_references_and_interleaving(tmp_path: Path) -> None:
    spec = validate_spec({"models": ["org/a", "org/b"], "precisions": ["float32", "binary"], "backends": ["torch"], "tasks": []})
    exp = expand(spec, tmp_path)
    keys = [c.model_key for c in exp.cells]
    a, b = mx.model_key("org/a"), mx.model_key("org/b")
    # References first (everything else needs their vectors), then one cell of each model in turn.
    assert keys == [a, b, a, b] if len(keys) == 4 else False
    assert [c.reference for c in exp.cells] == [True, True, False, False]
    ref_a = exp.cells[0].cell.write_reference
    assert ref_a and exp.cells[2].cell.reference == ref_a
    # Chosen cells: exactly these, plus the reference they are measured against, added and said so.
    chosen = validate_spec({"cells": [{"backend": "onnx"}, {"precision": "binary"}, {"truncate_dim": 128}], "tasks": []})
    exp = expand(chosen, tmp_path)
    assert [c.label for c in exp.cells] == ["all-MiniLM-L6-v2 · torch · float32 · cpu", "all-MiniLM-L6-v2 · onnx · float32 · cpu",
                                            "all-MiniLM-L6-v2 · torch · float32 · cpu · binary vectors",
                                            "all-MiniLM-L6-v2 · torch · float32 · cpu · dim 128"]
    assert exp.notes and "added: the float32 torch reference" in exp.notes[0]
    assert len({c.cell_id for c in exp.cells}) == 4


def test_a_server_cell_is_measured_against_the_model_it_serves(tmp_path: Path) -> None:
    spec = validate_spec({"models": [], "servers": [{"url": "http://127.0.0.1:9/", "of": "bundled", "name": "minilm q8_0"}], "tasks": []})
    exp = expand(spec, tmp_path)
    assert [c.label for c in exp.cells] == ["all-MiniLM-L6-v2 · torch · float32 · cpu", "minilm q8_0 · llama"]
    assert exp.cells[0].added and "serves all-MiniLM-L6-v2" in exp.cells[0].added
    assert exp.cells[1].cell.reference == exp.cells[0].cell.write_reference
    bare = expand(validate_spec({"models": [], "servers": [{"url": "http://127.0.0.1:9/"}], "tasks": []}), tmp_path)
    assert len(bare.cells) == 1 and bare.cells[0].cell.reference is None


def test_spec_files_toml_yaml_and_json_say_the_same(tmp_path: Path) -> None:
    toml = tmp_path / "m.toml"
    toml.write_text('# the README example\nmodel = "bundled"\nbackend = ["torch", "onnx"]\ntruncate-dim = ["full", 128]\n'
                    'precision = ["float32", "binary"]\ntasks = ["STS16"]\nloops = 3\n\n[[server]]\nurl = "http://127.0.0.1:8080"\n'
                    'of = "bundled"\n\n[[cell]]\nbackend = "onnx"\nquantize = "int8"\n')
    yaml = tmp_path / "m.yaml"
    yaml.write_text("model: bundled\nbackend: [torch, onnx]\ntruncate_dim: [full, 128]\nprecision: [float32, binary]\ntasks: [STS16]\n"
                    "loops: 3\nserver:\n  - url: http://127.0.0.1:8080\n    of: bundled\ncell:\n  - {backend: onnx, quantize: int8}\n")
    a, b = load_spec(str(toml)), load_spec(str(yaml))
    assert a == b
    assert a.truncate_dims == (None, 128) and a.servers[0].of == "bundled" and a.cells == ({"backend": "onnx", "quantize": "int8"},)
    js = tmp_path / "m.json"
    js.write_text(a.to_json())
    assert load_spec(str(js)) == a


@pytest.mark.parametrize("content, suffix, says", [
    ("backend = [\n", ".toml", "is not valid TOML"),
    ("backend: [torch\n", ".yaml", "is not valid YAML"),
    ("precision = ['float16']\n", ".toml", "matrix field 'precisions.0'"),
    ("colour = 'red'\n", ".toml", "matrix field 'colour'"),
    ("[[cell]]\nbackend = 'onnx'\ncolour = 'red'\n", ".toml", "a cell names 'colour'"),
    ("loops = 1\n", ".toml", "--loops must be at least 2"),
    ("models = []\n", ".toml", "no model and no server"),
    ("backend = 'torch'\n", ".ini", "must end in .toml"),
])
def test_bad_spec_files_are_one_sentence(tmp_path: Path, content: str, suffix: str, says: str) -> None:
    path = tmp_path / f"m{suffix}"
    path.write_text(content)
    with pytest.raises(UserError, match=None) as info:
        load_spec(str(path))
    assert says in str(info.value)
    assert "\n" not in str(info.value)


def test_spec_defaults() -> None:
    spec = MatrixSpec()
    w = spec.base.workload
    assert w.tasks == ("STS16", "JSTS") and w.batch_size == 32 and w.cost == "speed" and spec.models == ("bundled",)


# --print-spec as it was before the base plan: flat fields. Files and manifests written so still load.
OLD_FLAT_SPEC = {
    "matrix_version": 1, "models": ["bundled"], "devices": ["cpu"], "dtypes": ["float32"], "backends": ["torch", "onnx"],
    "quantize": ["none", "int8"], "quantize_mode": "per-tensor", "truncate_dims": [None], "precisions": ["float32"], "servers": [],
    "cells": [], "cost": "encode", "cost_input": "lines.txt", "text": None, "loops": 5, "batch_size": 16, "tasks": ["STS16"],
    "data_dir": "d", "top_k": 4, "energy_min_window_s": 2.0, "sample_hz": 5.0, "trust_remote_code": True, "placements": [],
}


def test_the_base_plan_holds_what_every_cell_shares(tmp_path: Path) -> None:
    spec = validate_spec(OLD_FLAT_SPEC)
    assert spec.base.workload.input == "lines.txt" and spec.base.workload.loops == 5 and spec.base.recording.sample_hz == 5.0
    assert spec.base.target.quantize_mode == "per-tensor" and spec.base.target.trust_remote_code
    # --print-spec writes the base plan nested, without what each cell sets; it loads back as the same matrix.
    printed = json.loads(spec.to_json())
    assert set(printed["base"]) == {"target", "workload", "recording"}
    assert printed["base"]["target"] == {"quantize_mode": "per-tensor", "trust_remote_code": True}
    assert not {"precision", "placement", "results_dir", "reference", "write_reference", "name"} & set(printed["base"]["workload"])
    assert validate_spec(printed) == spec and MatrixSpec.model_validate(OLD_FLAT_SPEC) == spec
    # Every cell's plan is the base plan with the cell's axis values.
    for c in expand(spec, tmp_path).cells:
        assert c.plan.recording == spec.base.recording
        assert c.cell.model_dump(exclude={"precision", "placement", "results_dir", "reference", "write_reference"}) == \
            spec.base.workload.model_dump(exclude={"precision", "placement", "results_dir", "reference", "write_reference"})
        assert isinstance(c.target, LocalTarget) and c.target.trust_remote_code
    # A flat setting goes over the base plan's (as the command line's options go over a file).
    assert validate_spec({**printed, "loops": 7}).base.workload.loops == 7


def test_a_nested_matrix_file(tmp_path: Path) -> None:
    toml = tmp_path / "m.toml"
    toml.write_text('backend = ["torch", "onnx"]\n[base.workload]\nloops = 3\ntasks = []\n[base.recording]\nsample_hz = 2.0\n'
                    '[base.target]\nquantize_mode = "per-tensor"\n')
    assert load_spec(str(toml)) == validate_spec({"backends": ["torch", "onnx"], "loops": 3, "tasks": [], "sample_hz": 2.0,
                                                  "quantize_mode": "per-tensor"})


@pytest.mark.parametrize("data, says", [
    ({"loops": "many"}, "matrix field 'loops': Input should be a valid integer"),
    ({"base": {"workload": {"loops": "many"}}}, "matrix field 'base.workload.loops': Input should be a valid integer"),
    ({"cost_input": 3}, "matrix field 'cost_input': Input should be a valid string"),
    ({"input": "x"}, "matrix field 'input': Extra inputs are not permitted"),
    ({"tasks": ["STS16", "STS16"]}, "matrix field 'tasks': a value is given twice"),
    ({"sample_hz": 0}, "--sample-hz"),
    ({"cost": "encode"}, "--cost-workload encode needs a file of lines"),
    ({"base": {"target": {"device": "cuda"}}}, "matrix field 'base': target.device is each cell's own, an axis of the matrix (devices)"),
    ({"base": {"workload": {"results_dir": "x"}}}, "workload.results_dir is each cell's own, a file in the matrix's folder"),
])
def test_bad_base_settings_are_one_sentence(data: dict[str, object], says: str) -> None:
    with pytest.raises(UserError) as info:
        validate_spec(data)
    assert says in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("args, says", [
    (["--precision", "float16"], "matrix field 'precisions.0'"),
    (["--cell", "colour=red"], "a cell names 'colour'"),
    (["--cell", "backend"], "--cell takes KEY=VALUE pairs"),
    (["--spec", "missing.toml"], "does not exist"),
    (["--cost-workload", "bogus"], "--cost-workload takes speed or encode:FILE"),
    (["--cost-workload", "encode:missing.txt", "-t", "STS16"], "missing.txt"),
    (["--server-of", "bundled"], "go with --server"),
    (["--server", "http://a", "--server", "http://b", "--server-name", "x"], "--server-name is given 1 times for 2 servers"),
    (["--truncate-dim", "full,abc"], "--truncate-dim takes full or whole numbers"),
    (["--loops", "1"], "--loops must be at least 2"),
])
def test_bad_command_lines_exit_2_with_one_sentence(tmp_path: Path, args: list[str], says: str) -> None:
    proc = subprocess.run([embprof_exe(), "matrix", "-o", str(tmp_path / "m"), *args], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("embprof: error: ") and says in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "m" / "cells").exists() or not any((tmp_path / "m" / "cells").glob("*.json"))


def test_list_cells_names_every_dropped_combination(tmp_path: Path) -> None:
    proc = subprocess.run([embprof_exe(), "matrix", "--list-cells", "--backend", "torch,onnx", "--quantize", "none,int8",
                           "-o", str(tmp_path / "m")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "1. all-MiniLM-L6-v2 · torch · float32 · cpu (reference)" in out
    assert "onnx · int8 per-channel · cpu" in out
    assert "dropped: all-MiniLM-L6-v2 · torch · float32 · int8 weights · cpu: int8 weights run through ONNX Runtime or OpenVINO" in out


PLACEMENTS = [{"name": "h100", "accelerator_type": "H100"}, {"name": "host-a", "resources": {"host-a": 1}}]
# Cell ids as the matrix has always computed them: a matrix run again must find the cells it already has.
PINNED_IDS: list[tuple[dict[str, object], dict[str, str]]] = [
    ({}, {"all-MiniLM-L6-v2 · torch · float32 · cpu": "f846520db4d3"}),
    ({"devices": ["cpu", "cuda"], "dtypes": ["float32", "bfloat16"], "backends": ["torch", "onnx"], "quantize": ["none", "int8"],
      "precisions": ["float32", "binary"], "truncate_dims": [None, 128], "tasks": ["STS16"], "loops": 5, "batch_size": 16,
      "data_dir": "d", "top_k": 4, "quantize_mode": "per-tensor", "trust_remote_code": True, "cost": "encode", "cost_input": "lines.txt",
      "text": "t.txt", "energy_min_window_s": 2.0, "sample_hz": 5.0},
     {"all-MiniLM-L6-v2 · onnx · int8 per-tensor · cpu · dim 128 · binary vectors": "4ab2444598fb",
      "all-MiniLM-L6-v2 · torch · bfloat16 · cuda": "4a453cc225c2",
      "all-MiniLM-L6-v2 · onnx · float32 · cuda · dim 128": "2f4c21b85452"}),
    ({"cells": [{"backend": "onnx", "quantize": "int8", "quantize_mode": "per-tensor"}, {"truncate_dim": 128, "device": "cuda:1"},
                {"model": "org/x", "dtype": "float16"}], "tasks": ["STS16", "JSTS", "STS12"], "loops": 3},
     {"all-MiniLM-L6-v2 · torch · float32 · cpu": "0c9ccd5fe94e", "all-MiniLM-L6-v2 · onnx · int8 per-tensor · cpu": "47fbad359e7f",
      "all-MiniLM-L6-v2 · torch · float32 · cuda:1 · dim 128": "140617f8a48d", "x · torch · float32 · cpu": "9a3e980fb101",
      "x · torch · float16 · cpu": "57d4f0425447"}),
    ({"placements": PLACEMENTS, "backends": ["torch", "onnx"], "tasks": []},
     {"all-MiniLM-L6-v2 · torch · float32 · cpu @ h100": "9ff277266e58", "all-MiniLM-L6-v2 · onnx · float32 · cpu @ host-a": "97d061e248e2"}),
    ({"models": [], "servers": [{"url": "http://u:p@127.0.0.1:9/", "of": "bundled", "name": "q8"},
                                {"url": "http://127.0.0.1:10/", "api": "openai", "server_model": "m", "api_key_env": "K"}],
      "precisions": ["float32", "binary"], "tasks": ["STS16"]},
     {"all-MiniLM-L6-v2 · torch · float32 · cpu": "4f1b32f0f78c", "q8 · llama · binary vectors": "aff515332fba",
      "http://127.0.0.1:10/ · openai": "2762896cc0ef"}),
]


@pytest.mark.parametrize("data, ids", PINNED_IDS)
def test_cell_ids_stay_what_they_were(data: dict[str, object], ids: dict[str, str], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec  # the ids do not depend on whether this machine has the backends' extras
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name in ("onnxruntime", "onnx", "openvino") else real(name, *a))
    got = {c.label: c.cell_id for c in expand(validate_spec(data), tmp_path, have_cuda=True).cells}
    assert {label: got.get(label) for label in ids} == ids


def test_what_is_not_measured_leaves_the_ids_alone(tmp_path: Path) -> None:
    """The energy window and the sample rate change how a cell is recorded, not what it measures."""
    plain = expand(validate_spec({"precisions": ["float32", "int8"], "tasks": []}), tmp_path)
    other = expand(validate_spec({"precisions": ["float32", "int8"], "tasks": [], "energy_min_window_s": 3.0, "sample_hz": 2.0}), tmp_path)
    assert [c.cell_id for c in plain.cells] == [c.cell_id for c in other.cells]
    assert other.cells[1].cell.energy_min_window_s == 3.0 and other.cells[1].plan.recording.sample_hz == 2.0
