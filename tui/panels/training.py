"""Training: a fine-tuning run's steps (loss, step time and its parts, memory per step) and what
training did to the evaluations, before and after.

Every figure of the header is the engine's fold (``RunState.training``), over every step of the run;
the charts draw the view's bounded buffer of the latest steps; the before/after table is the engine's
``evaluation_changes`` over the results so far, so it fills in as the evaluations end.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from embprof.engine.events import TrainStep
from embprof.engine.fold import TrainingSummary
from embprof.engine.neighbours import (
    evaluation_changes,
    planned_evaluations,
    training_result,
)
from embprof.engine.plan import TrainPlan
from embprof.engine.results import EvalChange, MtebTask, NeighbourScore, TrainResult
from embprof.engine.text import one_line
from rich.table import Table as RichTable
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Container
from textual.widgets import Static

from ..view import RunView
from .base import Panel, Plot, mib, put, secs, thin
from .latency import rate

NO_TRAINING = "No training in this run: start one with n → workload train, or `embprof train`."
PART_COLOURS = {"data": "gray", "forward": "green", "backward": "orange", "optimizer": "magenta"}  # plotext's names
PART_STYLES = {"data": "grey62", "forward": "green", "backward": "dark_orange", "optimizer": "magenta"}  # Rich's, the same colours
PART_FIELDS = (("data", "data_ns"), ("forward", "forward_ns"), ("backward", "backward_ns"), ("optimizer", "optimizer_ns"))
MEMORY_SERIES = (("rss_mib", "RSS at step end", "cyan"), ("torch_peak_allocated_mib", "torch peak allocated", "yellow"),
                 ("torch_peak_reserved_mib", "torch peak reserved", "orange"), ("gpu_process_mib", "GPU this process", "red"))


def has_training(view: RunView | None) -> bool:
    """The run on display trains (or is planned to): the dashboard gives it the Training panel."""
    return view is not None and view.training


def steps_planned(view: RunView, result: TrainResult | None) -> int | None:
    """The steps the run will take: the trainer's own count (in the training result, or with each
    step), else the ``max_steps`` it was given (the trainer stops there whatever the epochs), else unknown."""
    if result is not None:
        return result.steps_planned
    last = view.steps[-1] if view.steps else None
    planned = getattr(last, "steps_planned", None) if last is not None else None
    if isinstance(planned, int):
        return planned
    train = _train_plan(view)
    return train.max_steps if train is not None else None


def epochs_planned(view: RunView) -> float | None:
    train = _train_plan(view)
    return train.epochs if train is not None and train.max_steps is None else None


def _train_plan(view: RunView) -> TrainPlan | None:
    plan = view.plan or view.run.plan
    return plan.workload if plan is not None and isinstance(plan.workload, TrainPlan) else None


def read(attr: str, scale: float = 1.0) -> Callable[[TrainStep], float | None]:
    """A step's figure by name, scaled; None (not measured) stays None."""
    def value(e: TrainStep) -> float | None:
        got = getattr(e, attr)
        return None if got is None else float(got) * scale
    return value


