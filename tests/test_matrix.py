"""The matrix: cells from axes or chosen cells, what is dropped and why, run order, spec files, and
the command line's refusals. (Running cells for real: test_matrix_e2e.py.)"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import embprof_exe
from embprof.engine.matrix import spec as mx
from embprof.engine.errors import UserError
from embprof.engine.matrix import MatrixSpec, expand, load_spec, validate_spec


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
    assert spec.tasks == ("STS16", "JSTS") and spec.batch_size == 32 and spec.cost == "speed" and spec.models == ("bundled",)


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
