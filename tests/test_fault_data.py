"""Fault suite: degenerate data is not a success.

Local MTEB task data whose score could only be undefined (NaN or infinite gold scores, gold scores
that never vary, a split of one row, labels of one class) fails its task with a sentence naming the
file (and the line, where one line is at fault), the other tasks still run, and no results file is
written for it. A task whose main score comes out NaN all the same (a model whose vectors are NaN)
fails the same way; a score that is not a number anywhere else is null in the results file, which
stays strict JSON. Training data a loss can learn nothing from (scored pairs whose scores never
differ, a single example) is refused before anything loads (exit 2).

The data are small degenerate copies of the real datasets, made in a temporary folder; mteb's own
task objects read them, as a run does.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_helpers import run_cli_in_process
from conftest import DATASETS

from embprof.engine.errors import UserError

# The faults this file tries, by kind, and the tests that try each (tests/test_reliability_doc.py counts them for
# docs/reliability.md): ``{}`` is one kind for each text it stands for in the tests' names.
FAULT_KINDS = {
    "task data: a gold score of {}": "test_a_gold_score_that_is_not_a_number_is_refused_naming_the_line[{}]",
    "task data: all-equal gold scores": ("test_gold_scores_that_never_vary_are_refused",
                                         "test_a_run_fails_degenerate_tasks_with_why_and_keeps_the_others"),
    "task data: an STS split of one row": "test_an_sts_split_of_one_row_is_refused",
    "task data: a classification split of one row": "test_a_classification_split_of_one_row_is_refused",
    "task data: one label class in the {} split": "test_labels_of_one_class_are_refused[{}]",
    "task data: a folder name holding control characters": "test_a_folder_name_with_control_characters_is_escaped",
    "a NaN main score (a model's vectors all alike)": "test_a_run_fails_degenerate_tasks_with_why_and_keeps_the_others",
    "a NaN or infinite figure in a task's result": ("test_a_score_that_is_not_a_number_is_null_in_the_results_file",
                                                    "test_finite_or_null_walks_every_container"),
    "vectors holding {}": "test_vectors_that_are_not_numbers_are_refused_before_mteb_scores_them[{}]",
    "training pairs all scored alike": "test_training_data_a_loss_learns_nothing_from_is_refused[rows0-*",
    "training data of one scored pair": "test_training_data_a_loss_learns_nothing_from_is_refused[rows1-*",
    "training pairs all scored alike among those --max-examples keeps": "test_training_data_a_loss_learns_nothing_from_is_refused[rows2-*",
    "training data of one example": "test_training_data_a_loss_learns_nothing_from_is_refused[rows3-*",
    "a snapshot holding {}": "test_a_snapshot_holding_a_figure_that_is_not_a_number_is_refused[{}]",
}
NOT_FAULTS: tuple[str, ...] = ()

needs_datasets = pytest.mark.skipif(
    not (DATASETS / "sts16" / "test.jsonl").is_file() or not (DATASETS / "banking77" / "train.jsonl").is_file(),
    reason=f"the evaluation datasets are absent: {DATASETS} (set EMBPROF_DATASETS to the datasets folder)",
)


def strict_json(text: str) -> Any:
    """JSON as a strict reader takes it: a bare NaN or Infinity is refused, as JavaScript's or jq's would be."""
    def refuse(literal: str) -> Any:
        raise ValueError(f"not JSON: {literal}")

    return json.loads(text, parse_constant=refuse)


def real_rows(folder: str, split: str, rows: int) -> list[dict[str, Any]]:
    lines = (DATASETS / folder / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
    out = [json.loads(line) for line in lines[:rows]]
    assert len(out) == rows
    return out


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def banking(data: Path, train: list[dict[str, Any]] | None = None, test: list[dict[str, Any]] | None = None) -> None:
    """A Banking77 copy of a few rows of two labels (the files are sorted by label), unless given."""
    def two_labels(split: str) -> list[dict[str, Any]]:
        rows = [json.loads(line) for line in (DATASETS / "banking77" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
        first = rows[0]["label"]
        other = next(r for r in rows if r["label"] != first)["label"]
        return [r for r in rows if r["label"] == first][:6] + [r for r in rows if r["label"] == other][:6]

    write_rows(data / "banking77" / "train.jsonl", train if train is not None else two_labels("train"))
    write_rows(data / "banking77" / "test.jsonl", test if test is not None else two_labels("test"))


def load_task(name: str, data: Path) -> Any:
    """The task's local data read into mteb's own task object, as a run's data-loading phase does."""
    from embprof.engine import mteb_data

    task = mteb_data.get_task(name)
    local, _looked = mteb_data.find_local(task, data)
    assert local is not None
    return mteb_data.load_local(task, local)


