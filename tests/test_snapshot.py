"""Snapshots: schema validation on load, atomic writes, exports that agree with the events."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fake_engine import recorded_run

from embprof.engine import report
from embprof.engine.errors import UserError
from embprof.engine.events import ErrorEvent
from embprof.engine.files import atomic_write_bytes
from embprof.engine.plan import RunPlan
from embprof.engine.snapshot import build, load, save, to_json


def test_summary_from_events() -> None:
    events, rec = recorded_run()
    snap = build(rec, {"hostname": "h"})
    s = snap.summary
    assert [p.name for p in s.phases] == ["load", "encode"]
    assert s.phases[0].peaks["rss_mib"] == 300.0 and s.phases[1].peaks["rss_mib"] == 200.0
    assert s.peaks["rss_mib"].sampled == 300.0 and s.peaks["rss_mib"].phase == "load"
    assert s.peaks["rss_mib"].counter == 310.0 and s.peaks["rss_mib"].counter_source == "ru_maxrss"
    head = s.headline
    assert head is not None and head.group == "encode"
    assert head.stats.mean_s == pytest.approx(0.002)
    assert head.items_per_s == pytest.approx(1000.0)
    assert head.padding_percent == pytest.approx(100 * 6 / 16)
    assert snap.plan == RunPlan()  # the plan it ran is kept, for `embprof rerun`


def test_round_trip_and_atomic_save(tmp_path: Path) -> None:
    events, rec = recorded_run()
    snap = build(rec, {"hostname": "h"})
    path = save(snap, tmp_path)
    again = load(path)
    assert again == snap
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind


def test_failed_write_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "s.json"
    target.write_text("old")

    def boom(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("summary"), "summary"),
        (lambda d: d["events"].append({"kind": "nonsense", "t_ns": 1}), "events"),
        (lambda d: d["events"][1].update(rss_mib="lots"), "rss_mib"),
        (lambda d: d.update(status="exploded"), "status"),
        (lambda d: d.update(schema_version=99), "schema version 99"),
    ],
)
def test_load_validates_the_schema(tmp_path: Path, mutate: object, message: str) -> None:
    events, rec = recorded_run()
    data = json.loads(to_json(build(rec, {})))
    mutate(data)  # type: ignore[operator]
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(data))
    with pytest.raises(UserError, match=message):
        load(p)


def test_exports_agree_with_the_events(tmp_path: Path) -> None:
    events, rec = recorded_run()
    snap = build(rec, {"libraries": {"torch": "2.13.0"}})
    md = report.export(snap, "md")
    assert "## Phases" in md and "| load |" in md
    batches = report.export(snap, "csv", "batches").strip().splitlines()
    assert batches[0].startswith("t_s,phase_id") and len(batches) == 2
    timeline = report.export(snap, "csv", "timeline").strip().splitlines()
    assert len(timeline) == 1 + 3
    summary = report.export(snap, "csv")
    assert "peaks,process RSS MiB,sampled,300.0" in summary
    with pytest.raises(UserError, match="unknown table"):
        report.export(snap, "csv", "nope")
    with pytest.raises(UserError, match="this snapshot has no 'speed' table"):  # a table of another kind of run
        report.export(snap, "csv", "speed")


def test_incomplete_and_failed_runs_are_saved_with_their_errors(tmp_path: Path) -> None:
    events, rec = recorded_run(status="failed")
    rec(ErrorEvent(t_ns=12, error_kind="oom", message="OutOfMemoryError: CUDA out of memory", phase="encode"))
    snap = build(rec, {})
    assert snap.status == "failed"
    assert snap.summary.errors[0].error_kind == "oom"
    head = snap.summary.headline
    assert head is not None and head.calls == 1  # what was measured before the failure is kept
