"""Snapshots written by embprof before the run plan and typed results (schema version 1) still
load, show, export and compare: they are migrated on read. The fixtures are real version-1 files
(the bundled model, llama-server), with the host name and paths neutralised."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import embprof_exe
from embprof.engine import report
from embprof.engine.compare import compare_tables
from embprof.engine.results import EncodeResult, MtebTask, SweepResult, VersusResult
from embprof.engine.snapshot import SCHEMA_VERSION, load, to_json

FIXTURES = Path(__file__).parent / "fixtures" / "v1"
ALL = sorted(FIXTURES.glob("v1-*.json"))


@pytest.mark.parametrize("path", ALL, ids=[p.stem for p in ALL])
def test_a_version_1_snapshot_loads_shows_and_exports(path: Path, tmp_path: Path) -> None:
    assert json.loads(path.read_text())["schema_version"] == 1
    snap = load(path)
    assert snap.schema_version == SCHEMA_VERSION and snap.migrated_from == 1
    assert snap.plan is not None, snap.plan_note  # every fixture's settings say enough to run it again
    names = [t.name for t in report.summary_tables(snap)]
    assert "run" in names and "peaks" in names
    assert report.export(snap, "md").startswith("# embprof profile")
    for table in report.all_tables(snap):
        report.export(snap, "csv", table)
    # Saved again, it is a version-2 file that loads to the same snapshot.
    again = tmp_path / "again.json"
    again.write_text(to_json(snap))
    assert load(again) == snap


def test_migration_keeps_the_figures_and_types_the_results() -> None:
    encode = load(FIXTURES / "v1-encode.json")
    old = json.loads((FIXTURES / "v1-encode.json").read_text())
    head = encode.summary.headline
    assert head is not None and head.calls == old["summary"]["encode"]["calls"]
    assert head.stats.mean_s == pytest.approx(old["summary"]["encode"]["stats"]["mean_s"])
    assert isinstance(encode.summary.results["encode"], EncodeResult)
    assert isinstance(load(FIXTURES / "v1-sweep.json").summary.results["sweep"], SweepResult)
    assert isinstance(load(FIXTURES / "v1-vs.json").summary.results["vs"], VersusResult)
    mteb = load(FIXTURES / "v1-mteb.json")
    task = mteb.summary.results["mteb:STS16"]
    assert isinstance(task, MtebTask) and task.main_score == pytest.approx(old_main_score())
    assert mteb.summary.headline is None  # two encoding phases: never pooled
    assert all(c.words_per_s is None for c in mteb.summary.calls)  # version 1 wrote 0: never counted


def old_main_score() -> float:
    data = json.loads((FIXTURES / "v1-mteb.json").read_text())
    return float(next(e for e in data["events"] if e.get("name") == "mteb:STS16")["data"]["main_score"])


def test_llama_native_zeros_become_not_measured() -> None:
    snap = load(FIXTURES / "v1-llama-encode.json")
    head = snap.summary.headline
    assert head is not None and head.tokens is None and head.tokens_per_s is None
    assert snap.summary.results["encode"].tokens_per_s is None
    assert snap.target.device is None and snap.target.backend == "http"  # no more device "server"
    # The process found by the port was that run's; its plan must not tie a rerun to it.
    assert snap.plan is not None and snap.plan.target.kind == "server" and snap.plan.target.server_pid is None
    md = report.export(snap, "md")
    assert "n/a (the server reports no token counts)" in md


def test_version_1_snapshots_compare_with_each_other_and_with_version_2() -> None:
    a, b = load(FIXTURES / "v1-encode.json"), load(FIXTURES / "v1-vs.json")
    tables = compare_tables([a, b], ["a", "b"])
    assert any(t.name == "compare" for t in tables)


@pytest.mark.slow
def test_the_commands_read_version_1(cli_env: dict[str, str], tmp_path: Path) -> None:
    exe = embprof_exe()
    for args in (["show", str(FIXTURES / "v1-sweep.json")], ["export", str(FIXTURES / "v1-mteb.json"), "--format", "csv", "--table", "latency"],
                 ["compare", str(FIXTURES / "v1-encode.json"), str(FIXTURES / "v1-speed.json")],
                 ["rerun", str(FIXTURES / "v1-encode.json"), "--print-plan"]):
        proc = subprocess.run([exe, *args], env=cli_env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, (args, proc.stderr)
        assert proc.stdout.strip(), args
    plan = json.loads(subprocess.run([exe, "rerun", str(FIXTURES / "v1-encode.json"), "--print-plan"], env=cli_env,
                                     capture_output=True, text=True, timeout=60).stdout)
    assert plan["workload"]["name"] == "encode" and plan["workload"]["repeats"] == 2 and plan["recording"]["sample_hz"] == 2.0