# -- gold scores that are NaN or infinite: refused naming the file and line --------------------------------------------

@needs_datasets
@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_a_gold_score_that_is_not_a_number_is_refused_naming_the_line(tmp_path: Path, literal: str) -> None:
    rows = real_rows("sts16", "test", 6)
    lines = [json.dumps(r) for r in rows]
    lines[3] = lines[3].replace(f'"score": {rows[3]["score"]}', f'"score": {literal}')
    assert literal in lines[3]
    path = tmp_path / "sts16" / "test.jsonl"
    path.parent.mkdir()
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(UserError) as info:
        load_task("STS16", tmp_path)
    assert str(info.value) == (f"task data file '{path}' line 4: \"score\" is {literal}, which JSON does not allow: "
                               "every value must be a finite number")


# -- gold scores all equal, one row, one class: the task's score would be undefined -----------------------------------

@needs_datasets
def test_gold_scores_that_never_vary_are_refused(tmp_path: Path) -> None:
    rows = [{**r, "score": 2.5} for r in real_rows("sts16", "test", 8)]
    path = write_rows(tmp_path / "sts16" / "test.jsonl", rows)
    with pytest.raises(UserError) as info:
        load_task("STS16", tmp_path)
    assert str(info.value) == (f"task data file '{path}': every gold score is 2.5: a correlation with scores that never vary "
                               "is undefined, so STS16 would score NaN")


@needs_datasets
def test_an_sts_split_of_one_row_is_refused(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "sts16" / "test.jsonl", real_rows("sts16", "test", 1))
    with pytest.raises(UserError) as info:
        load_task("STS16", tmp_path)
    assert str(info.value) == f"task data file '{path}' has 1 row: STS16 needs at least 2 in each split"


@needs_datasets
def test_a_classification_split_of_one_row_is_refused(tmp_path: Path) -> None:
    banking(tmp_path, test=real_rows("banking77", "test", 1))
    with pytest.raises(UserError) as info:
        load_task("Banking77Classification", tmp_path)
    assert str(info.value) == (f"task data file '{tmp_path / 'banking77' / 'test.jsonl'}' has 1 row: "
                               "Banking77Classification needs at least 2 in each split")


@needs_datasets
@pytest.mark.parametrize("split", ["train", "test"])
def test_labels_of_one_class_are_refused(tmp_path: Path, split: str) -> None:
    one = real_rows("banking77", split, 8)
    assert len({r["label"] for r in one}) == 1  # the files are sorted by label
    banking(tmp_path, **{split: one})
    with pytest.raises(UserError) as info:
        load_task("Banking77Classification", tmp_path)
    assert str(info.value) == (f"task data file '{tmp_path / 'banking77' / f'{split}.jsonl'}': every \"label\" is "
                               f"{one[0]['label']!r}: Banking77Classification needs at least 2 classes to tell apart")


@needs_datasets
def test_a_folder_name_with_control_characters_is_escaped(tmp_path: Path) -> None:
    data = tmp_path / "da\x1bta"
    write_rows(data / "sts16" / "test.jsonl", [{**r, "score": 1.0} for r in real_rows("sts16", "test", 3)])
    with pytest.raises(UserError) as info:
        load_task("STS16", data)
    assert "da\\x1bta" in str(info.value) and "\x1b" not in str(info.value)


# -- a run: the degenerate task fails with why, the others run, results stay strict JSON --------------------------------