def score(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def number(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def figure(label: str, value: str, style: str = "bold") -> Text:
    return Text.assemble((f"{label} ", "dim"), (value, style if value != "n/a" else ""))


class TrainingPanel(Panel):
    panel_title = "Training"
    # A small terminal scrolls the panel (to the table and the saved-to line): from the keyboard too.
    can_focus = True
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "scroll_up", "Scroll up", show=False),
        Binding("down", "scroll_down", "Scroll down", show=False),
        Binding("pageup", "page_up", "Page up", show=False),
        Binding("pagedown", "page_down", "Page down", show=False),
        Binding("home", "scroll_home", "Top", show=False),
        Binding("end", "scroll_end", "Bottom", show=False),
    ]
    # Phases too: while no step has come, the panel says what the run is doing (evaluating before).
    depends_on = ("training", "results", "phases")
    live_interval_s = 2.0
    DEFAULT_CSS = """
    TrainingPanel { overflow-y: auto; }  /* a small terminal scrolls to the table rather than losing it */
    TrainingPanel #training-head { height: auto; }
    TrainingPanel #training-charts { height: 1fr; min-height: 7; layout: horizontal; }
    TrainingPanel #training-charts Plot { width: 1fr; height: 1fr; }
    TrainingPanel #training-evals { height: auto; max-height: 50%; }
    TrainingPanel #training-foot { height: auto; }
    TrainingPanel.-no-steps #training-charts { display: none; }
    TrainingPanel.-none #training-evals { display: none; }
    """

    def compose(self) -> ComposeResult:
        yield Static(id="training-head")
        with Container(id="training-charts"):
            yield Plot(id="training-loss")
            yield Plot(id="training-time")
            yield Plot(id="training-memory")
        yield Static(id="training-evals")
        yield Static(id="training-foot")

    def show(self, view: RunView | None) -> None:
        head = self.query_one("#training-head", Static)
        evals = self.query_one("#training-evals", Static)
        foot = self.query_one("#training-foot", Static)
        if view is None or not has_training(view):
            self.set_class(True, "-no-steps")
            self.set_class(True, "-none")
            put(head, Text(NO_TRAINING, style="dim"), "none")
            put(evals, "", "none")
            put(foot, "", "none")
            return
        self.set_class(False, "-none")
        result = training_result(view.run.results)
        summary = view.run.training.summary() if view.run.training is not None else None
        self.set_class(summary is None, "-no-steps")
        put(head, self._head(view, summary, result), ("head", summary is not None))
        self._draw_charts(view, summary)
        table, rows = self._evaluations(view)
        put(evals, table, ("evals", rows))
        lines = self._foot(view, result)
        put(foot, Text("\n").join(lines), ("foot", len(lines)))

    # -- the figures ---------------------------------------------------------------------------------
    def _head(self, view: RunView, s: TrainingSummary | None, result: TrainResult | None) -> Text:
        """Three short lines (a narrow tab has 76 columns and few rows): progress and speed; loss and
        memory; where a step's time goes."""
        total = steps_planned(view, result)
        if s is None:
            return Text("no training step yet" + (f" · {total:,} steps planned" if total is not None else ""), style="dim")
        gap = Text("  ")
        epochs = epochs_planned(view)
        done = s.last_step if s.last_step is not None else s.steps
        first = gap.join([
            Text.assemble(("step ", "dim"), (f"{done:,}", "bold"), (f"/{total:,}" if total is not None else "/?", "dim")),
            Text.assemble(("epoch ", "dim"), (number(s.epoch, 2), "bold"), (f"/{epochs:g}" if epochs is not None else "", "dim")),
            rate(s.samples_per_s, "samples/s", "no step timed", 1),
            rate(s.tokens_per_s, "tokens/s", "not counted"),
            figure("lr", "n/a" if s.last_learning_rate is None else f"{s.last_learning_rate:.2e}"),
        ])
        second = [figure("loss", score(s.last_loss)),
                  Text.assemble(("min ", "dim"), (score(s.min_loss.value), ""),
                                (f" (step {s.min_loss.step:,})" if s.min_loss.step is not None else "", "dim"))]
        # Memory per step: RSS always (n/a when not read); torch and GPU only where the run had them.
        for label, peak in (("peak RSS at step end", s.rss_at_step_end), ("torch peak", s.torch_allocated),
                            ("GPU process", s.gpu_process)):
            if peak.value is None and label != "peak RSS at step end":
                continue
            second.append(Text.assemble((f"{label} ", "dim"), (mib(peak.value), "bold" if peak.value is not None else ""),
                                        (f" (step {peak.step:,})" if peak.step is not None else "", "dim")))
        third = [Text.assemble(("step mean ", "dim"), (secs(s.step.mean_s), "bold"), (":", "dim"))]
        for part in s.parts:
            share = "n/a" if part.share_percent is None else f"{part.share_percent:.0f}%"
            third.append(Text.assemble((f"{part.part} ", "dim"), (share, PART_STYLES.get(part.part, ""))))
        unsplit = (result.unsplit if result is not None and result.unsplit else "") or ", ".join(s.unsplit)
        if unsplit:
            third.append(Text(f"(not timed apart: {one_line(unsplit)})", style="dim"))
        return Text("\n").join([first, gap.join(second), gap.join(third)])

    def _evaluations(self, view: RunView) -> tuple[RichTable | Text, int]:
        results = view.run.results
        rows = evaluation_changes(results)
        # Planned evaluations not yet measured on either side: a row each, so the table says what is to come.
        seen = {r.evaluation for r in rows}
        planned = list(planned_evaluations(results))
        train = _train_plan(view)
        files = train.neighbours if train is not None else ()
        planned += [f"neighbours {name}" for name in files]
        for name in planned:
            if name not in seen:
                seen.add(name)
                rows.append(EvalChange(evaluation=name, metric="", before=None, after=None, change=None, regressed=None))
        if not rows:
            return Text("no evaluation before or after (give MTEB tasks or labelled files to measure what training changed)",
                        style="dim"), 0
        pending = "…" if view.running else "n/a"  # not measured yet, or never
        table = RichTable(box=None, pad_edge=False, show_edge=False, header_style="dim", expand=True)
        # One line a row where it can: a name folds (it is read whole), the metric is cut short (its kind shows).
        table.add_column("evaluation", ratio=2, overflow="fold")
        table.add_column("metric", ratio=1, no_wrap=True, overflow="ellipsis", style="dim")
        for col in ("before", "after", "change"):
            table.add_column(col, justify="right", no_wrap=True)
        table.add_column("", no_wrap=True)
        table.add_column("chance", justify="right", no_wrap=True, style="dim")  # random neighbours' score, for scale
        for row in rows:
            table.add_row(
                Text(one_line(row.evaluation)),  # a task or file name is data: never markup
                Text(one_line(row.metric) if row.metric else pending),
                self._side(results, row.evaluation, "before", row.before, pending),
                self._side(results, row.evaluation, "after", row.after, pending),
                Text(pending, style="dim") if row.change is None else Text(f"{row.change:+.4f}"),
                self._verdict(row),
                Text(score(row.chance)) if row.chance is not None else Text(""),
            )
        return table, len(rows)

    @staticmethod
    def _side(results: dict[str, Any], evaluation: str, stage: str, value: float | None, pending: str) -> Text:
        if value is not None:
            return Text(score(value))
        if evaluation.startswith("neighbours "):
            found: Any = results.get(f"neighbours:{stage}:{evaluation.removeprefix('neighbours ')}")
            if isinstance(found, NeighbourScore) and found.accuracy is None:
                return Text("not finite", style="bold red")  # the model's vectors held NaN: no score, and not 0
            return Text(pending, style="dim")
        found = results.get(f"mteb:{stage}:{evaluation}")
        if isinstance(found, MtebTask) and found.status != "ok":
            return Text(found.status, style="bold red" if found.status == "failed" else "yellow")
        return Text(pending, style="dim")

    @staticmethod
    def _verdict(row: EvalChange) -> Text:
        if row.regressed:
            return Text("▼ regressed", style="bold red")
        if row.change is None:
            return Text("")
        if row.change > 0:
            return Text("▲ better", style="green")
        return Text("= same", style="dim")

    def _foot(self, view: RunView, result: TrainResult | None) -> list[Text]:
        lines: list[Text] = []
        if result is not None:
            lines.append(Text.assemble(
                ("trained on ", "dim"), (f"{result.examples:,}", "bold"), (f" of {result.rows_in_file:,} rows of ", "dim"),
                (one_line(result.train_file), ""), (f" ({result.data_format}, ", "dim"), (one_line(result.loss), ""), (")", "dim"),
            ))
            if result.saved_to:
                lines.append(Text.assemble(("model saved to ", "dim"), (one_line(result.saved_to), "bold green")))
            else:
                lines.append(Text.assemble(("model not saved: ", "bold yellow"), (one_line(result.not_saved_why or "no reason given"), "")))
        elif view.finished or not view.running:
            lines.append(Text("model: n/a (the run ended without a training result)", style="dim"))
        innermost = view.run.open_phases[-1] if view.run.open_phases else None
        if innermost is not None and view.running:
            lines.append(Text.assemble(("now: ", "dim"), (one_line(innermost.path or innermost.name), "bold")))
        return lines

    # -- the charts ----------------------------------------------------------------------------------
    def _draw_charts(self, view: RunView, s: TrainingSummary | None) -> None:
        steps = list(view.steps)
        xs = [float(e.step) for e in steps]
        # Shown steps only: a day-long run's charts keep the latest MAX_STEPS_KEPT.
        kept = f" (last {len(steps):,})" if s is not None and s.steps > len(steps) else ""
        loss = self.query_one("#training-loss", Plot)
        self._chart(loss, f"loss by step{kept}", steps, xs, [("loss", "loss", "cyan", lambda e: e.loss)])
        timing = self.query_one("#training-time", Plot)
        series: list[tuple[str, str, str, Callable[[TrainStep], float | None]]] = [
            ("step", "step", "cyan", lambda e: e.duration_ns / 1e6)]
        series += [(part, part, PART_COLOURS[part], read(attr, 1e-6)) for part, attr in PART_FIELDS]
        self._chart(timing, f"step time (ms) by step{kept}", steps, xs, series)
        memory = self.query_one("#training-memory", Plot)
        self._chart(memory, f"MiB by step{kept}", steps, xs, [(name, label, colour, read(name)) for name, label, colour in MEMORY_SERIES])

    @staticmethod
    def _chart(plot: Plot, title: str, steps: list[TrainStep], xs: list[float],
               series: list[tuple[str, str, str, Callable[[TrainStep], float | None]]]) -> None:
        p = plot.plt
        p.clear_figure()
        limit = 2 * max(20, plot.size.width)  # braille: two points a cell
        drawn = False
        for _name, label, colour, value in series:
            pts = [(x, v) for x, v in ((x, value(e)) for x, e in zip(xs, steps)) if v is not None]
            if not pts:
                continue  # not measured: no line at 0
            drawn = True
            p.plot(*thin([a for a, _ in pts], [b for _, b in pts], limit), label=label if len(series) > 1 else None,
                   color=colour, marker="braille")
        p.title(title if drawn else f"{title}: n/a")
        plot.changed()
