"""The dashboard with the real engine and the real bundled model, and in a real terminal (tmux)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import DATASETS, embprof_exe
from embprof.engine.plan import plan_from_options
from embprof.engine.results import MtebTask, SimilarityResult, SweepResult
from embprof.engine.snapshot import load
from embprof.tui.app import EmbprofApp
from embprof.tui.view import RunView
from textual.widgets import DataTable, Static

pytestmark = pytest.mark.slow


async def saved_run(app: EmbprofApp, pilot: Any) -> RunView:
    """The run on display once it has finished and its snapshot is on disk (two minutes at most)."""
    for _ in range(1200):
        if app.current is not None and app.current.snapshot_path:
            break
        await pilot.pause(0.1)
    view = app.current
    assert view is not None and view.state == "done", view and view.run.errors
    return view


def shown(app: EmbprofApp, selector: str) -> str:
    from rich.console import Console

    console = Console(width=200, color_system=None)
    with console.capture() as capture:
        console.print(app.query_one(selector, Static).content)
    return capture.get()


async def test_real_engine_panels_show_the_snapshots_numbers(tmp_path: Path) -> None:
    app = EmbprofApp(plan_from_options({"repeats": 2}), profiles_dir=tmp_path / "profiles")
    async with app.run_test(size=(120, 40)) as pilot:
        view = await saved_run(app, pilot)
        await pilot.pause(0.5)
        snap = load(view.snapshot_path or "")
        assert snap.plan == app.plan  # what ran is what "run again" runs
        headline = snap.summary.headline
        assert headline is not None
        stats = headline.stats
        latency = shown(app, "#latency-stats")
        assert f"calls {stats.count}" in latency
        mean = stats.mean_s
        assert mean is not None
        assert (f"mean {mean * 1000:,.1f} ms" if mean < 1 else f"mean {mean:,.3f} s") in latency
        await pilot.press("2")
        await pilot.pause(0.5)
        memory = shown(app, "#memory-peaks")
        peak = snap.summary.peaks["rss_mib"]
        assert f"peak RSS {peak.sampled:,.1f} MiB" in memory
        assert f"ru_maxrss {peak.counter:,.1f} MiB" in memory


@pytest.mark.skipif(not (DATASETS / "sts16" / "test.jsonl").is_file(), reason=f"the evaluation datasets are absent: {DATASETS}")
async def test_real_mteb_run_in_the_dashboard(tmp_path: Path) -> None:
    data = tmp_path / "data" / "sts16"
    data.mkdir(parents=True)
    rows = (DATASETS / "sts16" / "test.jsonl").read_text(encoding="utf-8").splitlines()[:60]
    (data / "test.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    plan = plan_from_options({"workload": "mteb", "tasks": ["STS16"], "data_dir": str(data.parent), "results_dir": str(tmp_path / "results")})
    app = EmbprofApp(plan, profiles_dir=tmp_path / "profiles")
    async with app.run_test(size=(120, 40)) as pilot:
        view = await saved_run(app, pilot)
        await pilot.press("4")
        await pilot.pause(0.5)
        snap = load(view.snapshot_path or "")
        result = snap.summary.results["mteb:STS16"]
        assert isinstance(result, MtebTask) and result.main_score is not None
        row = [str(c) for c in app.query_one("#scores-table", DataTable).get_row_at(0)]
        assert row[:3] == ["STS16", "ok", f"{result.main_score:.6f}"]
        assert Path(result.results_file or "").is_file()
        # MTEB's encode calls are of several kinds: words/s is n/a, never a pooled or zero figure.
        await pilot.press("1")
        await pilot.pause(0.5)
        assert "words/s n/a" in shown(app, "#latency-stats")
        # The live table's peak equals the snapshot's own per-phase peak for the task.
        phase = next(p for p in snap.summary.phases if p.phase_id == result.phase_id)
        assert row[5] == f"{phase.peaks['rss_mib']:,.3f}"


async def test_real_sweep_in_the_dashboard(tmp_path: Path) -> None:
    plan = plan_from_options({"workload": "sweep", "axis": ["lines=8,16"], "budget": 3.0})
    app = EmbprofApp(plan, profiles_dir=tmp_path / "profiles")
    async with app.run_test(size=(120, 40)) as pilot:
        view = await saved_run(app, pilot)
        await pilot.press("4")
        await pilot.pause(0.5)
        sweep = load(view.snapshot_path or "").summary.results["sweep"]
        assert isinstance(sweep, SweepResult)
        table = app.query_one("#scores-table", DataTable)
        assert table.row_count == 2
        for i, point in enumerate(sweep.points):
            row = [str(c) for c in table.get_row_at(i)]
            assert row[0] == point.label and row[2] == f"{point.median_s:,.4f}"
        head = shown(app, "#scores-head")
        assert sweep.fits[0].formula in head
        assert "exact through its points" in head  # two points, two terms


def _screen(session: str) -> str:
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True, check=False).stdout


def _wait_for(session: str, text: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        screen = _screen(session)
        if text in screen:
            return screen
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never appeared; the screen was:\n{_screen(session)}")


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (make setup installs it where apt-get works)")
def test_in_a_real_terminal(tmp_path: Path) -> None:
    session = f"embprof-test-{os.getpid()}"
    profiles = tmp_path / "profiles"
    env = f"EMBPROF_PROFILES_DIR={profiles} HF_HUB_OFFLINE=1 TERM=xterm-256color"
    cmd = f"env {env} {embprof_exe()} --workload similarity; echo EMBPROF-EXITED-$?; sleep 60"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "100", "-y", "30", cmd], check=True)
    try:
        _wait_for(session, "Latency", 15)  # the first frame, long before the model is loaded
        _wait_for(session, "done", 120)
        subprocess.run(["tmux", "send-keys", "-t", session, "4"], check=True)
        screen = _wait_for(session, "right document first", 10)
        assert "Mercury" in screen
        subprocess.run(["tmux", "send-keys", "-t", session, "?"], check=True)
        _wait_for(session, "keys", 10)
        subprocess.run(["tmux", "send-keys", "-t", session, "x"], check=True)  # any key closes the help
        time.sleep(0.5)
        subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=True)
        _wait_for(session, "EMBPROF-EXITED-0", 20)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True, check=False)
    saved = list(profiles.glob("*-similarity-*.json"))
    assert len(saved) == 1
    sim = load(saved[0]).summary.results["similarity"]
    assert isinstance(sim, SimilarityResult) and sim.top1_correct == (True,)