@pytest.mark.slow
@needs_datasets
def test_a_run_fails_degenerate_tasks_with_why_and_keeps_the_others(tmp_path: Path) -> None:
    """Through the real model: STS16's gold scores never vary and Banking77's training split is of one class
    (both refused as they load); JSTS is sound, but the model's vectors are made all the same (a collapsed
    model's: its main score is NaN). Each fails, saying why, and no results file is written; what a
    snapshot holds of each is strict JSON."""
    from embprof.engine.context import RunContext
    from embprof.engine.events import EventBus, Note
    from embprof.engine.plan import LocalTarget, MtebPlan
    from embprof.engine.targets import SentenceTransformerTarget
    from embprof.engine.workloads.mteb_tasks import MtebWorkload, TasksFailed

    data = tmp_path / "data"
    write_rows(data / "sts16" / "test.jsonl", [{**r, "score": 4.0} for r in real_rows("sts16", "test", 6)])
    banking(data, train=real_rows("banking77", "train", 6))
    write_rows(data / "jsts" / "validation.jsonl", real_rows("jsts", "validation", 12))
    seen: list[Any] = []
    bus = EventBus()
    bus.subscribe(seen.append)
    ctx = RunContext(bus)
    target = SentenceTransformerTarget(LocalTarget(device="cpu"))
    target.load(ctx)
    results = tmp_path / "results"
    workload = MtebWorkload(MtebPlan(tasks=("STS16", "Banking77Classification", "JSTS"), data_dir=str(data), results_dir=str(results)))
    # The hook a matrix cell maps its output precision with, here standing in for a collapsed model's output.
    workload.transform = lambda vectors: np.ones_like(np.asarray(vectors, dtype=np.float32))
    with pytest.raises(TasksFailed) as info:
        workload.run(ctx, target)
    assert "3 of 3 tasks failed" in str(info.value)
    outcome = {t.task: t for t in workload.outcomes}
    assert all(t.status == "failed" and t.main_score is None and t.results_file is None for t in outcome.values())
    assert "every gold score is 4: a correlation with scores that never vary is undefined" in (outcome["STS16"].error or "")
    assert "needs at least 2 classes to tell apart" in (outcome["Banking77Classification"].error or "")
    assert outcome["JSTS"].error == ("mteb's main score (cosine_spearman) is NaN: the model's similarities never varied across the "
                                     "texts, and a correlation with a constant is undefined; no results file was written")
    assert not [p for p in results.rglob("*.json") if p.name != "model_meta.json"]
    notes = [e.text for e in seen if isinstance(e, Note)]
    assert any(n.startswith("JSTS failed: mteb's main score") for n in notes), notes
    for t in outcome.values():
        strict_json(t.model_dump_json())


@needs_datasets
def test_a_score_that_is_not_a_number_is_null_in_the_results_file(tmp_path: Path) -> None:
    """mteb writes a NaN score as a bare ``NaN`` (json.dump's default), which is not JSON: embprof's results
    file has null there, says where, and is otherwise mteb's own file, byte for byte."""
    import mteb
    from mteb.results import TaskResult

    from embprof.engine.mteb_bridge import write_task_result

    task = mteb.get_task("STS16")
    scores = {"main_score": 0.5, "cosine_spearman": 0.5, "cosine_pearson": float("nan"), "manhattan_pearson": float("inf")}
    result = TaskResult.from_task_results(task, {"test": {"default": scores}}, evaluation_time=1.0)
    meta = mteb.models.ModelMeta.create_empty(overwrites={"name": "local/model", "revision": "no_revision_available"})
    path, nulled = write_task_result(result, meta, tmp_path)
    data = strict_json(path.read_text(encoding="utf-8"))
    row = data["scores"]["test"][0]
    assert row["cosine_pearson"] is None and row["manhattan_pearson"] is None and row["main_score"] == 0.5
    assert nulled == ["scores.test[0].cosine_pearson", "scores.test[0].manhattan_pearson"]
    assert TaskResult.from_disk(path).get_score() == 0.5  # mteb reads it back
    strict_json((path.parent / "model_meta.json").read_text(encoding="utf-8"))
    # A sound result is written as mteb writes it.
    sound = TaskResult.from_task_results(task, {"test": {"default": {**scores, "cosine_pearson": 0.4, "manhattan_pearson": 0.3}}},
                                         evaluation_time=1.0)
    path, nulled = write_task_result(sound, meta, tmp_path / "sound")
    mine = tmp_path / "theirs.json"
    sound.to_disk(mine)
    assert nulled == [] and path.read_bytes() == mine.read_bytes()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_vectors_that_are_not_numbers_are_refused_before_mteb_scores_them(bad: float) -> None:
    """A diverged model's vectors: mteb's scorers would fail inside scikit-learn ("Input contains NaN")."""
    from embprof.engine.mteb_bridge import check_finite

    vectors = np.ones((12, 384), dtype=np.float32)
    check_finite(vectors, "validation")
    vectors[3, :10] = bad
    with pytest.raises(UserError) as info:
        check_finite(vectors, "validation")
    assert str(info.value) == ("10 of the 4,608 embedding values the model gave for the validation texts are NaN or infinite: "
                               "mteb cannot score them, and no results file was written")
    check_finite(np.zeros((4, 8), dtype=np.int8), "validation")  # a quantized output is whole numbers


