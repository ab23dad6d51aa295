"""Training as a workload: sentence-transformers' own trainer, timed per step through its callback
hooks, with the same evaluations before and after.

The trainer is ``SentenceTransformerTrainer`` with its own training loop, untouched. What embprof
adds is measurement:

* a ``TrainerCallback`` marks the step's boundaries (``on_step_begin``, ``on_pre_optimizer_step``,
  ``on_step_end``) on the run's clock and emits one ``TrainStep`` event per optimizer step;
* a forward pre-hook and hook on the loss module time the forward pass (the model on every column
  of the batch, then the loss) and count the batch's rows and tokens; the loss module is the one
  thing the trainer calls between the start of a step and the backward pass;
* the step's remaining parts follow by difference: the data (from the end of the previous step to
  the start of this one: the next batch from the data loader, collated and tokenised), the backward
  pass (with moving the batch to the device and gradient clipping, which no hook separates from it)
  and the optimizer (its step, the learning-rate schedule, zeroing the gradients).

On CUDA the device is synchronised at each boundary, so a part's time is its own and not the queue's.
A stop (Ctrl-C, SIGTERM, the dashboard's s) ends training at the end of the current step; the
partly trained model is not saved (it would sit under the name of the model that was asked for),
and the snapshot keeps every step measured and says so.
"""

from __future__ import annotations

import gc
import math
import os
import re
import resource
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..context import RunContext
from ..errors import OutputError, PartialFailure, RunCancelled, UserError
from ..events import MIB, Note, Result, TrainStep
from ..files import ensure_writable_dir, expand_path, json_lines
from ..neighbours import Labelled, accuracy, chance, evaluation_changes, read_labelled
from ..plan import MtebPlan, TrainPlan
from ..results import NeighbourScore, TrainResult
from ..targets import SentenceTransformerTarget, Target, check_prompt_name
from ..text import one_line
from ..workload_facts import TrainFacts
from .mteb_tasks import MtebWorkload, TasksFailed

# The three shapes of training data sentence-transformers' losses take, by their columns (in the
# order the loss reads them; the label column last).
SHAPES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("scored pairs", ("sentence1", "sentence2", "score")),
    ("triplets", ("anchor", "positive", "negative")),
    ("pairs", ("anchor", "positive")),
)
LOSS_CLASSES = {"cosent": "CoSENTLoss", "mnrl": "MultipleNegativesRankingLoss", "triplet": "TripletLoss"}
LOSS_FITS = {"cosent": ("scored pairs",), "mnrl": ("pairs", "triplets"), "triplet": ("triplets",)}
UNSPLIT = ("backward includes moving the batch to the device and gradient clipping; data includes the trainer's "
           "bookkeeping after the previous step")


@dataclass
class TrainingData:
    """A training file, read and checked."""

    file: str
    shape: str
    columns: tuple[str, ...]
    rows_in_file: int
    values: dict[str, list[Any]]

    @property
    def examples(self) -> int:
        return len(self.values[self.columns[0]])

    def texts(self) -> list[str]:
        return [t for c in self.columns if c != "score" for t in self.values[c]]


