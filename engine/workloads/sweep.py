"""Sweeps: the same encode measured across one or more axes, each point a full measurement.

Axes: lines, batch, tokens (text length), threads (torch CPU threads), device, dtype,
truncate_dim and max_seq_length; several axes make a grid. Each point has its own warm-up and is
repeated until the 95 % interval of its median latency is within the target (±2 % by default) or
its time budget is spent; the point says which ended it. Afterwards latency is fitted as
fixed + per line + per token, and with ``until_oom`` the batch (or text length) grows until the
device runs out of memory or the RAM ceiling is crossed.
"""

from __future__ import annotations

import gc
import itertools
import os
import sys
import time
from typing import Any

import numpy as np

from ..context import RunContext
from ..crash import is_out_of_memory
from ..errors import UserError
from ..events import BatchTimed, Event, Note, ResourceSample, Result
from ..files import read_lines
from ..plan import AXES, OOM_AXES, SweepPlan
from ..results import LatencyFit, MemoryLimit, MemoryPoint, SweepPoint, SweepResult
from ..stats import describe, known_sum
from ..sweepstats import StopRule, fit_latency, median_ci, relative_half_width
from ..targets import SentenceTransformerTarget, Target, TargetFactory
from ..workload_facts import SweepFacts
from .encode import sample_corpus

SPEC_AXES = ("device", "dtype", "truncate_dim")  # a new value means loading the model again
MAX_GROWTH = 1 << 16


class PointWatcher:
    """Subscribed to the run's events for the length of one point: its sampled peaks and the
    token and padding counts of its timed batches."""

    def __init__(self) -> None:
        self.peaks: dict[str, float] = {}
        self.tokens: int | None = 0  # None once a batch's count is unknown (a server)
        self.padded: int | None = 0

    def __call__(self, e: Event) -> None:
        if isinstance(e, ResourceSample):
            for name in ("rss_mib", "gpu_process_mib", "gpu_used_mib", "torch_reserved_mib", "torch_allocated_mib", "cpu_percent"):
                v = getattr(e, name)
                if v is not None and v > self.peaks.get(name, -1.0):
                    self.peaks[name] = float(v)
        elif isinstance(e, BatchTimed) and not e.warmup:
            self.tokens = known_sum(self.tokens, e.tokens)
            self.padded = known_sum(self.padded, e.padded_tokens)


