"""The matrix for real, on the bundled MiniLM, offline: seven chosen cells (torch float32 and
bfloat16, ONNX Runtime float32 and int8, OpenVINO, 128 dimensions, binary vectors) and a q8_0 GGUF
on the real llama-server, scored on STS16 and JSTS from the shared datasets, each cell in its own
process. Checked against independent sources: `embprof mteb` run on its own, and a brute-force
Pareto computation. Then the same matrix again (nothing runs), the reports, and Ctrl-C.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import DATASETS, default_sigint, embprof_exe
from embprof.engine.frontier import frontiers
from embprof.engine.matrix import rows
from embprof.engine.matrix.row import COST_AXES, MatrixRow
from llama_server import LlamaServer, minilm_gguf, server_binary

pytestmark = pytest.mark.slow

CELLS = ["backend=torch", "dtype=bfloat16", "backend=onnx", "backend=onnx,quantize=int8", "backend=openvino", "truncate_dim=128",
         "precision=binary"]


@pytest.fixture(scope="module")
def llama_q8() -> Iterator[LlamaServer]:
    model = minilm_gguf("q8_0")
    server_binary()
    with LlamaServer(model) as server:
        yield server


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("matrix-env")
    e = dict(os.environ)
    e.update({"HF_HUB_OFFLINE": "1", "XDG_CACHE_HOME": str(tmp / "cache"), "EMBPROF_PROFILES_DIR": str(tmp / "profiles"),
              "PYTHONUNBUFFERED": "1", "COLUMNS": "200"})
    e.pop("EMBPROF_SPEED_TEXT", None)
    return e


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A share of the real STS16 and JSTS rows (every sixth): every check here compares runs on the same rows
    (cells with each other, the reference with `embprof mteb`), none with published figures, and eight cells
    on the whole sets would take minutes."""
    out = tmp_path_factory.mktemp("matrix-data")
    for folder, split in (("sts16", "test"), ("jsts", "validation")):
        rows_ = (DATASETS / folder / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()[::6]
        (out / folder).mkdir()
        (out / folder / f"{split}.jsonl").write_text("\n".join(rows_) + "\n", encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def cost_text(tmp_path_factory: pytest.TempPathFactory, speed_text: Path) -> Path:
    """The speed text's first 15 paragraphs of its 43: the cost and the agreement are compared between cells on
    the same text, never with published figures, and the whole text in eight cells twice over takes a minute."""
    paragraphs = speed_text.read_text(encoding="utf-8").split("\n\n")
    out = tmp_path_factory.mktemp("matrix-text") / "cost.txt"
    out.write_text("\n\n".join(paragraphs[:15]), encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str], llama_q8: LlamaServer, cost_text: Path, data: Path
           ) -> tuple[Path, list[str], subprocess.CompletedProcess[str]]:
    folder = tmp_path_factory.mktemp("matrix") / "m"
    args = ["matrix", *[a for c in CELLS for a in ("--cell", c)], "--server", llama_q8.url, "--server-of", "bundled",
            "--server-name", "MiniLM q8_0 GGUF", "-t", "STS16", "-t", "JSTS", "--data-dir", str(data), "--text", str(cost_text),
            "--loops", "2", "-o", str(folder)]
    proc = subprocess.run([embprof_exe(), *args], env=env, capture_output=True, text=True, timeout=1200)
    return folder, args, proc


def by_label(table_rows: list[MatrixRow]) -> dict[str, MatrixRow]:
    return {r.label: r for r in table_rows}


def test_the_matrix_measures_every_cell(matrix: tuple[Path, list[str], subprocess.CompletedProcess[str]]) -> None:
    folder, _args, proc = matrix
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest, table_rows = rows(folder)
    got = by_label(table_rows)
    assert len(table_rows) == 8 and all(r.status == "ok" for r in table_rows), [(r.label, r.status, r.reason) for r in table_rows]
    ref = got["all-MiniLM-L6-v2 · torch · float32 · cpu"]
    assert ref.reference and ref.agreement_mean == pytest.approx(1.0, abs=1e-9) and ref.topk_overlap == 1.0
    for label in ("all-MiniLM-L6-v2 · onnx · float32 · cpu", "all-MiniLM-L6-v2 · openvino · float32 · cpu"):
        assert got[label].agrees_1e4 is True, (label, got[label].agreement_min)
    int8 = got["all-MiniLM-L6-v2 · onnx · int8 per-channel · cpu"]
    binary = got["all-MiniLM-L6-v2 · torch · float32 · cpu · binary vectors"]
    assert int8.agreement_mean is not None and 0.95 < int8.agreement_mean < 1.0
    assert binary.agreement_mean is not None and 0.5 < binary.agreement_mean < 0.95  # ±1 signs against floats
    assert int8.export_s is not None and int8.disk_bytes is not None and ref.disk_bytes is not None
    assert int8.disk_bytes < ref.disk_bytes / 3, "int8 weights are a quarter of float32's"
    dim128 = got["all-MiniLM-L6-v2 · torch · float32 · cpu · dim 128"]
    assert dim128.quality is not None and ref.quality is not None and dim128.quality < ref.quality
    gguf = got["MiniLM q8_0 GGUF · llama"]
    assert gguf.backend == "llama" and gguf.quality is not None and gguf.agreement_mean is not None and 0.98 < gguf.agreement_mean < 1.0
    for r in table_rows:
        assert r.p50_s and r.p95_s and r.items_per_s and r.peak_rss_bytes and r.calls == 2, r.label
        assert r.energy_j_per_1000 is None and r.energy_why, "no energy counter here: n/a with its reason, never 0"
        assert set(r.scores) == {"STS16", "JSTS"} and r.quality == pytest.approx(sum(r.scores.values()) / 2)  # type: ignore[arg-type]
    # The bfloat16 cell's latency is measured and shown, whatever this CPU makes of bfloat16.
    assert got["all-MiniLM-L6-v2 · torch · bfloat16 · cpu"].p50_s is not None
    # Each cell ran in its own process, forked from the matrix's warm parent, and its row says so: its import was the
    # parent's, once for all (not the cell's own, so n/a), its load its own.
    envs = [json.loads((folder / r.snapshot).read_text())["environment"] for r in table_rows if r.snapshot]
    pids = {e.get("pid") for e in envs}
    assert None not in pids and len(pids) == 8
    assert all(r.start == "warm" and r.import_s is None for r in table_rows), [(r.label, r.start, r.import_s) for r in table_rows]
    parents = {e["cell_start"]["parent_pid"] for e in envs}
    assert len(parents) == 1 and not parents & pids
    assert manifest.notes == []


def test_reference_scores_equal_embprof_mteb(matrix: tuple[Path, list[str], subprocess.CompletedProcess[str]], env: dict[str, str],
                                             tmp_path: Path, data: Path) -> None:
    folder, _args, proc = matrix
    assert proc.returncode == 0
    ref = by_label(rows(folder)[1])["all-MiniLM-L6-v2 · torch · float32 · cpu"]
    run = subprocess.run([embprof_exe(), "mteb", "-t", "STS16", "-t", "JSTS", "--data-dir", str(data), "--device", "cpu",
                          "--results-dir", str(tmp_path / "results")], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    for task in ("STS16", "JSTS"):
        files = list((tmp_path / "results").rglob(f"{task}.json"))
        assert len(files) == 1
        data = json.loads(files[0].read_text())
        direct = next(iter(data["scores"].values()))[0]["main_score"]
        assert ref.scores[task] == pytest.approx(direct, abs=1e-6), task


def test_the_frontier_is_the_brute_force_one(matrix: tuple[Path, list[str], subprocess.CompletedProcess[str]]) -> None:
    folder, _args, _proc = matrix
    table_rows = rows(folder)[1]
    for f in frontiers(table_rows):
        pts = [(r.cell_id, r.quality, getattr(r, f.axis)) for r in table_rows
               if r.status == "ok" and r.quality is not None and getattr(r, f.axis) is not None]
        brute = {a for a, qa, ca in pts if not any((qb >= qa and cb <= ca) and (qb > qa or cb < ca) for _b, qb, cb in pts)}
        assert set(f.cells) == brute, f.axis
    assert {f.axis for f in frontiers(table_rows)} == {a for a, _l, _u in COST_AXES}


def test_the_same_matrix_again_runs_nothing(matrix: tuple[Path, list[str], subprocess.CompletedProcess[str]], env: dict[str, str]) -> None:
    folder, args, proc = matrix
    assert proc.returncode == 0
    before = {p: p.stat().st_mtime_ns for p in (folder / "cells").glob("*.json")}
    started = time.monotonic()
    again = subprocess.run([embprof_exe(), *args], env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stderr.count("finished in an earlier run") == 8
    assert {p: p.stat().st_mtime_ns for p in (folder / "cells").glob("*.json")} == before
    assert time.monotonic() - started < 60


def test_reports_from_the_matrix_folder(matrix: tuple[Path, list[str], subprocess.CompletedProcess[str]], env: dict[str, str],
                                        tmp_path: Path) -> None:
    folder, _args, _proc = matrix
    html = tmp_path / "m.html"
    md = tmp_path / "md" / "m.md"
    for fmt, out in (("html", html), ("md", md)):
        done = subprocess.run([embprof_exe(), "export", str(folder), "--format", fmt, "-o", str(out)], env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    page = html.read_text()
    assert "http://" not in page.replace(by_label(rows(folder)[1])["MiniLM q8_0 GGUF · llama"].model, "") and "https://" not in page
    for r in rows(folder)[1]:
        assert r.label.replace("·", "&middot;") in page or r.label in page
    assert page.count("<svg") == 2, "latency and memory have points; energy has none here, and says why"
    text = md.read_text()
    assert "n/a (no energy counter" in text and "frontier-latency.svg" in text
    assert sorted(p.name for p in md.parent.glob("*.svg")) == ["m-frontier-latency.svg", "m-frontier-memory.svg"]


def test_ctrl_c_keeps_finished_cells_and_the_next_run_goes_on(tmp_path: Path, env: dict[str, str], speed_text: Path) -> None:
    spec = tmp_path / "m.toml"
    # A short encode cost: the test needs a cell finished and one under way, not the speed protocol's text.
    lines = tmp_path / "lines.txt"
    lines.write_text("\n".join(f"a line to encode, number {i}" for i in range(200)) + "\n")
    spec.write_text(f'precision = ["float32", "binary", "int8"]\ntasks = []\nloops = 2\ncost = "encode"\ncost_input = "{lines}"\n')
    folder = tmp_path / "m"
    proc = subprocess.Popen([embprof_exe(), "matrix", "--spec", str(spec), "-o", str(folder)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    deadline = time.monotonic() + 300
    while not list((folder / "cells").glob("*[0-9a-f].json")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)  # the second cell is under way
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted (SIGINT): the finished cells are kept" in err and "Traceback" not in err
    manifest, table_rows = rows(folder)
    statuses = [r.status for r in table_rows]
    assert statuses[0] == "ok" and "pending" in statuses, statuses
    again = subprocess.run([embprof_exe(), "matrix", "--spec", str(spec), "-o", str(folder)], env=env, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stderr.count("finished in an earlier run") >= 1
    assert all(r.status == "ok" for r in rows(folder)[1])