def read_training_data(path: str, max_examples: int | None) -> TrainingData:
    """JSON Lines of one of the three shapes; one sentence on a bad file, naming the line."""
    shown = one_line(path)
    shapes = " or ".join("{" + ", ".join(f'"{c}"' for c in cols) + "}" for _, cols in SHAPES)
    shape: str | None = None
    columns: tuple[str, ...] = ()
    values: dict[str, list[Any]] = {}
    rows = 0
    for number, row in json_lines(path, "training file", f"one example, {shapes}"):
        if shape is None:
            found = next(((name, cols) for name, cols in SHAPES if set(cols) <= set(row)), None)
            if found is None:
                keys = ", ".join(one_line(str(k)) for k in list(row)[:6]) or "none"
                raise UserError(f"training file '{shown}' line {number} has the keys {keys}: each line holds {shapes}")
            shape, columns = found
            values = {c: [] for c in columns}
        missing = [c for c in columns if c not in row]
        if missing:
            raise UserError(f"training file '{shown}' line {number} has no \"{missing[0]}\": every line must have the first line's "
                            f"keys ({', '.join(columns)})")
        # A key the loss would never read is refused, not dropped: a pair's "label" (0: not a match) would
        # train as a match, and a later line's "negative" would vanish from a file of pairs.
        unread = [k for k in ("negative", "label", "score") if k in row and k not in columns]
        if unread:
            why = ("line 1 has none: one shape per file" if unread[0] == "negative" else
                   f"{shape} train with MultipleNegativesRanking or Triplet loss, which take no label; "
                   "a scored pair is {\"sentence1\", \"sentence2\", \"score\"}")
            raise UserError(f"training file '{shown}' line {number} has a \"{unread[0]}\" that would not be used: {why}")
        rows += 1
        if max_examples is not None and rows > max_examples:
            continue  # counted, not kept: the file's size is a fact of the run
        for c in columns:
            v = row[c]
            if c == "score":
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise UserError(f"training file '{shown}' line {number}: \"score\" must be a finite number")
                values[c].append(float(v))
            elif not isinstance(v, str) or not v.strip():
                raise UserError(f"training file '{shown}' line {number}: \"{c}\" must be a non-empty string")
            else:
                values[c].append(v)
    if shape is None:
        raise UserError(f"training file '{shown}' holds no examples")
    return TrainingData(path, shape, columns, rows, values)


def choose_loss(asked: str, shape: str, batch_size: int) -> str:
    """The loss for the data: CoSENT for scored pairs, MultipleNegativesRanking for pairs and
    triplets (sentence-transformers' advice, and EmbeddingGemma's fine-tuning guide's), or the one asked for."""
    loss = asked if asked != "auto" else ("cosent" if shape == "scored pairs" else "mnrl")
    if shape not in LOSS_FITS[loss]:
        need = " or ".join(LOSS_FITS[loss])
        raise UserError(f"--loss {loss} ({LOSS_CLASSES[loss]}) trains on {need}, and the training file holds {shape}")
    if loss == "mnrl" and batch_size < 2:
        raise UserError("MultipleNegativesRankingLoss takes the other rows of a batch as negatives: give --batch-size 2 or more")
    return loss


def check_learnable(data: TrainingData, loss: str, max_examples: int | None) -> None:
    """Refuse data the loss can learn nothing from: its loss would be 0 at every step, and the "trained"
    model saved as if something had changed. CoSENT learns from which of two pairs scores higher:
    scores that never differ (or a single pair) give it no order; MultipleNegativesRanking takes a
    batch's other rows as negatives: a single example has none."""
    kept = f" (the first {max_examples:,} that --max-examples keeps)" if max_examples is not None and data.rows_in_file > max_examples else ""
    shown = f"training file '{one_line(data.file)}'"
    n = data.examples
    if loss == "cosent":
        scores = data.values["score"]
        if n < 2:
            raise UserError(f"{shown} has {n} scored pair{kept}: CoSENTLoss learns from which of two pairs scores higher; "
                            "give at least 2 with different scores")
        if len(set(scores)) == 1:
            raise UserError(f"{shown}: every \"score\" is {scores[0]:g}{kept}: CoSENTLoss learns from which of two pairs "
                            "scores higher, and these never differ (its loss would be 0 at every step)")
    elif loss == "mnrl" and n < 2:
        raise UserError(f"{shown} has {n} example{kept}: MultipleNegativesRankingLoss takes the other rows of a batch as "
                        "negatives, and one example has none; give at least 2")


