"""Snapshots written before the workload's facts were typed (schema version 2: each workload's
settings as a free dict) still load, show, export and compare: they are migrated on read. The
fixtures are real version-2 files (the bundled model: encode, --vs, similarity, a sweep, speed, MTEB,
training and a matrix cell), with the host name and paths neutralised."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import embprof_exe
from embprof.engine import report
from embprof.engine.compare import comparable, compare_tables
from embprof.engine.migrate import workload_facts
from embprof.engine.snapshot import SCHEMA_VERSION, load, load_head, to_json
from embprof.engine.workload_facts import (
    EncodeFacts,
    SpeedFacts,
    TrainFacts,
    VersusFacts,
)

FIXTURES = Path(__file__).parent / "fixtures" / "v2"
ALL = sorted(FIXTURES.glob("v2-*.json"))


def _old(name: str) -> dict:
    return json.loads((FIXTURES / f"v2-{name}.json").read_text())


def test_every_workload_has_a_fixture() -> None:
    assert {json.loads(p.read_text())["workload"]["name"] for p in ALL} == {
        "encode", "encode-vs", "similarity", "sweep", "speed", "mteb", "train", "cell"}


@pytest.mark.parametrize("path", ALL, ids=[p.stem for p in ALL])
def test_a_version_2_snapshot_loads_shows_and_exports(path: Path, tmp_path: Path) -> None:
    old = json.loads(path.read_text())
    assert old["schema_version"] == 2
    snap = load(path)
    assert snap.schema_version == SCHEMA_VERSION == 3 and snap.migrated_from == 2
    assert snap.workload.name == old["workload"]["name"]
    assert load_head(path).workload == snap.workload  # a list of runs reads the same facts
    started = next(e for e in snap.events if e.kind == "run_started")
    assert started.workload == snap.workload  # the event is migrated with the head
    # Every setting the old file recorded is still shown: from the plan, or as a fact.
    rows = dict(report.workload_rows(snap))
    for key, value in old["workload"].items():
        if key == "name" or value is None or isinstance(value, (list, dict)):
            continue
        shown = {"loss": "loss_class", "budget_s_per_point": "budget_s"}.get(key, key)  # named as the plan names them
        if old["workload"]["name"] == "mteb" and key == "loops":
            continue  # an MTEB run without a SpeedTask recorded loops as None
        assert shown in rows, (key, rows)
    assert report.export(snap, "md").startswith("# embprof profile")
    for table in report.all_tables(snap):
        report.export(snap, "csv", table)
    again = tmp_path / "again.json"
    again.write_text(to_json(snap))
    assert json.loads(again.read_text())["schema_version"] == 3
    assert load(again) == snap  # saved again, it is a version-3 file that loads to the same snapshot


def test_the_facts_are_the_old_files_own_values() -> None:
    encode = load(FIXTURES / "v2-encode.json").workload
    assert isinstance(encode, EncodeFacts)
    assert (encode.input, encode.lines) == (_old("encode")["workload"]["input"], _old("encode")["workload"]["lines"])
    speed = load(FIXTURES / "v2-speed.json").workload
    assert isinstance(speed, SpeedFacts) and speed.text_sha256 == _old("speed")["workload"]["text_sha256"]
    assert speed.words == _old("speed")["workload"]["words"]
    vs = load(FIXTURES / "v2-encode-vs.json").workload
    assert isinstance(vs, VersusFacts) and isinstance(vs.inner, EncodeFacts)
    assert vs.inner.lines == _old("encode-vs")["workload"]["lines"] and vs.pairs == _old("encode-vs")["workload"]["pairs"]
    train = load(FIXTURES / "v2-train.json").workload
    assert isinstance(train, TrainFacts)
    assert (train.data_format, train.examples, train.loss_class) == tuple(
        _old("train")["workload"][k] for k in ("data_format", "examples", "loss"))


def test_a_file_without_a_plan_keeps_its_recorded_settings() -> None:
    facts = workload_facts({"name": "load", "requests": 20, "texts_per_request": 4, "input": "corpus.txt",
                            "mix": ["a.txt:1", "b.txt:2"]}, has_plan=False)
    assert facts == {"name": "load", "input": "corpus.txt",
                     "recorded": {"requests": 20, "texts_per_request": 4, "mix": "a.txt:1, b.txt:2"}}
    # With a plan the settings are the plan's: nothing is kept twice.
    assert "recorded" not in workload_facts({"name": "load", "requests": 20}, has_plan=True)
    with pytest.raises(ValueError, match="workload 'nope'"):
        workload_facts({"name": "nope"}, has_plan=True)


def test_version_2_compares_with_version_1_and_with_itself() -> None:
    v2 = load(FIXTURES / "v2-encode.json")
    v1 = load(Path(__file__).parent / "fixtures" / "v1" / "v1-encode.json")
    ok, why = comparable([v1, v2])
    assert ok, why  # the same work: the bundled model, the sample corpus, the same settings
    assert any(t.name == "compare" for t in compare_tables([v1, v2], ["v1", "v2"]))
    ok, why = comparable([v2, load(FIXTURES / "v2-similarity.json")])
    assert not ok and "different workloads (encode, similarity)" in why


@pytest.mark.slow
def test_the_commands_read_version_2(cli_env: dict[str, str]) -> None:
    exe = embprof_exe()
    a, b = str(FIXTURES / "v2-encode.json"), str(FIXTURES / "v2-speed.json")
    for args in (["show", a], ["export", b, "--format", "md"], ["compare", a, str(FIXTURES / "v2-encode-vs.json")]):
        done = subprocess.run([exe, *args], env=cli_env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
