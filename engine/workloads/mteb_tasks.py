"""MTEB tasks, run by mteb 2.x's own task objects and evaluators, with the sampler on.

Each task is one phase of the run; mteb's own phases (data loading, encoding each side, scoring,
each classifier experiment) are phases inside it, live. The scores are mteb's; embprof adds what
they cost. Results are written in mteb's results layout as each task ends, so an interrupted or
failed run keeps every finished task.
"""

from __future__ import annotations

import logging
import math
import platform
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psutil

from .. import mteb_data
from ..context import RunContext
from ..errors import PartialFailure, RunCancelled, UserError
from ..events import Note, Result
from ..files import ensure_writable_dir, expand_path
from ..mteb_bridge import (
    TaskSession,
    make_encoder,
    monotonic_pair,
    reconcile,
    tap_task,
    write_speed_result,
    write_task_result,
)
from ..plan import MtebPlan, SpeedPlan
from ..results import MtebRun, MtebTask, finite_or_null
from ..targets import Target
from ..workload_facts import MtebFacts
from .speed import SpeedWorkload


class TasksFailed(PartialFailure):
    """Some tasks raised; the others ran and their results are kept."""


@dataclass
class _Planned:
    name: str
    task: Any = None  # mteb's task object; None for the SpeedTasks
    local: mteb_data.LocalData | None = None