class SweepWorkload:
    name = "sweep"

    def __init__(self, plan: SweepPlan, make_target: TargetFactory) -> None:
        self.plan = plan
        self.make_target = make_target  # a device, dtype or truncate_dim axis's other settings of the model
        self.axes: dict[str, tuple[Any, ...]] = dict(plan.axes)
        self.batch_size = plan.effective_batch_size
        self._texts: list[str] = []

    def prepare(self) -> None:
        self._texts = sample_corpus() if self.plan.input is None else read_lines(self.plan.input)

    def prompt_names(self) -> list[str]:
        return [self.plan.prompt_name] if self.plan.prompt_name else []

    def facts(self) -> SweepFacts:
        p = self.plan
        return SweepFacts(input=p.input if p.input is not None else "built-in sample corpus", batch_size=self.batch_size)

    # -- the grid ---------------------------------------------------------------------------------
    def _grid(self) -> list[dict[str, Any]]:
        names = [a for a in AXES if a in self.axes]
        return [dict(zip(names, combo)) for combo in itertools.product(*(self.axes[a] for a in names))]

    def _texts_for(self, target: Target, point: dict[str, Any]) -> list[str]:
        base = self._texts
        if "tokens" in point:
            base = _texts_of_tokens(target, base, int(point["tokens"]), count=max(len(base), point.get("batch", self.batch_size)))
        n = int(point.get("lines") or (point.get("batch") if self.plan.until_oom else 0) or len(base))
        return [base[i % len(base)] for i in range(n)]

    # -- the run ----------------------------------------------------------------------------------
    def run(self, ctx: RunContext, target: Target) -> None:
        if not self._texts:
            self.prepare()
        p = self.plan
        local = target.capabilities.local_device
        torch = _torch() if local else None
        base_threads = torch.get_num_threads() if torch is not None else 0
        cores = os.cpu_count() or 1
        if any(int(t) > cores for t in self.axes.get("threads", ())):
            ctx.emit(Note(t_ns=ctx.now(), text=f"threads above this machine's {cores} cores are measured as asked, but they only contend", level="warning"))
        target_ci = p.target_ci_percent / 100.0
        rule = StopRule(target=target_ci, budget_s=p.budget_s, max_repeats=p.max_repeats)
        if p.until_oom:
            rule = StopRule(target=target_ci, budget_s=min(p.budget_s, 10.0), min_repeats=3, max_repeats=3)
        loaded: dict[tuple[Any, ...], Target] = {_spec_key(target.device, _setting(target, "dtype"), _setting(target, "truncate_dim")): target}
        points: list[SweepPoint] = []
        grid = self._grid()
        grow_axis = next((a for a in OOM_AXES if a in self.axes), None) if p.until_oom else None
        stop_reason = ""
        try:
            stop_reason = self._points(ctx, target, loaded, grid, grow_axis, rule, base_threads, points)
        finally:
            if torch is not None:
                torch.set_num_threads(base_threads)
            for t in [t for t in loaded.values() if t is not target]:
                _release(t)
            loaded.clear()
            gc.collect()
            _empty_cuda_cache()
        memory_limit = None
        if grow_axis is not None:
            fitting = [pt for pt in points if pt.status == "ok"]
            memory_limit = MemoryLimit(
                axis=grow_axis,
                largest_that_fits=int(fitting[-1].params[grow_axis]) if fitting else None,
                stopped=stop_reason,
                ceiling_mib=p.ram_ceiling_mib,
                curve=tuple(MemoryPoint(value=int(pt.params[grow_axis]), peak_rss_mib=pt.peak_rss_mib, peak_gpu_mib=pt.peak_gpu_mib,
                                        torch_peak_mib=pt.torch_peak_mib, status=pt.status) for pt in points),
            )
            if not fitting:
                first = points[0].params[grow_axis] if points else None
                ctx.emit(Note(t_ns=ctx.now(), text=f"nothing fits: {grow_axis} {first}, the first point, already failed ({stop_reason})", level="warning"))
        ctx.emit(Result(t_ns=ctx.now(), result=SweepResult(axes=self.axes, points=tuple(points), parameters=target.describe().parameters,
                                                           fits=tuple(latency_fits(points)), memory_limit=memory_limit)))

    def _points(self, ctx: RunContext, target: Target, loaded: dict[tuple[Any, ...], Target], grid: list[dict[str, Any]],
                grow_axis: str | None, rule: StopRule, base_threads: int, points: list[SweepPoint]) -> str:
        """Measure the grid (and, in a memory search, grow past it); returns why a search stopped."""
        ceiling = self.plan.ram_ceiling_mib
        stop_reason = ""
        i = 0
        while True:
            if i < len(grid):
                params = grid[i]
            elif grow_axis is not None and not stop_reason:
                last = int(points[-1].params[grow_axis])
                if last * 2 > MAX_GROWTH:
                    stop_reason = f"reached {grow_axis} {last} without running out"
                    break
                params = {grow_axis: last * 2}
            else:
                break
            ctx.check_cancel()
            current = None  # the last point's alternative model must be free to go before the next loads
            current = self._target_for(ctx, loaded, target, params)
            if grow_axis == "tokens" and current.max_seq_length and params["tokens"] > current.max_seq_length:
                stop_reason = f"reached the model's max_seq_length ({current.max_seq_length}) without running out"
                break
            measured = self._measure(ctx, current, params, i, len(grid), rule, base_threads)
            i += 1
            if grow_axis is not None and measured["status"] == "oom":
                stop_reason = f"out of memory at {grow_axis} {params[grow_axis]}"
            elif grow_axis is not None and ceiling is not None and (measured.get("peak_rss_mib") or 0) > ceiling:
                measured["status"] = "over-ceiling"
                stop_reason = f"peak RSS {measured['peak_rss_mib']:.0f} MiB crossed the {ceiling:.0f} MiB ceiling at {grow_axis} {params[grow_axis]}"
            # The point is final before anyone sees it: a frozen value, never changed after it was emitted.
            points.append(SweepPoint(**measured))
            # The table so far, for the dashboard; the last sweep result is the whole sweep.
            ctx.emit(Result(t_ns=ctx.now(), result=SweepResult(axes=self.axes, points=tuple(points), partial=True)))
            if stop_reason:
                break
        return stop_reason

    def _target_for(self, ctx: RunContext, loaded: dict[tuple[Any, ...], Target], first: Target, params: dict[str, Any]) -> Target:
        changes = {k: params[k] for k in SPEC_AXES if k in params}
        if not changes:
            return first
        if not isinstance(first, SentenceTransformerTarget):
            raise UserError(f"this target cannot vary {', '.join(changes)}")
        key = _spec_key(changes.get("device", first.spec.device), changes.get("dtype", first.spec.dtype),
                        changes.get("truncate_dim", first.spec.truncate_dim))
        if key in loaded:
            return loaded[key]
        # One extra model at a time: the previous alternative is freed before the next loads.
        for k in [k for k in loaded if loaded[k] is not first]:
            _release(loaded.pop(k))
        gc.collect()
        _empty_cuda_cache()
        t = self.make_target(first.spec.model_copy(update=changes))
        t.load(ctx)
        loaded[key] = t
        return t

    def _measure(self, ctx: RunContext, target: Target, params: dict[str, Any], i: int, total: int, rule: StopRule,
                 base_threads: int) -> dict[str, Any]:
        label = " ".join(f"{k}={v}" for k, v in params.items())
        texts = self._texts_for(target, params)
        batch = int(params.get("batch") or self.batch_size)
        model = getattr(target, "model", None)
        old_max = getattr(model, "max_seq_length", None)
        if "max_seq_length" in params and model is not None:
            model.max_seq_length = int(params["max_seq_length"])
        torch = _torch() if target.capabilities.local_device else None
        if torch is not None:
            torch.set_num_threads(int(params.get("threads") or base_threads))
        watcher = PointWatcher()
        ctx.bus.subscribe(watcher)
        device = target.device or ""
        cuda = torch is not None and device.startswith("cuda")
        if cuda and torch is not None:
            torch.cuda.reset_peak_memory_stats(torch.device(device))
        point: dict[str, Any] = {"params": params, "label": label, "lines": len(texts), "batch_size": batch}
        times: list[float] = []
        tokens: list[int | None] = []
        detail = f"{i + 1}/{total} · {label}" if i < total else f"{i + 1} · {label} (growing)"
        try:
            with ctx.phase("point", detail) as pid:
                point["phase_id"] = pid
                kw: dict[str, Any] = {"mode": self.plan.mode, "prompt_name": self.plan.prompt_name, "batch_size": batch, "group": label}
                for _ in range(self.plan.warmups):
                    target.encode(ctx, texts, label=f"{label} warm-up", warmup=True, **kw)
                started = time.perf_counter()
                stop = None
                while stop is None:
                    ctx.check_cancel()
                    out = target.encode(ctx, texts, label=label, **kw)
                    times.append(out.duration_ns / 1e9)
                    tokens.append(out.tokens)
                    stop = rule.verdict(times, time.perf_counter() - started)
            point["status"] = "ok"
            point["stop"] = stop
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            point["status"] = "oom"
            ctx.failed_phase = ""  # an expected end of a memory search, not the run's failure
            point["error"] = f"{exc.__class__.__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
            ctx.emit(Note(t_ns=ctx.now(), text=f"point {label}: out of memory", level="warning"))
            _empty_cuda_cache()
        finally:
            ctx.bus.unsubscribe(watcher)
            if "max_seq_length" in params and model is not None:
                model.max_seq_length = old_max
        point["repeats"] = len(times)
        point["stats"] = describe(times)
        if times:
            med = float(np.median(times))
            ci = median_ci(times)
            point["median_s"] = med
            point["ci95_s"] = tuple(ci) if ci else None
            point["ci_half_width_percent"] = 100 * r if (r := relative_half_width(times)) is not None else None
            point["items_per_s"] = len(texts) / med
            if all(t is not None for t in tokens):
                point["tokens"] = float(np.mean([t for t in tokens if t is not None]))
                point["tokens_per_s"] = point["tokens"] / med
                params_count = target.describe().parameters
                # A transformer's forward pass costs about 2 FLOPs per parameter per token (attention's
                # own cost, which grows with length, is left out): an estimate of a floor, labelled so.
                point["gflops_estimate"] = 2.0 * params_count * point["tokens"] / med / 1e9 if params_count else None
        if watcher.padded and watcher.tokens is not None:
            point["padding_percent"] = 100.0 * (watcher.padded - watcher.tokens) / watcher.padded
        point["peak_rss_mib"] = watcher.peaks.get("rss_mib")
        point["peak_cpu_percent"] = watcher.peaks.get("cpu_percent")
        point["peak_gpu_mib"] = watcher.peaks.get("gpu_process_mib", watcher.peaks.get("gpu_used_mib"))
        if cuda and torch is not None:
            point["torch_peak_mib"] = torch.cuda.max_memory_reserved(torch.device(device)) / (1 << 20)
        return point


