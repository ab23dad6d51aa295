"""The dashboard's Training panel and the form's train workload, against an injected training run.

The run is scripted (no model is loaded): an evaluation before, eight timed steps, an evaluation after
in which one MTEB task falls and one labelled file is not measured, and the training result. Outside
text (a labelled file's name, the folder the model went to) carries Rich markup, which must be shown
as it is, never read.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import fake_engine
import pytest
from embprof.engine.events import (
    Event,
    Note,
    PhaseEnded,
    PhaseStarted,
    Result,
    RunFinished,
    RunStarted,
    Subscriber,
    TrainStep,
)
from embprof.engine.plan import RunPlan, TrainPlan, plan_from_options
from embprof.engine.results import (
    KernelCounters,
    MtebRun,
    MtebTask,
    NeighbourScore,
    TargetFacts,
    TrainResult,
)
from embprof.engine.workload_facts import TrainFacts
from embprof.tui.app import EmbprofApp
from embprof.tui.panels import TrainingPanel
from embprof.tui.screens import RunForm
from fake_engine import MS, sample, target_facts
from pilot_helpers import finished, text_of, until
from textual.widgets import Input, Select, Static, Tab

MARKUP_FILE = "[red]x[/red].jsonl"  # a labelled file whose name is Rich markup
SAVED_TO = "trained/[bold]minilm[/bold]-run"
STEPS = 8
LOSSES = (1.20, 1.05, 0.93, 0.88, 0.80, 0.74, 0.71, 0.69)
BEFORE = {"STSBenchmark": 0.8123, "JSTS": 0.7012}
AFTER = {"STSBenchmark": 0.8456, "JSTS": 0.6890}  # JSTS falls: the one regression
NEIGHBOURS_BEFORE = {MARKUP_FILE: 0.6100, "banking77.jsonl": 0.5500}
NEIGHBOURS_AFTER = {MARKUP_FILE: 0.7400}  # banking77.jsonl is never measured after: n/a


def train_plan(**extra: Any) -> RunPlan:
    return plan_from_options({"workload": "train", "train_file": "pairs.jsonl", "tasks": list(BEFORE), "max_steps": STEPS,
                              "neighbours": list(NEIGHBOURS_BEFORE), **extra})


def neighbour(stage: str, name: str, accuracy: float) -> NeighbourScore:
    return NeighbourScore(stage=stage, name=name, items=200, labels=4, k=5, distance="cosine", accuracy=accuracy,  # type: ignore[arg-type]
                          chance=0.25, seconds=0.4)


def evaluation(stage: str, t: int, scores: dict[str, float], neighbours: dict[str, float], pid: int) -> tuple[list[Event], int]:
    ev: list[Event] = [PhaseStarted(t_ns=t, phase_id=pid, name=f"evaluation {stage}", detail="")]
    if stage == "before":
        ev.append(Result(t_ns=t, result=MtebRun(tasks=tuple(BEFORE), model_name="fake/minilm", revision=None, results_dir="results",
                                                stage="before")))
    for task, value in scores.items():
        t += 300 * MS
        ev.append(Result(t_ns=t, result=MtebTask(task=task, status="ok", type="STS", main_score_name="cosine_spearman",
                                                 main_score=value, seconds=0.3, stage=stage)))  # type: ignore[arg-type]
    for name, value in neighbours.items():
        t += 100 * MS
        ev.append(Result(t_ns=t, result=neighbour(stage, name, value)))
    ev.append(PhaseEnded(t_ns=t, phase_id=pid, name=f"evaluation {stage}", duration_ns=MS))
    return ev, t


def steps(t: int, pid: int, planned: int | None, last: int = STEPS) -> tuple[list[Event], int]:
    ev: list[Event] = [PhaseStarted(t_ns=t, phase_id=pid, name="training", detail="128 scored pairs · CoSENTLoss · batch 16")]
    for i, loss in enumerate(LOSSES[:last], 1):
        ms = 300 + 10 * i
        t += ms * MS
        ev.append(sample(t, 500.0 + 5 * i))
        ev.append(TrainStep(t_ns=t, phase_id=pid, step=i, steps_planned=planned, epoch=i / STEPS, samples=16, tokens=16 * 40, loss=loss,
                            learning_rate=2e-5 * (1 - i / STEPS) or 1e-7, duration_ns=ms * MS, data_ns=10 * MS, forward_ns=100 * MS,
                            backward_ns=(ms - 140) * MS, optimizer_ns=30 * MS, rss_mib=500.0 + 5 * i, max_rss_mib=520.0 + 5 * i,
                            max_rss_rose=True))
    ev.append(PhaseEnded(t_ns=t, phase_id=pid, name="training", duration_ns=MS))
    return ev, t


def train_result(stopped_at: int | None = None) -> TrainResult:
    if stopped_at is not None:
        return train_result().model_copy(update={
            "steps_done": stopped_at, "stopped": True, "saved_to": None,
            "not_saved_why": f"stopped after step {stopped_at} of {STEPS}: a partly trained model is not saved"})
    return TrainResult(train_file="pairs.jsonl", data_format="scored pairs", columns=("sentence1", "sentence2", "score"), rows_in_file=500,
                       examples=128, loss="CoSENTLoss", loss_chosen="to fit the data", batch_sampler="NO_DUPLICATES", epochs=1.0,
                       max_steps=STEPS, steps_planned=STEPS, steps_done=STEPS, epochs_done=1.0, batch_size=16, learning_rate=2e-5,
                       warmup_ratio=0.1, seed=42, prompt=None, saved_to=SAVED_TO)


def scripted_training(planned: int | None = STEPS, stopped_at: int | None = None) -> tuple[list[Event], int]:
    """The events of a training run, and where the gated runner pauses (after the steps, before the evaluation after).
    ``planned``: the steps each step says the trainer will take (None: not said). ``stopped_at``: the user
    stopped the run after that step (no evaluation after, no model saved)."""
    ev: list[Event] = [
        RunStarted(t_ns=0, run_id="20260101T000000Z-train1", started_utc="2026-01-01T00:00:00+00:00",
                   target=TargetFacts(model_name="fake/minilm", backend="sentence-transformers", device="cpu", dtype="float32"),
                   workload=TrainFacts(), sample_hz=10.0, plan=train_plan()),
        Note(t_ns=1, text="host-only sampling: NVML unavailable (fake); GPU columns are N/A"),
        PhaseStarted(t_ns=10 * MS, phase_id=1, name="load", detail="fake/minilm"),
        sample(200 * MS, 450.0),
        PhaseEnded(t_ns=200 * MS, phase_id=1, name="load", duration_ns=190 * MS),
        Result(t_ns=200 * MS, result=target_facts()),
    ]
    more, t = evaluation("before", 200 * MS, BEFORE, NEIGHBOURS_BEFORE, 2)
    ev += more
    more, t = steps(t, 3, planned, stopped_at or STEPS)
    ev += more
    pause = len(ev)
    if stopped_at is None:
        more, t = evaluation("after", t, AFTER, NEIGHBOURS_AFTER, 4)
        ev += more
    ev += [
        Result(t_ns=t, result=train_result(stopped_at)),
        Result(t_ns=t + MS, result=KernelCounters(ru_maxrss_mib=600.0)),
        RunFinished(t_ns=t + 2 * MS, status="complete" if stopped_at is None else "incomplete", duration_ns=t + 2 * MS),
    ]
    return ev, pause


def training_runner(subscribers: list[Subscriber], plan: RunPlan, gate: threading.Event | None,
                    stopped_at: int | None = None) -> fake_engine.FakeRunner:
    """Plays the training run; with ``gate`` it holds at the pause until the test sets the gate (the run still
    going on)."""
    # Gated, the steps do not say how many are planned: the panel takes the run's max steps.
    events, pause = scripted_training(None if gate is not None else STEPS, stopped_at)
    return fake_engine.FakeRunner(events, subscribers, hold=gate is not None, plan=plan, hold_at=pause, release=gate)


def training_app(tmp_path: Path, *, plan: RunPlan | None = None, gate: threading.Event | None = None, stopped_at: int | None = None,
                 **kw: Any) -> EmbprofApp:
    """The dashboard whose runs play the scripted training run (pilot_helpers.make_app's play an encode run)."""
    return EmbprofApp(plan or train_plan(), profiles_dir=tmp_path / "profiles", clock=lambda: 100.0,
                      runner_factory=lambda p, subs: training_runner(subs, p, gate, stopped_at), **kw)


def line_of(text: str, start: str) -> str:
    found = [line for line in text.splitlines() if line.strip().startswith(start)]
    assert len(found) == 1, text
    return found[0]


async def test_a_training_run_opens_on_its_tab_with_its_figures(tmp_path: Path) -> None:
    app = training_app(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await finished(app, pilot, redraw=True)
        assert app.query_one("#tab-training", Tab).label.plain == "Training"
        assert app.active_panel == "training"
        assert [p.id for p in app.query("#panels > Panel") if p.display] == ["training"]
        view = app.current
        assert view is not None and view.run.training is not None and len(view.steps) == STEPS
        s = view.run.training.summary()
        head = text_of(app, "#training-head")
        assert f"step {STEPS}/{STEPS}" in head
        assert "epoch 1.00" in head
        assert f"{s.samples_per_s:,.1f} samples/s" in head and f"{s.tokens_per_s:,.0f} tokens/s" in head
        assert f"loss {LOSSES[-1]:.4f}" in head and f"lr {s.last_learning_rate:.2e}" in head
        assert f"step mean {s.step.mean_s * 1000:,.1f} ms" in head
        for part in s.parts:
            assert f"{part.part} {part.share_percent:.0f}%" in head
        assert f"min {min(LOSSES):.4f} (step {STEPS})" in head
        assert f"peak RSS at step end {500.0 + 5 * STEPS:,.1f} MiB (step {STEPS})" in head
        assert "torch" not in head and "GPU" not in head  # not measured on this run: left out, never 0
        await pilot.press("1")
        await pilot.press("6")  # the tab's key
        assert app.active_panel == "training"


async def test_the_before_after_table_marks_the_regression(tmp_path: Path) -> None:
    app = training_app(tmp_path)
    async with app.run_test(size=(160, 40)) as pilot:
        await finished(app, pilot, redraw=True)
        table = text_of(app, "#training-evals", width=160)
        sts = line_of(table, "STSBenchmark")
        assert "cosine_spearman" in sts and "0.8123" in sts and "0.8456" in sts and "+0.0333" in sts and "▲ better" in sts
        assert "regressed" not in sts
        jsts = line_of(table, "JSTS")
        assert "0.7012" in jsts and "0.6890" in jsts and "-0.0122" in jsts and "▼ regressed" in jsts
        # A file name with markup is shown as it is, in the table and in the saved-to line.
        marked = line_of(table, f"neighbours {MARKUP_FILE}")
        assert "top-5 neighbour accuracy (cosine)" in marked and "0.6100" in marked and "0.7400" in marked and "+0.1300" in marked
        unmeasured = line_of(table, "neighbours banking77.jsonl")
        assert "0.5500" in unmeasured and unmeasured.count("n/a") == 2 and "…" not in unmeasured and "regressed" not in unmeasured
        assert table.count("regressed") == 1
        foot = text_of(app, "#training-foot")
        assert f"model saved to {SAVED_TO}" in foot
        assert "trained on 128 of 500 rows of pairs.jsonl (scored pairs, CoSENTLoss)" in foot
        # The mark is red, as the reader's eye looks for it.
        evals = app.query_one("#training-evals", Static).content
        cells = [c for col in evals.columns for c in col.cells if str(c) == "▼ regressed"]
        assert len(cells) == 1 and "red" in str(cells[0].style)


async def test_while_the_run_goes_on_an_unmeasured_side_is_pending(tmp_path: Path) -> None:
    gate = threading.Event()
    app = training_app(tmp_path, gate=gate)
    async with app.run_test(size=(160, 40)) as pilot:
        await until(pilot, lambda: app.current is not None and app.current.run.training is not None
                    and app.current.run.training.steps == STEPS)
        await pilot.pause(0.5)
        app.redraw(force=True)
        await pilot.pause(0.2)
        assert app.active_panel == "training"
        # No training result yet: the steps planned come from the run's settings (max steps).
        assert f"step {STEPS}/{STEPS}" in text_of(app, "#training-head")
        table = text_of(app, "#training-evals", width=160)
        jsts = line_of(table, "JSTS")
        assert "0.7012" in jsts and "…" in jsts and "n/a" not in jsts and "regressed" not in jsts
        assert "model" not in text_of(app, "#training-foot")  # not saved yet, and not said to be unsaved
        gate.set()
        await finished(app, pilot, redraw=True)
        table = text_of(app, "#training-evals", width=160)
        assert "…" not in table and "▼ regressed" in line_of(table, "JSTS")


async def test_a_stopped_run_says_why_its_model_was_not_saved(tmp_path: Path) -> None:
    app = training_app(tmp_path, stopped_at=5)
    async with app.run_test(size=(160, 40)) as pilot:
        await finished(app, pilot, redraw=True)
        assert app.current is not None and app.current.state == "stopped"
        assert "step 5/8" in text_of(app, "#training-head")
        foot = text_of(app, "#training-foot")
        assert "model not saved: stopped after step 5 of 8: a partly trained model is not saved" in foot and "saved to" not in foot
        table = text_of(app, "#training-evals", width=160)
        assert line_of(table, "JSTS").count("n/a") == 2 and "regressed" not in table  # never measured after: n/a, no verdict
        # The next run, not a training one, opens on the Latency panel rather than on this panel's hint.
        app.runner_factory = fake_engine.factory()
        app.start_run(RunPlan())
        await until(pilot, lambda: app.current is not None and app.current.workload_name == "encode")
        assert app.active_panel == "latency" and not app.screen.has_class("-training")


async def test_a_training_snapshot_opens_on_the_training_tab(tmp_path: Path) -> None:
    app = training_app(tmp_path)
    async with app.run_test(size=(160, 40)) as pilot:
        await finished(app, pilot, redraw=True)
        live = app.current
        assert live is not None
        live_head, live_table = text_of(app, "#training-head"), text_of(app, "#training-evals")
        await pilot.press("1")
        app.open_snapshot(Path(live.snapshot_path or ""))
        await until(pilot, lambda: app.current is not live and app.current is not None)
        app.redraw(force=True)
        await pilot.pause(0.3)
        assert app.current is not None and app.current.source == "snapshot"
        assert app.active_panel == "training"
        assert text_of(app, "#training-head") == live_head
        assert text_of(app, "#training-evals") == live_table


async def test_wide_layout_gives_a_training_run_the_latency_cell(tmp_path: Path) -> None:
    app = training_app(tmp_path)
    async with app.run_test(size=(200, 50)) as pilot:
        await finished(app, pilot, redraw=True)
        await pilot.pause(0.2)
        assert app.screen.has_class("wide") and app.screen.has_class("-training")
        shown = {p.id for p in app.query("#panels > Panel") if p.display}
        assert shown == {"training", "memory", "cpu", "runs"}
        training, memory, runs = app.query_one("#training"), app.query_one("#memory"), app.query_one("#runs")
        # The top row's first two cells (Latency's and the one beside it), Memory at the top right, Runs wide below.
        assert training.region.x == 0 and training.region.y == memory.region.y and training.size.height == memory.size.height
        assert training.size.width > 1.8 * memory.size.width and memory.region.x > training.region.right - 1
        assert runs.region.y > training.region.bottom - 1 and runs.size.width > memory.size.width
        assert "▼ regressed" in line_of(text_of(app, "#training-evals"), "JSTS")  # one line a row in that cell


async def test_other_runs_keep_the_layout_and_the_tab_says_how_to_train(tmp_path: Path) -> None:
    app = EmbprofApp(RunPlan(), profiles_dir=tmp_path / "profiles", clock=lambda: 100.0, runner_factory=fake_engine.factory())
    async with app.run_test(size=(200, 50)) as pilot:
        await until(pilot, lambda: app.current is not None and app.current.finished)
        await pilot.pause(0.2)
        assert not app.screen.has_class("-training")
        assert {p.id for p in app.query("#panels > Panel") if p.display} == {"latency", "memory", "cpu", "scores", "runs"}
    app = EmbprofApp(RunPlan(), profiles_dir=tmp_path / "profiles", clock=lambda: 100.0, runner_factory=fake_engine.factory())
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.current is not None and app.current.finished)
        assert app.active_panel == "latency"
        await pilot.press("6")
        await pilot.pause(0.3)
        assert [p.id for p in app.query("#panels > Panel") if p.display] == ["training"]
        assert "No training in this run: start one with n → workload train" in text_of(app, "#training-head")
        assert not app.query_one(TrainingPanel).query_one("#training-charts").display


async def test_form_builds_a_train_plan(tmp_path: Path) -> None:
    app = training_app(tmp_path, plan=RunPlan(), autostart=False)
    async with app.run_test(size=(120, 50)) as pilot:
        await pilot.press("n")
        await pilot.pause(0.2)
        form = app.screen
        assert isinstance(form, RunForm)
        assert not form.query_one("#f-train-file", Input).display and form.query_one("#f-file", Input).display
        form.query_one("#f-workload", Select).value = "train"
        await pilot.pause(0.1)
        assert form.query_one("#f-train-file", Input).display and not form.query_one("#f-file", Input).display
        values = {"#f-train-file": "data/[red]pairs[/red].jsonl", "#f-max-examples": "500", "#f-epochs": "2", "#f-max-steps": "40",
                  "#f-batch": "8", "#f-lr": "3e-5", "#f-train-prompt": "task: sentence similarity | query: ", "#f-output": "trained/mine",
                  "#f-tasks": "STSBenchmark, JSTS", "#f-neighbours": "a.jsonl, b c.jsonl", "#f-top-k": "7"}
        for selector, value in values.items():
            form.query_one(selector, Input).value = value
        form.query_one("#f-loss", Select).value = "mnrl"
        form.query_one("#f-distance", Select).value = "euclidean"
        plan = form.plan()
        w = plan.workload
        assert isinstance(w, TrainPlan)
        assert (w.train_file, w.max_examples, w.epochs, w.max_steps, w.batch_size, w.learning_rate) == (
            "data/[red]pairs[/red].jsonl", 500, 2.0, 40, 8, 3e-5)
        assert (w.loss, w.prompt, w.output, w.tasks, w.neighbours, w.top_k, w.distance) == (
            "mnrl", "task: sentence similarity | query: ", "trained/mine", ("STSBenchmark", "JSTS"), ("a.jsonl", "b c.jsonl"), 7, "euclidean")
        assert plan == plan_from_options(form.options())
        # Bad input: the engine's one sentence in the form, no traceback, no run.
        form.query_one("#f-epochs", Input).value = "0"
        await pilot.click("#f-run")
        await pilot.pause(0.2)
        assert app.screen is form
        error = text_of(app, "#form-error")
        assert "--epochs must be a positive number between 0.01 and" in error and "not 0" in error
        form.query_one("#f-epochs", Input).value = "1"
        form.query_one("#f-max-steps", Input).value = "1.5"
        await pilot.click("#f-run")
        await pilot.pause(0.2)
        assert "max steps must be a number, not '1.5'" in text_of(app, "#form-error")
        form.query_one("#f-max-steps", Input).value = ""
        form.query_one("#f-train-file", Input).value = ""
        await pilot.click("#f-run")
        await pilot.pause(0.2)
        assert app.screen is form and text_of(app, "#form-error").strip()


async def test_form_fills_from_a_train_plan_and_its_fields_stay_out_of_other_workloads(tmp_path: Path) -> None:
    app = training_app(tmp_path, plan=train_plan(prompt="query: ", epochs=3.0), autostart=False)
    async with app.run_test(size=(120, 50)) as pilot:
        await pilot.press("n")
        await pilot.pause(0.2)
        form = app.screen
        assert isinstance(form, RunForm) and form.has_class("-train")
        assert form.query_one("#f-train-file", Input).value == "pairs.jsonl"
        assert form.query_one("#f-epochs", Input).value == "3" and form.query_one("#f-max-steps", Input).value == str(STEPS)
        assert form.query_one("#f-neighbours", Input).value == ", ".join(NEIGHBOURS_BEFORE)
        assert form.plan() == app.plan
        # Switched to encode, the training prompt left in its hidden field does not reach the encode's plan.
        form.query_one("#f-workload", Select).value = "encode"
        await pilot.pause(0.1)
        assert not form.has_class("-train")
        plan = form.plan()
        assert plan.workload.name == "encode" and getattr(plan.workload, "prompt", None) is None


@pytest.mark.parametrize("size", [(80, 24)])
async def test_the_train_form_fits_a_small_terminal_by_scrolling(tmp_path: Path, size: tuple[int, int]) -> None:
    app = training_app(tmp_path, autostart=False)
    async with app.run_test(size=size) as pilot:
        await pilot.press("n")
        await pilot.pause(0.3)
        form = app.screen.query_one("#form")
        assert form.region.height <= size[1]
        form.scroll_end(animate=False)
        await pilot.pause(0.2)
        run = app.screen.query_one("#f-run")
        assert form.region.contains_region(run.region)


async def test_the_form_never_offers_the_last_runs_output_folder(tmp_path: Path) -> None:
    # That folder holds the last run's model now: offered again, the next run would be refused at once.
    app = training_app(tmp_path, plan=train_plan(output="trained/last"), autostart=False)
    async with app.run_test(size=(120, 50)) as pilot:
        await pilot.press("n")
        await pilot.pause(0.2)
        form = app.screen
        assert isinstance(form, RunForm) and form.query_one("#f-output", Input).value == ""
        plan = form.plan()
        assert plan.workload.name == "train" and plan.workload.output is None