def default_output(model_name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", model_name.replace(" (bundled)", "").split("/")[-1]).strip("-")[:60] or "model"
    return str(Path("trained") / f"{slug}-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}")


def check_output(path: str) -> Path:
    """The trained model's folder: new, or an empty folder; its parent must take a new folder."""
    out = expand_path(path, "output folder")
    shown = one_line(path)
    if out.exists() or out.is_symlink():
        if not out.is_dir() or out.is_symlink():
            raise UserError(f"--output '{shown}' exists and is not a folder: name a new folder for the trained model")
        if any(out.iterdir()):
            raise UserError(f"--output '{shown}' is a folder with files in it: name a new folder (a trained model never "
                            "replaces files)")
    ensure_writable_dir(out.parent if str(out.parent) else Path("."), "output's parent folder")
    return out


def save_model(model: Any, out: Path) -> None:
    """The model's folder, written whole or not at all: saved beside it under a temporary name, then renamed.

    A save that fails leaves nothing; a whole model that cannot be moved into place (the folder gained
    files meanwhile) is kept where it was written, and the error says where."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        model.save_pretrained(str(tmp))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # an empty folder the user made for it (checked before the run)
        os.rename(tmp, out)
    except OSError as exc:
        raise OutputError(f"the trained model could not be moved into '{one_line(str(out))}' ({(exc.strerror or str(exc)).lower()}): "
                          f"it is kept whole in '{one_line(str(tmp))}'", str(tmp)) from None


def _ru_maxrss_mib() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (usage if sys.platform == "darwin" else usage * 1024) / MIB


@dataclass
class _StepMarks:
    """The current step's marks on the run's clock (ns)."""

    mark: int = 0  # the end of the previous step, or the start of the epoch
    begin: int | None = None
    forward_start: int | None = None
    forward_ns: int | None = None
    pre_optimizer: int | None = None
    samples: int = 0
    tokens: int | None = None
    loss: float | None = None
    learning_rate: float | None = None


@dataclass
class StepProbe:
    """Times the trainer's steps from its callback hooks and the loss module's forward hooks."""

    ctx: RunContext
    torch: Any
    device: str
    epochs_planned: int = 0
    max_steps: int = 0
    steps: int = 0
    epochs_begun: int = 0
    marks: _StepMarks = field(default_factory=_StepMarks)
    epoch_phase: Any = None
    max_rss: float = 0.0
    gpu: Any = None
    nvml: Any = None
    _psutil: Any = None

    def __post_init__(self) -> None:
        import psutil

        self._psutil = psutil.Process()

    # -- the device ---------------------------------------------------------------------------------
    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def _now(self) -> int:
        # The step's work, not the queue's, is timed: CUDA and MPS run kernels asynchronously.
        if self.cuda:
            self.torch.cuda.synchronize()
        elif self.device == "mps":
            self.torch.mps.synchronize()
        return self.ctx.now()

    def _reset_torch_peaks(self) -> None:
        """Per-step CUDA peaks: torch's peak counters are reset at each step, the maxima so far carried,
        so the run's own counters still cover the whole run (see ``runner.kernel_counters``)."""
        cuda = self.torch.cuda
        carry = self.ctx.torch_peak_carry
        carry["allocated"] = max(carry.get("allocated", 0.0), cuda.max_memory_allocated() / MIB)
        carry["reserved"] = max(carry.get("reserved", 0.0), cuda.max_memory_reserved() / MIB)
        cuda.reset_peak_memory_stats()

    # -- the loss module's forward ------------------------------------------------------------------
    def forward_started(self, _module: Any, args: Any, kwargs: Any) -> None:
        features = args[0] if args else kwargs.get("sentence_features", kwargs.get("inputs"))
        samples, tokens = 0, None
        if isinstance(features, (list, tuple)) and features:
            first = features[0]
            mask = first.get("attention_mask") if hasattr(first, "get") else None
            ids = first.get("input_ids") if hasattr(first, "get") else None
            rows = mask if mask is not None else ids
            samples = int(rows.shape[0]) if rows is not None else 0
            counted = 0
            for f in features:
                m = f.get("attention_mask") if hasattr(f, "get") else None
                if m is None:
                    counted = -1
                    break
                counted += int(m.sum())
            tokens = counted if counted >= 0 else None
        self.marks.samples, self.marks.tokens = samples, tokens
        self.marks.forward_start = self._now()

    def forward_done(self, _module: Any, _args: Any, _kwargs: Any, output: Any) -> None:
        end = self._now()
        if self.marks.forward_start is not None:
            self.marks.forward_ns = end - self.marks.forward_start
        try:
            value = float(output.detach()) if hasattr(output, "detach") else float(output)
            self.marks.loss = value if math.isfinite(value) else None
        except (TypeError, ValueError, RuntimeError):
            self.marks.loss = None

    # -- the trainer's hooks ------------------------------------------------------------------------
    def train_begin(self, state: Any) -> None:
        self.max_steps = int(state.max_steps)
        self.max_rss = _ru_maxrss_mib()

    def epoch_begin(self, state: Any) -> None:
        self.epochs_begun += 1  # counted, not read from state.epoch: a short epoch would repeat a name
        cm = self.ctx.phase(f"epoch {self.epochs_begun}", f"of {self.epochs_planned}")
        cm.__enter__()
        self.epoch_phase = cm
        self.marks.mark = self._now()

    def epoch_end(self) -> None:
        self.close_epoch(None)

    def close_epoch(self, exc: BaseException | None) -> None:
        cm, self.epoch_phase = self.epoch_phase, None
        if cm is not None:
            cm.__exit__(type(exc) if exc else None, exc, exc.__traceback__ if exc else None)

    def step_begin(self) -> None:
        if self.cuda:
            self._reset_torch_peaks()
        m = self.marks
        m.begin = self._now()
        m.forward_start = m.forward_ns = m.pre_optimizer = None
        m.samples, m.tokens, m.loss, m.learning_rate = 0, None, None, None

    def pre_optimizer_step(self) -> None:
        self.marks.pre_optimizer = self._now()

    def optimizer_step(self, optimizer: Any) -> None:
        try:
            self.marks.learning_rate = float(optimizer.param_groups[0]["lr"])
        except (AttributeError, IndexError, KeyError, TypeError, ValueError):
            self.marks.learning_rate = None

    def step_end(self, state: Any) -> bool:
        """Emit the step; True when a stop was asked for (training ends after this step)."""
        end = self._now()
        m = self.marks
        begin = m.begin if m.begin is not None else m.mark
        backward = m.pre_optimizer - begin - m.forward_ns if m.pre_optimizer is not None and m.forward_ns is not None else None
        rss = self._psutil.memory_info().rss / MIB
        max_rss = _ru_maxrss_mib()
        rose = max_rss > self.max_rss
        self.max_rss = max(self.max_rss, max_rss)
        peak_alloc = peak_res = gpu_mib = None
        if self.cuda:
            peak_alloc = self.torch.cuda.max_memory_allocated() / MIB
            peak_res = self.torch.cuda.max_memory_reserved() / MIB
            if self.gpu is not None:
                gpu_mib = self.gpu.process_mib(os.getpid())
        self.steps += 1
        self.ctx.emit(TrainStep(
            t_ns=end, phase_id=self.ctx.phase_id, step=int(state.global_step), steps_planned=self.max_steps or None,
            epoch=float(state.epoch or 0.0),
            samples=m.samples, tokens=m.tokens, loss=m.loss, learning_rate=m.learning_rate,
            duration_ns=end - m.mark, data_ns=begin - m.mark if m.begin is not None else None, forward_ns=m.forward_ns,
            backward_ns=backward, optimizer_ns=end - m.pre_optimizer if m.pre_optimizer is not None else None,
            rss_mib=rss, max_rss_mib=max_rss, max_rss_rose=rose,
            torch_peak_allocated_mib=peak_alloc, torch_peak_reserved_mib=peak_res, gpu_process_mib=gpu_mib,
        ))
        m.mark = end
        return self.ctx.cancel_event.is_set()

    def open_gpu(self) -> None:
        if not self.cuda:
            return
        from ..sampler import GpuProbe, cuda_index_for_nvml, load_nvml

        nvml = load_nvml()
        if nvml is None:
            return
        try:
            nvml.nvmlInit()
            self.gpu = GpuProbe(nvml, cuda_index_for_nvml(self.device))
            self.nvml = nvml
        except Exception:  # no NVML here: the per-step GPU figure is n/a, torch's are still read
            self.gpu = None

    def close_gpu(self) -> None:
        if self.nvml is not None:
            try:
                self.nvml.nvmlShutdown()
            except Exception:
                pass
            self.nvml = None


def make_callback(probe: StepProbe) -> Any:
    """The probe as a transformers ``TrainerCallback`` (built here: transformers is imported with the trainer)."""
    from transformers import TrainerCallback

    class EmbprofCallback(TrainerCallback):  # type: ignore[misc]  # transformers is not analysed (pyproject.toml)
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            probe.train_begin(state)

        def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            probe.epoch_begin(state)

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            probe.step_begin()

        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            probe.pre_optimizer_step()

        def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            probe.optimizer_step(kwargs.get("optimizer"))

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if probe.step_end(state):
                control.should_training_stop = True
            return control

        def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            probe.epoch_end()

    return EmbprofCallback()


class TrainWorkload:
    name = "train"

    def __init__(self, plan: TrainPlan) -> None:
        self.plan = plan
        self.data: TrainingData | None = None
        self.loss = ""
        self.labelled: list[Labelled] = []
        self.output: Path | None = None
        self.before: MtebWorkload | None = None
        self.after: MtebWorkload | None = None
        self._results: dict[str, Any] = {}

    # -- before anything loads -------------------------------------------------------------------
    def prepare(self) -> None:
        p = self.plan
        self.data = read_training_data(p.train_file, p.max_examples)
        self.loss = choose_loss(p.loss, self.data.shape, p.batch_size)
        check_learnable(self.data, self.loss, p.max_examples)
        if p.output is not None:
            self.output = check_output(p.output)
        self.labelled = [read_labelled(f) for f in p.neighbours]
        for item in self.labelled:
            if p.top_k >= len(item.texts):
                raise UserError(f"--top-k {p.top_k} needs more than {p.top_k} texts; labelled file '{one_line(item.name)}' has {len(item.texts)}")
        if p.tasks:
            self.before, self.after = (self._mteb(stage) for stage in ("before", "after"))

    def _mteb(self, stage: str) -> MtebWorkload:
        p = self.plan
        w = MtebWorkload(MtebPlan(tasks=p.tasks, data_dir=p.data_dir, results_dir=p.results_dir, batch_size=p.eval_batch_size))
        w.stage = stage  # type: ignore[assignment]
        w.prepare()
        return w

    def prompt_names(self) -> list[str]:
        return [self.plan.prompt_name] if self.plan.prompt_name else []

    def facts(self) -> TrainFacts:
        data = self.data
        return TrainFacts(data_format=data.shape if data else None, examples=data.examples if data else None,
                          loss_class=LOSS_CLASSES.get(self.loss, self.loss) or None)

    # -- the run ------------------------------------------------------------------------------------
    def run(self, ctx: RunContext, target: Target) -> None:
        if self.data is None:
            self.prepare()
        if not isinstance(target, SentenceTransformerTarget):
            raise UserError("training needs a sentence-transformers model in this process")
        p = self.plan
        data = self.data
        assert data is not None
        device = str(target.device or "cpu")
        import torch  # already imported by the target's load: only the name is bound here

        if device.startswith("cuda") and torch.cuda.device_count() > 1:
            # The trainer would spread each batch over every visible GPU (DataParallel): a batch of 16 would be 16 a GPU.
            raise UserError(f"torch sees {torch.cuda.device_count()} GPUs and the trainer would use them all: "
                            "show it one (CUDA_VISIBLE_DEVICES=N embprof train … --device cuda)")
        if p.prompt_name:
            check_prompt_name(p.prompt_name, target.prompts)
        prompt = target.prompts[p.prompt_name] if p.prompt_name else p.prompt
        out = self.output or check_output(default_output(target.describe().model_name))
        failed: list[str] = []
        steps_per_epoch = math.ceil(data.examples / p.batch_size)
        planned = p.max_steps or max(1, math.ceil(steps_per_epoch * p.epochs))
        # From here on the snapshot says how far training got and where the model went, whatever ends the run.
        outcome: dict[str, Any] = {"steps_planned": planned, "warmup_steps": math.ceil(p.warmup_ratio * planned)}
        try:
            self._evaluate(ctx, target, "before", prompt, failed, None)
            ctx.check_cancel()
            with ctx.phase("training", f"{data.examples:,} {data.shape} · {LOSS_CLASSES[self.loss]} · batch {p.batch_size}"):
                self._train(ctx, target, data, prompt, outcome)
            if outcome.get("stopped"):
                outcome["not_saved_why"] = (f"stopped after step {outcome['steps_done']} of {outcome['steps_planned']}: "
                                            "a partly trained model is not saved")
                raise RunCancelled()
            # Every step ran: the model is what was asked for, and is saved even when a stop came during
            # the last step; the stop then ends the run before the evaluation after.
            with ctx.phase("saving", one_line(str(out))):
                save_model(target.model, out)
            outcome["saved_to"] = str(out)
            ctx.check_cancel()
            self._evaluate(ctx, target, "after", prompt, failed, out)
        except RunCancelled:
            if "saved_to" not in outcome and "not_saved_why" not in outcome:
                began = outcome.get("steps_done") is not None
                outcome["not_saved_why"] = "stopped before the model was saved" if began else "stopped before training began"
            raise
        except BaseException as exc:
            if "saved_to" not in outcome:
                outcome["not_saved_why"] = f"the run failed before the model was saved ({exc.__class__.__name__})"
            raise
        finally:
            self._emit_result(ctx, data, prompt, outcome)
        if failed:
            raise PartialFailure(f"{len(failed)} evaluation{'s' if len(failed) > 1 else ''} failed ({', '.join(failed)}); "
                                 "the training, the saved model and the other evaluations are kept")

    def _emit_result(self, ctx: RunContext, data: TrainingData, prompt: str | None, outcome: dict[str, Any]) -> None:
        p = self.plan
        ctx.emit(Result(t_ns=ctx.now(), result=TrainResult(
            train_file=p.train_file, data_format=data.shape, columns=data.columns,  # type: ignore[arg-type]
            rows_in_file=data.rows_in_file, examples=data.examples, loss=LOSS_CLASSES[self.loss],
            loss_chosen="to fit the data" if p.loss == "auto" else "as asked",
            batch_sampler=outcome.get("batch_sampler", ""), epochs=p.epochs, max_steps=p.max_steps,
            steps_planned=outcome["steps_planned"], steps_done=outcome.get("steps_done") or 0, epochs_done=outcome.get("epochs_done"),
            batch_size=p.batch_size, learning_rate=p.learning_rate, warmup_ratio=p.warmup_ratio,
            warmup_steps=outcome["warmup_steps"], seed=p.seed, prompt=prompt,
            stopped=bool(outcome.get("stopped")), saved_to=outcome.get("saved_to"), not_saved_why=outcome.get("not_saved_why"),
            train_seconds=outcome.get("train_seconds"), trainer_loss=outcome.get("trainer_loss"), unsplit=UNSPLIT,
            evaluations=tuple(evaluation_changes(self._results)),
        )))

    # -- evaluations ------------------------------------------------------------------------------------
    def _evaluate(self, ctx: RunContext, target: SentenceTransformerTarget, stage: str, prompt: str | None, failed: list[str],
                  saved: Path | None) -> None:
        if self.before is None and not self.labelled:
            return
        ctx.check_cancel()
        with ctx.phase(f"evaluation {stage}", "MTEB and neighbour accuracy" if self.before and self.labelled else ""):
            mteb = self.before if stage == "before" else self.after
            if mteb is not None:
                if saved is not None:
                    mteb.results_name = f"local/{saved.name}"
                try:
                    mteb.run(ctx, target)
                except TasksFailed as exc:
                    ctx.emit(Note(t_ns=ctx.now(), text=f"evaluation {stage}: {exc}", level="warning"))
                    failed.extend(f"{t.task} {stage}" for t in mteb.outcomes if t.status == "failed")
                    ctx.failed_phase = ""
                finally:
                    for t in mteb.outcomes:
                        self._results[t.key] = t
            for item in self.labelled:
                ctx.check_cancel()
                try:
                    score = self._neighbours(ctx, target, item, stage, prompt)
                except (RunCancelled, KeyboardInterrupt):
                    raise
                except Exception as exc:  # out of memory too: the other evaluations and the training still run
                    first = (str(exc).strip().splitlines() or [""])[0]
                    ctx.emit(Note(t_ns=ctx.now(), text=f"neighbours {item.name} {stage} failed: {exc.__class__.__name__}: {first}",
                                  level="warning"))
                    failed.append(f"neighbours {item.name} {stage}")
                    ctx.failed_phase = ""
                    continue
                self._results[score.key] = score

    def _neighbours(self, ctx: RunContext, target: SentenceTransformerTarget, item: Labelled, stage: str,
                    prompt: str | None) -> NeighbourScore:
        p = self.plan
        started = time.perf_counter()
        with ctx.phase(f"neighbours {one_line(item.name)}", f"{len(item.texts):,} texts · top-{p.top_k} · {p.distance}"):
            out = target.encode(ctx, item.texts, prompt=prompt, batch_size=p.eval_batch_size, label=f"neighbours {stage}",
                                group=f"neighbours {item.name} › {stage}")
            nonfinite = int(np.count_nonzero(~np.isfinite(out.embeddings)))
            # A diverged model gives NaN vectors: their "neighbours" would be a score of nothing, so there is none.
            share, per_label = accuracy(out.embeddings, item.labels, p.top_k, p.distance) if not nonfinite else (None, {})
        score = NeighbourScore(stage=stage, name=item.name, items=len(item.texts), labels=len(set(item.labels)), k=p.top_k,  # type: ignore[arg-type]
                               distance=p.distance, accuracy=share, chance=chance(item.labels), per_label=per_label,
                               prompt=prompt, seconds=time.perf_counter() - started,
                               why=f"{nonfinite:,} embedding values are NaN or infinite" if nonfinite else None)
        ctx.emit(Result(t_ns=ctx.now(), result=score))
        return score

    # -- training ------------------------------------------------------------------------------------
    def _train(self, ctx: RunContext, target: SentenceTransformerTarget, data: TrainingData, prompt: str | None,
               outcome: dict[str, Any]) -> None:
        import torch  # already imported by the target's load: only the name is bound here

        p = self.plan
        with ctx.phase("import", "datasets + transformers' Trainer + accelerate"):
            try:
                import datasets
                from sentence_transformers import (
                    SentenceTransformerTrainer,
                    SentenceTransformerTrainingArguments,
                )

                try:
                    from sentence_transformers.base.sampler import BatchSamplers
                    from sentence_transformers.sentence_transformer import losses
                except ImportError:  # sentence-transformers 5.x: the same classes at their older places
                    from sentence_transformers import losses  # type: ignore[attr-defined,no-redef]
                    from sentence_transformers.training_args import BatchSamplers  # type: ignore[no-redef]
            except ImportError as exc:
                raise UserError(f"training needs sentence-transformers' training extras ({exc.name} is missing): "
                                "pip install 'sentence-transformers[train]'") from None
            datasets.disable_progress_bars()
        model = target.model
        device = str(target.device or "cpu")
        loss = getattr(losses, LOSS_CLASSES[self.loss])(model)
        sampler = BatchSamplers.NO_DUPLICATES if self.loss == "mnrl" else BatchSamplers.BATCH_SAMPLER
        outcome["batch_sampler"] = str(getattr(sampler, "value", sampler))
        steps_per_epoch = math.ceil(data.examples / p.batch_size)
        probe = StepProbe(ctx, torch, device, epochs_planned=max(1, math.ceil(p.epochs)) if not p.max_steps
                          else math.ceil(p.max_steps / steps_per_epoch))
        hooks = [loss.register_forward_pre_hook(probe.forward_started, with_kwargs=True),
                 loss.register_forward_hook(probe.forward_done, with_kwargs=True)]
        # The model card's widget examples are the first rows, not a random draw: sentence-transformers
        # otherwise draws them behind a progress bar of its own, on the terminal embprof draws on.
        first = data.values[data.columns[0]][:1]
        if not getattr(model.model_card_data, "widget", None) and first:
            model.model_card_data.widget = [{"text": t} for t in first]
        probe.open_gpu()
        try:
            with tempfile.TemporaryDirectory(prefix="embprof-train-") as scratch:
                args = SentenceTransformerTrainingArguments(
                    output_dir=scratch,  # the trainer's checkpoints are not kept: the model is saved once, at the end
                    num_train_epochs=p.epochs,
                    max_steps=p.max_steps or -1,
                    per_device_train_batch_size=p.batch_size,
                    learning_rate=p.learning_rate,
                    # Steps, counted here: transformers 4 reads a float as a count (0.1 → none), 5 as a share.
                    warmup_steps=outcome["warmup_steps"],
                    seed=p.seed,
                    data_seed=p.seed,
                    prompts=prompt,
                    batch_sampler=sampler,
                    logging_strategy="no",  # the loss is read per step from the loss module: no .item() of the trainer's
                    save_strategy="no",
                    eval_strategy="no",
                    report_to="none",
                    disable_tqdm=True,
                    use_cpu=device == "cpu",  # else the trainer's own choice: the first visible GPU, or Apple's mps
                    dataloader_num_workers=0,
                )
                train_set = datasets.Dataset.from_dict({c: data.values[c] for c in data.columns})
                trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train_set, loss=loss,
                                                     callbacks=[make_callback(probe)])
                from transformers.trainer_callback import (
                    PrinterCallback,
                    ProgressCallback,
                )

                for quiet in (PrinterCallback, ProgressCallback):  # they print to the terminal the run draws on
                    trainer.remove_callback(quiet)
                started = time.perf_counter()
                try:
                    output = trainer.train()
                finally:
                    outcome["train_seconds"] = time.perf_counter() - started
                    outcome["steps_done"] = probe.steps
                    outcome["steps_planned"] = probe.max_steps or outcome["steps_planned"]
                    outcome["epochs_done"] = float(trainer.state.epoch) if trainer.state.epoch is not None else None
                    probe.close_epoch(sys.exc_info()[1])
                loss_value = getattr(output, "training_loss", None)
                outcome["trainer_loss"] = float(loss_value) if loss_value is not None and math.isfinite(loss_value) else None
                outcome["stopped"] = probe.steps < outcome["steps_planned"] and ctx.cancel_event.is_set()
                if probe.steps < outcome["steps_planned"] and not outcome["stopped"]:
                    ctx.emit(Note(t_ns=ctx.now(), level="warning", text=(
                        f"the trainer ended after {probe.steps} of the {outcome['steps_planned']} steps it planned: its batch "
                        f"sampler ({outcome['batch_sampler']}) yielded fewer batches than its length said")))
                del trainer, output
        finally:
            for h in hooks:
                h.remove()
            probe.close_gpu()
            if hasattr(model, "train"):
                model.eval()  # back to inference: dropout off for the evaluation after
            # The trainer's optimizer state (two tensors a weight for AdamW) is freed before the evaluation
            # after, so that its memory is the model's, as it was before training.
            gc.collect()
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