class MtebWorkload:
    name = "mteb"

    def __init__(self, plan: MtebPlan) -> None:
        self.plan = plan
        self.tasks = list(plan.tasks)
        self._plan: list[_Planned] = []
        self._speed: SpeedWorkload | None = None
        self.transform: Callable[[Any], Any] | None = None  # a matrix cell's output precision, applied before scoring
        self.stage: Literal["before", "after"] | None = None  # a training run's evaluation: its results are filed by stage
        self.results_name: str | None = None  # the name results are filed under, when not the target's (a trained model)
        self.outcomes: list[MtebTask] = []  # each task's result, as emitted

    # -- before anything loads -------------------------------------------------------------------
    def prepare(self) -> None:
        p = self.plan
        data_dir = expand_path(p.data_dir, "data folder") if p.data_dir else None
        if data_dir is not None and not data_dir.is_dir():
            raise UserError(f"--data-dir '{p.data_dir}' is not a folder")
        ensure_writable_dir(Path(p.results_dir), "results folder")
        plan: list[_Planned] = []
        needs_hub: list[tuple[str, list[Path]]] = []
        for name in self.tasks:
            if name in mteb_data.SPEED_TASKS:
                if self._speed is None:
                    self._speed = SpeedWorkload(SpeedPlan(text=p.text, loops=p.loops, batch_size=p.batch_size))
                    self._speed.prepare()
                plan.append(_Planned(name))
                continue
            task = mteb_data.get_task(name)
            local, looked = mteb_data.find_local(task, data_dir) if data_dir is not None else (None, [])
            if local is None and not mteb_data.in_hub_cache(task):
                needs_hub.append((name, looked))
            plan.append(_Planned(name, task, local))
        if needs_hub:
            if not mteb_data.hub_reachable():
                name, looked = needs_hub[0]
                where = (
                    f"looked for {', '.join(str(p) for p in looked[:4])}{' …' if len(looked) > 4 else ''}"
                    if looked
                    else "no --data-dir was given"
                )
                raise UserError(f"task {name} has no local data ({where}) and the Hugging Face Hub cannot be reached")
        self._plan = plan

    def prompt_names(self) -> list[str]:
        return []

    def facts(self) -> MtebFacts:
        return MtebFacts(tasks=tuple(self.tasks), speed_loops=self.plan.loops if self._speed is not None else None)

    # -- the run ----------------------------------------------------------------------------------
    def run(self, ctx: RunContext, target: Target) -> None:
        if not self._plan:
            self.prepare()
        mteb = mteb_data.import_mteb()
        current: list[TaskSession] = []
        encoder = make_encoder(target, lambda: current[-1], self.transform)
        if self.results_name is not None:
            encoder.mteb_model_meta = encoder.mteb_model_meta.model_copy(update={"name": self.results_name,
                                                                                 "revision": "no_revision_available"})
        meta = encoder.mteb_model_meta
        results_dir = Path(self.plan.results_dir)
        failed: list[str] = []
        done: list[str] = []
        ctx.emit(Result(t_ns=ctx.now(), result=MtebRun(tasks=tuple(self.tasks), model_name=str(meta.name), revision=meta.revision,
                                                       results_dir=str(results_dir), stage=self.stage)))
        for planned in self._plan:
            ctx.check_cancel()
            session = TaskSession(ctx, planned.name)
            current.append(session)
            started = time.perf_counter()
            outcome: dict[str, Any] = {"task": planned.name, "status": "running"}
            try:
                with _mteb_output_as_notes(ctx), ctx.phase(planned.name, self._detail(planned)) as phase_id:
                    outcome["phase_id"] = phase_id
                    if planned.task is None:
                        outcome.update(self._speed_task(ctx, target, planned.name, meta, results_dir))
                    else:
                        outcome.update(self._mteb_task(ctx, mteb, encoder, session, planned, meta, results_dir))
                outcome["status"] = "ok"
                done.append(planned.name)
            except RunCancelled:
                outcome["status"] = "cancelled"
                outcome["error"] = "stopped by the user before this task finished; no result file was written"
                raise
            except UserError as exc:
                outcome["status"] = "failed"
                outcome["error"] = str(exc)
                failed.append(planned.name)
            except Exception as exc:  # out of memory too: a smaller task may still fit
                first = (str(exc).strip().splitlines() or [""])[0]
                outcome["status"] = "failed"
                outcome["error"] = f"{exc.__class__.__name__}: {first}".rstrip(": ")
                failed.append(planned.name)
            finally:
                outcome["seconds"] = time.perf_counter() - started
                outcome["encodes"] = tuple(session.encodes)
                outcome["stage"] = self.stage
                task_result = MtebTask(**outcome)
                self.outcomes.append(task_result)
                ctx.emit(Result(t_ns=ctx.now(), result=task_result))
            if outcome["status"] == "failed":
                ctx.emit(Note(t_ns=ctx.now(), text=f"{planned.name} failed: {outcome['error']}", level="warning"))
                ctx.failed_phase = ""  # the run goes on; a later failure names its own phase
        if failed:
            raise TasksFailed(
                f"{len(failed)} of {len(self._plan)} tasks failed ({', '.join(failed)}); "
                f"the results of {', '.join(done) if done else 'no task'} are kept"
            )

    def _detail(self, planned: _Planned) -> str:
        if planned.task is None:
            return "MTEB v1 SpeedTask"
        md = planned.task.metadata
        source = "local data" if planned.local is not None else "Hub data"
        return f"{md.type} · {', '.join(md.eval_splits)} · {source}"

    def _mteb_task(
        self, ctx: RunContext, mteb: Any, encoder: Any, session: TaskSession, planned: _Planned, meta: Any, results_dir: Path
    ) -> dict[str, Any]:
        task = planned.task
        out: dict[str, Any] = {"type": str(task.metadata.type), "main_score_name": task.metadata.main_score}
        if planned.local is not None:
            with ctx.phase("Data loading", f"local · {planned.local.folder}"):
                for text in mteb_data.load_local(task, planned.local):
                    ctx.emit(Note(t_ns=ctx.now(), text=text))
            out["data"] = {"source": "local", **planned.local.describe()}
            for text in mteb_data.size_mismatches(task, planned.local):
                ctx.emit(Note(t_ns=ctx.now(), text=text, level="warning"))
        else:
            out["data"] = {"source": "hub", **dict(task.metadata.dataset)}
        tap_task(task, session)
        mono_ref, ns_ref = monotonic_pair(ctx)
        result = mteb.evaluate(
            encoder,
            task,
            cache=None,  # embprof writes the results itself, atomically, and never skips a run
            overwrite_strategy="always",
            show_progress_bar=False,
            co2_tracker=False,
            encode_kwargs={"batch_size": self.plan.batch_size, "show_progress_bar": False},
            raise_error=True,
        )
        if not result.task_results:  # mteb returns an error instead of raising for a private dataset it cannot reach
            raise UserError(str(result.exceptions[0].exception) if result.exceptions else "mteb returned no result")
        tr = result.task_results[0]
        main = float(tr.get_score())
        if not math.isfinite(main):
            # A score that is not a number is no result: the task fails, saying why, and no results file
            # is written (mteb's own would hold a bare NaN, which is not JSON).
            raise UserError(f"mteb's main score ({task.metadata.main_score}) is {'NaN' if math.isnan(main) else 'infinite'}: "
                            "the model's similarities never varied across the texts, and a correlation with a constant "
                            "is undefined; no results file was written")
        out["main_score"] = main
        scores, nulled = finite_or_null({split: tuple(dict(s) for s in rows) for split, rows in tr.scores.items()})
        out["scores"] = scores
        out["evaluation_time"] = tr.evaluation_time
        out["mteb_phases"] = reconcile(session, tr.evaluation_phases, mono_ref, ns_ref)
        unseen = [p.name for p in out["mteb_phases"] if not p.seen_live]
        if unseen:
            ctx.emit(Note(t_ns=ctx.now(), text=f"{planned.name}: mteb reported phases not seen live: {', '.join(unseen)}"))
        path, _ = write_task_result(tr, meta, results_dir)
        out["results_file"] = str(path)
        if nulled:
            shown = ", ".join(nulled[:5]) + (f" and {len(nulled) - 5} more" if len(nulled) > 5 else "")
            ctx.emit(Note(t_ns=ctx.now(), level="warning", text=(
                f"{planned.name}: mteb gave {len(nulled)} score{'s' if len(nulled) > 1 else ''} that {'are' if len(nulled) > 1 else 'is'} "
                f"not a number ({shown}); {'they are' if len(nulled) > 1 else 'it is'} null in the snapshot and the results file")))
        if task.data_loaded:
            task.unload_data()  # a long task list should not hold every dataset at once
        return out

    def _speed_task(self, ctx: RunContext, target: Target, name: str, meta: Any, results_dir: Path) -> dict[str, Any]:
        assert self._speed is not None
        device = target.device or ""
        if not target.capabilities.local_device:
            pass  # where a server computes is the server's business: the task is timed as named
        elif name == "GPUSpeedTask" and not device.startswith("cuda"):
            raise UserError(f"GPUSpeedTask needs a CUDA device; this run's model is on {device} (use --device cuda)")
        elif name == "CPUSpeedTask" and device != "cpu":
            raise UserError(f"CPUSpeedTask times the model on the CPU; this run's model is on {device} (use --device cpu)")
        started = time.perf_counter()
        data = self._speed.measure(ctx, target)
        scores: dict[str, Any] = {"time_mean": data.time_mean, "time_std": data.time_std, "timings": list(data.timings),
                                  "avg_words_per_sec": data.avg_words_per_sec}
        scores.update(_system_info(device if target.capabilities.local_device else "server"))
        scores["main_score"] = scores["avg_words_per_sec"]
        path = write_speed_result(name, scores, time.perf_counter() - started, meta, results_dir)
        return {"type": "Speed", "main_score_name": "avg_words_per_sec", "main_score": scores["main_score"], "scores": {"test": (scores,)},
                "speed": data, "results_file": str(path)}


