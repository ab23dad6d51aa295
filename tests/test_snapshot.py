"""Snapshots: schema validation on load, atomic writes, exports that agree with the events."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from embprof.engine import report
from embprof.engine.errors import UserError
from embprof.engine.events import (
    BatchTimed,
    EncodeTimed,
    ErrorEvent,
    Event,
    PhaseEnded,
    PhaseStarted,
    ResourceSample,
    Result,
    RunFinished,
    RunStarted,
)
from embprof.engine.files import atomic_write_bytes
from embprof.engine.plan import RunPlan
from embprof.engine.results import KernelCounters, TargetFacts
from embprof.engine.snapshot import Recorder, build, load, save, to_json


def sample(t: int, rss: float) -> ResourceSample:
    return ResourceSample(
        t_ns=t, rss_mib=rss, sys_ram_used_mib=900.0, sys_ram_available_mib=100.0, cpu_percent=50.0, per_core_percent=(25.0, 75.0), threads=4
    )


def recorded_run(status: str = "complete") -> tuple[list[Event], Recorder]:
    """A short run, recorded; the events are also returned as they were published."""
    rec = Recorder()
    events: list[Event] = [
        RunStarted(t_ns=0, run_id="r1", started_utc="2026-01-01T00:00:00+00:00",
                   target=TargetFacts(backend="sentence-transformers", model_name="m", device="cpu").model_dump(mode="json"),
                   workload={"name": "encode"}, sample_hz=10.0, plan=RunPlan().model_dump(mode="json")),
        sample(1, 100.0),
        PhaseStarted(t_ns=2, phase_id=1, name="load"),
        sample(3, 300.0),
        PhaseEnded(t_ns=4, phase_id=1, name="load", duration_ns=2),
        PhaseStarted(t_ns=5, phase_id=2, name="encode", detail="repeat 1/1"),
        BatchTimed(t_ns=6, phase_id=2, call_index=0, batch_index=0, items=2, tokens=10, padded_tokens=16, duration_ns=1_000_000, warmup=False,
                   group="encode"),
        EncodeTimed(t_ns=7, phase_id=2, call_index=0, label="repeat 1", items=2, tokens=10, words=6, duration_ns=2_000_000, warmup=False,
                    group="encode"),
        sample(8, 200.0),
        PhaseEnded(t_ns=9, phase_id=2, name="encode", duration_ns=4),
        Result(t_ns=10, result=KernelCounters(ru_maxrss_mib=310.0)),
        RunFinished(t_ns=11, status=status, duration_ns=11),  # type: ignore[arg-type]
    ]
    for e in events:
        rec(e)
    return events, rec


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
    assert snap.summary.errors[0]["error_kind"] == "oom"
    head = snap.summary.headline
    assert head is not None and head.calls == 1  # what was measured before the failure is kept