def _torch() -> Any:
    import torch

    return torch


def _setting(target: Target, name: str) -> Any:
    spec = getattr(target, "spec", None)
    return getattr(spec, name, None)


PADDING_SPREAD = 15.0  # percentage points of padding between a group's points that get a note


def latency_fits(points: list[SweepPoint]) -> list[LatencyFit]:
    """The sweep's latency fits (SweepResult.fits): one per combination of the axes other than lines and
    tokens, over the points measured in full (status ok, with a median and a token count).

    Each point enters once, as its median. The model describes the typical call: fitted to every
    timing, one slow call on a busy machine would pull the line and R² would measure the machine's
    noise (already in each point's interval) rather than how well a line describes the curve.
    """
    groups: dict[tuple[Any, ...], list[SweepPoint]] = {}
    for p in points:
        if p.status != "ok" or p.median_s is None or p.tokens is None:
            continue
        key = tuple(sorted((k, v) for k, v in p.params.items() if k not in ("lines", "tokens")))
        groups.setdefault(key, []).append(p)
    out = []
    for key, pts in groups.items():
        lines = [float(p.lines) for p in pts]
        toks = [float(p.tokens or 0.0) for p in pts]
        secs = [float(p.median_s or 0.0) for p in pts]
        fit = fit_latency(lines, toks, secs)
        if fit is None:
            continue
        d = fit.as_dict()
        extra: dict[str, Any] = {}
        padding = [float(p.padding_percent) for p in pts if p.padding_percent is not None]
        # A batch is padded to its longest text, and a short list of mixed lengths is padded far
        # more than a long one (whose batches group similar lengths): the line then reads that
        # extra padding as a fixed cost. Say so rather than let it pass as per-call overhead.
        if padding and max(padding) - min(padding) > PADDING_SPREAD:
            extra["padding_percent_range"] = (min(padding), max(padding))
            extra["padding_note"] = (
                f"padding differs from {min(padding):.0f} % to {max(padding):.0f} % of the tokens across these points: "
                "a batch is padded to its longest text, so part of the fixed cost is padding; texts of one length "
                "(--axis tokens=N) keep the two apart")
        out.append(LatencyFit(group=dict(key), terms=tuple(d["terms"]), coef=d["coef"], ci95={k: tuple(v) for k, v in d["ci95"].items()},
                              r2=d["r2"], observations=d["observations"], timings=sum(p.stats.count for p in pts),
                              dropped=tuple(d["dropped"]), why_dropped=d["why_dropped"], formula=d["formula"], **extra))
    return out


def _texts_of_tokens(target: Target, base: list[str], n_tokens: int, count: int) -> list[str]:
    """Texts of about n_tokens tokens each (before the special tokens), cut from the base texts."""
    tok = getattr(getattr(target, "model", None), "tokenizer", None)
    if tok is None:
        raise UserError("the tokens axis needs a model with a tokenizer")
    ids: list[int] = tok(" ".join(base), add_special_tokens=False)["input_ids"]
    if not ids:
        raise UserError("the input has no tokens to build texts from")
    while len(ids) < n_tokens * 2:
        ids = ids + ids
    out = []
    step = max(1, (len(ids) - n_tokens) // max(1, count))
    for k in range(count):
        start = (k * step) % max(1, len(ids) - n_tokens)
        out.append(tok.decode(ids[start : start + n_tokens]))
    return out


def _release(target: Target) -> None:
    """Close an alternative model and drop it, so the next one does not load beside it."""
    target.close()
    if isinstance(target, SentenceTransformerTarget):
        target.model = None


def _spec_key(device: Any, dtype: Any, truncate_dim: Any) -> tuple[Any, ...]:
    return (device, dtype, truncate_dim)


def _empty_cuda_cache() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