def _system_info(device: str) -> dict[str, Any]:
    """The system fields mteb 1.x's SpeedTask added to its scores."""
    info: dict[str, Any] = {
        "platform": platform.system(),
        "platform_release": platform.release(),
        "platform_version": platform.version(),
        "architecture": platform.machine(),
        "processor": platform.processor(),
        "ram": f"{round(psutil.virtual_memory().total / 1024.0**3)} GB",
        "physical_cores": psutil.cpu_count(logical=False),
        "total_cores": psutil.cpu_count(logical=True),
    }
    if device != "cpu":
        from ..environment import gpus as list_gpus

        gpus = list_gpus()
        info["num_gpus"] = len(gpus)
        info["gpu_info"] = [{"gpu_name": g["name"], "gpu_total_memory": f"{g['memory_total_mib'] / 1024.0} GB"} for g in gpus]
    return info


class _NoteHandler(logging.Handler):
    def __init__(self, ctx: RunContext) -> None:
        super().__init__(logging.WARNING)
        self.ctx = ctx
        self.seen: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage().strip().splitlines()[0] if record.getMessage().strip() else ""
        if text and text not in self.seen:
            self.seen.add(text)
            self.ctx.emit(Note(t_ns=self.ctx.now(), text=f"mteb: {text}", level="warning"))


class _mteb_output_as_notes:
    """mteb's warnings become notes in the run, once each, instead of lines across the terminal
    (or the dashboard); its deprecation chatter about other libraries' APIs is dropped."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.handler = _NoteHandler(ctx)
        self.logger = logging.getLogger("mteb")
        self._warnings = warnings.catch_warnings(record=True)
        self._propagate = True
        self._caught: list[warnings.WarningMessage] = []

    def __enter__(self) -> None:
        self._propagate = self.logger.propagate
        self.logger.addHandler(self.handler)
        self.logger.propagate = False
        self._caught = self._warnings.__enter__() or []
        warnings.simplefilter("default")  # once per place, as Python shows them

    def __exit__(self, *exc: Any) -> None:
        self._warnings.__exit__(*exc)
        self.logger.removeHandler(self.handler)
        self.logger.propagate = self._propagate
        for w in self._caught:
            if issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning, FutureWarning)):
                continue
            self.handler.emit(logging.LogRecord("mteb", logging.WARNING, "", 0, str(w.message), None, None))