def test_finite_or_null_walks_every_container() -> None:
    from embprof.engine.results import finite_or_null

    clean, where = finite_or_null({"a": [1.0, float("nan"), {"b": np.float32("inf")}], "c": (2, -math.inf), "d": "NaN", "e": True})
    assert clean == {"a": [1.0, None, {"b": None}], "c": (2, None), "d": "NaN", "e": True}
    assert where == ["a[1]", "a[2].b", "c[1]"]


# -- training data a loss learns nothing from: refused before anything loads ----------------------------------------------

@pytest.mark.parametrize("rows, extra, says", [
    ([{"sentence1": f"a {i}", "sentence2": f"b {i}", "score": 3.0} for i in range(6)], [],
     "every \"score\" is 3: CoSENTLoss learns from which of two pairs scores higher, and these never differ"),
    ([{"sentence1": "a", "sentence2": "b", "score": 3.0}], [],
     "has 1 scored pair: CoSENTLoss learns from which of two pairs scores higher; give at least 2 with different scores"),
    ([{"sentence1": f"a {i}", "sentence2": f"b {i}", "score": 1.0 + (i > 1)} for i in range(6)], ["--max-examples", "2"],
     "every \"score\" is 1 (the first 2 that --max-examples keeps)"),
    ([{"anchor": "a", "positive": "b"}], [],
     "has 1 example: MultipleNegativesRankingLoss takes the other rows of a batch as negatives, and one example has none"),
])
def test_training_data_a_loss_learns_nothing_from_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch, rows: list[dict[str, Any]],
                                                             extra: list[str], says: str) -> None:
    monkeypatch.setenv("EMBPROF_PROFILES_DIR", str(tmp_path / "profiles"))
    monkeypatch.chdir(tmp_path)
    path = write_rows(tmp_path / "train.jsonl", rows)
    rc, out, err = run_cli_in_process(["train", "--train-file", str(path), "--device", "cpu", *extra], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and out == "" and len(lines) == 1, (rc, err)
    assert lines[0].startswith(f"embprof: error: training file '{path}'") and says in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.jsonl"]  # no profiles, no trained model


# -- a snapshot holding NaN: refused, never carried into an export as a bare NaN ---------------------------------------

@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_a_snapshot_holding_a_figure_that_is_not_a_number_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                    literal: str) -> None:
    """embprof writes a figure it did not measure as null; a NaN literal (which Python's reader takes) in a
    snapshot was put there elsewhere, and would come out of ``compare --format json`` as a bare NaN."""
    from fake_engine import recorded_run

    from embprof.engine.snapshot import build, to_json

    _, rec = recorded_run()
    text = to_json(build(rec, {"hostname": "h"}))
    sound = tmp_path / "a.json"
    sound.write_text(text, encoding="utf-8")
    assert text.count('"mean_s": 0.002') >= 1
    bad = tmp_path / "b.json"
    bad.write_text(text.replace('"mean_s": 0.002', f'"mean_s": {literal}', 1), encoding="utf-8")
    out_file = tmp_path / "c.json"
    for args in (["compare", str(sound), str(bad), "--format", "json", "-o", str(out_file)], ["show", str(bad)]):
        rc, out, err = run_cli_in_process(args, capsys)
        lines = [line for line in err.splitlines() if line.strip()]
        assert rc == 2 and out == "" and len(lines) == 1, (rc, err)
        assert lines[0] == (f"embprof: error: snapshot '{bad}' is damaged: summary.calls[0].stats.mean_s is NaN or infinite, "
                            "which JSON does not allow (embprof writes a figure it did not measure as null)")
    assert not out_file.exists()
    rc, out, err = run_cli_in_process(["compare", str(sound), str(sound), "--format", "json"], capsys)
    assert rc == 0 and strict_json(out)
