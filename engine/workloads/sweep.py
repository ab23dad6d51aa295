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
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..context import RunContext
from ..errors import UserError
from ..events import BatchTimed, Event, Note, ResourceSample, Result
from ..files import read_lines
from ..stats import describe
from ..sweepstats import StopRule, fit_latency, median_ci, relative_half_width
from ..targets import DEVICES, DTYPES, EncodeMode, SentenceTransformerTarget, Target
from .encode import sample_corpus

INT_AXES = ("lines", "batch", "tokens", "threads", "truncate_dim", "max_seq_length")
SPEC_AXES = ("device", "dtype", "truncate_dim")  # a new value means loading the model again
AXES = ("device", "dtype", "truncate_dim", "max_seq_length", "threads", "batch", "tokens", "lines")  # outermost first
OOM_AXES = ("batch", "tokens")
MAX_GROWTH = 1 << 16


def parse_axes(specs: list[str]) -> dict[str, list[Any]]:
    """``["lines=25,50,100", "threads=1,2"]`` → {"lines": [25, 50, 100], "threads": [1, 2]}; one sentence on bad input."""
    axes: dict[str, list[Any]] = {}
    for spec in specs:
        name, sep, raw = spec.partition("=")
        name = name.strip().replace("-", "_")
        if not sep:
            raise UserError(f"axis '{spec}' needs values: NAME=V1,V2,… (e.g. lines=25,50,100)")
        if name not in AXES:
            raise UserError(f"unknown axis '{name}': use one of {', '.join(sorted(AXES))}")
        if name in axes:
            raise UserError(f"axis '{name}' is given twice")
        values = [v.strip() for v in raw.split(",") if v.strip()]
        if not values:
            raise UserError(f"axis '{name}' has no values")
        parsed: list[Any] = []
        for v in values:
            if name in INT_AXES:
                try:
                    n = int(v)
                except ValueError:
                    raise UserError(f"axis '{name}' takes whole numbers, not '{v}'") from None
                if n < 1:
                    raise UserError(f"axis '{name}' takes numbers of at least 1, not {n}")
                parsed.append(n)
            elif name == "device":
                if v.split(":", 1)[0] not in DEVICES or v == "auto":
                    raise UserError(f"axis 'device' takes cpu, cuda, cuda:N or mps, not '{v}'")
                parsed.append(v)
            else:
                if v not in DTYPES:
                    raise UserError(f"axis 'dtype' takes {', '.join(DTYPES)}, not '{v}'")
                parsed.append(v)
        if len(set(parsed)) != len(parsed):
            raise UserError(f"axis '{name}' repeats a value")
        axes[name] = parsed
    if not axes:
        raise UserError("a sweep needs at least one axis: --axis NAME=V1,V2,… (e.g. --axis lines=25,50,100,200)")
    return axes


class PointWatcher:
    """Subscribed to the run's events for the length of one point: its sampled peaks and the
    token and padding counts of its timed batches."""

    def __init__(self) -> None:
        self.peaks: dict[str, float] = {}
        self.tokens = 0
        self.padded = 0

    def __call__(self, e: Event) -> None:
        if isinstance(e, ResourceSample):
            for name in ("rss_mib", "gpu_process_mib", "gpu_used_mib", "torch_reserved_mib", "torch_allocated_mib", "cpu_percent"):
                v = getattr(e, name)
                if v is not None and v > self.peaks.get(name, -1.0):
                    self.peaks[name] = float(v)
        elif isinstance(e, BatchTimed) and not e.warmup:
            self.tokens += e.tokens
            self.padded += e.padded_tokens


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError) or exc.__class__.__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


@dataclass
class SweepWorkload:
    axes: dict[str, list[Any]]
    input: str | None = None
    mode: EncodeMode = "plain"
    prompt_name: str | None = None
    batch_size: int = 32
    warmups: int = 1
    target_ci: float = 0.02
    budget_s: float = 30.0
    max_repeats: int = 60
    until_oom: bool = False
    ram_ceiling_mib: float | None = None
    name: str = "sweep"
    _texts: list[str] = field(default_factory=list, repr=False)

    def prepare(self) -> None:
        if not self.axes:
            raise UserError("a sweep needs at least one axis: --axis NAME=V1,V2,… (e.g. --axis lines=25,50,100,200)")
        if "batch" in self.axes and self.batch_size != 32:
            raise UserError("batch is both an axis and --batch-size: give one of them")
        if not 0 < self.target_ci < 1:
            raise UserError(f"--target-ci is a share of the median between 0 and 1 (0.02 is ±2 %), not {self.target_ci}")
        if self.budget_s <= 0:
            raise UserError(f"--budget must be a positive number of seconds per point, not {self.budget_s}")
        if self.until_oom:
            grow = [a for a in OOM_AXES if a in self.axes]
            if len(grow) != 1:
                raise UserError("--until-oom grows exactly one axis, batch or tokens: give --axis batch=… or --axis tokens=…")
            if len(self.axes) > 1:
                raise UserError(f"--until-oom grows {grow[0]} alone; drop the other axes ({', '.join(a for a in self.axes if a != grow[0])})")
        if self.ram_ceiling_mib is not None and not self.until_oom:
            raise UserError("--ram-ceiling goes with --until-oom")
        self._texts = sample_corpus() if self.input is None else read_lines(self.input)

    def prompt_names(self) -> list[str]:
        return [self.prompt_name] if self.prompt_name else []

    def settings(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "axes": self.axes,
            "input": self.input if self.input is not None else "built-in sample corpus",
            "mode": self.mode,
            "prompt_name": self.prompt_name,
            "batch_size": self.batch_size,
            "warmups": self.warmups,
            "target_ci_percent": 100 * self.target_ci,
            "budget_s_per_point": self.budget_s,
            "until_oom": self.until_oom,
            "ram_ceiling_mib": self.ram_ceiling_mib,
        }

    # -- the grid ---------------------------------------------------------------------------------
    def _grid(self) -> list[dict[str, Any]]:
        names = [a for a in AXES if a in self.axes]
        return [dict(zip(names, combo)) for combo in itertools.product(*(self.axes[a] for a in names))]

    def _texts_for(self, target: Target, point: dict[str, Any]) -> list[str]:
        base = self._texts
        if "tokens" in point:
            base = _texts_of_tokens(target, base, int(point["tokens"]), count=max(len(base), point.get("batch", self.batch_size)))
        n = int(point.get("lines") or (point.get("batch") if self.until_oom else 0) or len(base))
        return [base[i % len(base)] for i in range(n)]

    # -- the run ----------------------------------------------------------------------------------
    def run(self, ctx: RunContext, target: Target) -> None:
        if not self._texts:
            self.prepare()
        import torch

        base_threads = torch.get_num_threads()
        cores = os.cpu_count() or 1
        if any(t > cores for t in self.axes.get("threads", [])):
            ctx.emit(Note(t_ns=ctx.now(), text=f"threads above this machine's {cores} cores are measured as asked, but they only contend", level="warning"))
        rule = StopRule(target=self.target_ci, budget_s=self.budget_s, max_repeats=self.max_repeats)
        if self.until_oom:
            rule = StopRule(target=self.target_ci, budget_s=min(self.budget_s, 10.0), min_repeats=3, max_repeats=3)
        first_key = _spec_key(replace(target.spec, device=str(target.describe().get("device_resolved") or target.spec.device)))
        loaded: dict[tuple[Any, ...], Target] = {first_key: target}
        points: list[dict[str, Any]] = []
        grid = self._grid()
        grow_axis = next((a for a in OOM_AXES if a in self.axes), None) if self.until_oom else None
        stop_reason = ""
        try:
            stop_reason = self._points(ctx, target, loaded, grid, grow_axis, rule, base_threads, points)
        finally:
            torch.set_num_threads(base_threads)
            for t in [t for t in loaded.values() if t is not target]:
                _release(t)
            loaded.clear()
            gc.collect()
            _empty_cuda_cache()
        data: dict[str, Any] = {"axes": self.axes, "points": points, "parameters": target.describe().get("parameters")}
        data["fits"] = _fits(points)
        if grow_axis is not None:
            fitting = [p for p in points if p["status"] == "ok"]
            data["memory_limit"] = {
                "axis": grow_axis,
                "largest_that_fits": fitting[-1]["params"][grow_axis] if fitting else None,
                "stopped": stop_reason,
                "ceiling_mib": self.ram_ceiling_mib,
                "curve": [
                    {grow_axis: p["params"][grow_axis], "peak_rss_mib": p.get("peak_rss_mib"), "peak_gpu_mib": p.get("peak_gpu_mib"),
                     "torch_peak_mib": p.get("torch_peak_mib"), "status": p["status"]}
                    for p in points
                ],
            }
            if not fitting:
                first = points[0]["params"][grow_axis] if points else None
                ctx.emit(Note(t_ns=ctx.now(), text=f"nothing fits: {grow_axis} {first}, the first point, already failed ({stop_reason})", level="warning"))
        ctx.emit(Result(t_ns=ctx.now(), name="sweep", data=data))

    def _points(self, ctx: RunContext, target: Target, loaded: dict[tuple[Any, ...], Target], grid: list[dict[str, Any]],
                grow_axis: str | None, rule: StopRule, base_threads: int, points: list[dict[str, Any]]) -> str:
        """Measure the grid (and, in a memory search, grow past it); returns why a search stopped."""
        stop_reason = ""
        i = 0
        while True:
            if i < len(grid):
                params = grid[i]
            elif grow_axis is not None and not stop_reason:
                last = points[-1]["params"][grow_axis]
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
            point = self._measure(ctx, current, params, i, len(grid), rule, base_threads)
            points.append(point)
            i += 1
            # The table so far, for the dashboard; the last "sweep" result is the whole sweep.
            ctx.emit(Result(t_ns=ctx.now(), name="sweep", data={"axes": self.axes, "points": list(points), "partial": True}))
            if grow_axis is not None and point["status"] == "oom":
                stop_reason = f"out of memory at {grow_axis} {params[grow_axis]}"
                break
            if grow_axis is not None and self.ram_ceiling_mib is not None and (point.get("peak_rss_mib") or 0) > self.ram_ceiling_mib:
                point["status"] = "over-ceiling"
                stop_reason = f"peak RSS {point['peak_rss_mib']:.0f} MiB crossed the {self.ram_ceiling_mib:.0f} MiB ceiling at {grow_axis} {params[grow_axis]}"
                break
        return stop_reason

    def _target_for(self, ctx: RunContext, loaded: dict[tuple[Any, ...], Target], first: Target, params: dict[str, Any]) -> Target:
        spec = first.spec
        changes = {k: params[k] for k in SPEC_AXES if k in params}
        if not changes:
            return first
        spec = replace(spec, **changes)
        key = _spec_key(spec)
        if key in loaded:
            return loaded[key]
        # One extra model at a time: the previous alternative is freed before the next loads.
        for k in [k for k in loaded if loaded[k] is not first]:
            _release(loaded.pop(k))
        gc.collect()
        _empty_cuda_cache()
        t = SentenceTransformerTarget(spec)
        t.load(ctx)
        loaded[key] = t
        return t

    def _measure(self, ctx: RunContext, target: Target, params: dict[str, Any], i: int, total: int, rule: StopRule, base_threads: int) -> dict[str, Any]:
        import torch

        label = " ".join(f"{k}={v}" for k, v in params.items())
        texts = self._texts_for(target, params)
        batch = int(params.get("batch") or self.batch_size)
        model = getattr(target, "model", None)
        old_max = getattr(model, "max_seq_length", None)
        if "max_seq_length" in params and model is not None:
            model.max_seq_length = int(params["max_seq_length"])
        torch.set_num_threads(int(params.get("threads") or base_threads))
        watcher = PointWatcher()
        ctx.bus.subscribe(watcher)
        device = str(target.describe().get("device_resolved", ""))
        cuda = device.startswith("cuda")
        if cuda:
            torch.cuda.reset_peak_memory_stats(torch.device(device))
        point: dict[str, Any] = {"params": params, "label": label, "lines": len(texts), "batch_size": batch}
        times: list[float] = []
        tokens: list[int] = []
        detail = f"{i + 1}/{total} · {label}" if i < total else f"{i + 1} · {label} (growing)"
        try:
            with ctx.phase("point", detail) as pid:
                point["phase_id"] = pid
                kw: dict[str, Any] = {"mode": self.mode, "prompt_name": self.prompt_name, "batch_size": batch}
                for _ in range(self.warmups):
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
            if not _is_oom(exc):
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
            point["ci95_s"] = list(ci) if ci else None
            point["ci_half_width_percent"] = 100 * r if (r := relative_half_width(times)) is not None else None
            point["tokens"] = float(np.mean(tokens))
            point["items_per_s"] = len(texts) / med
            point["tokens_per_s"] = point["tokens"] / med
            params_count = target.describe().get("parameters")
            # A transformer's forward pass costs about 2 FLOPs per parameter per token (attention's
            # own cost, which grows with length, is left out): a floor on what was achieved.
            point["gflops"] = 2.0 * params_count * point["tokens"] / med / 1e9 if params_count else None
        point["padding_percent"] = 100.0 * (watcher.padded - watcher.tokens) / watcher.padded if watcher.padded else 0.0
        point["peak_rss_mib"] = watcher.peaks.get("rss_mib")
        point["peak_cpu_percent"] = watcher.peaks.get("cpu_percent")
        point["peak_gpu_mib"] = watcher.peaks.get("gpu_process_mib", watcher.peaks.get("gpu_used_mib"))
        if cuda:
            point["torch_peak_mib"] = torch.cuda.max_memory_reserved(torch.device(device)) / (1 << 20)
        return point


PADDING_SPREAD = 15.0  # percentage points of padding between a group's points that get a note


def _fits(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One latency fit per combination of the axes other than lines and tokens.

    Each point enters once, as its median. The model describes the typical call: fitted to every
    timing, one slow call on a busy machine would pull the line and R² would measure the machine's
    noise (already in each point's interval) rather than how well a line describes the curve.
    """
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for p in points:
        if p["status"] != "ok":
            continue
        key = tuple(sorted((k, v) for k, v in p["params"].items() if k not in ("lines", "tokens")))
        groups.setdefault(key, []).append(p)
    out = []
    for key, pts in groups.items():
        lines = [float(p["lines"]) for p in pts]
        toks = [float(p["tokens"]) for p in pts]
        secs = [float(p["median_s"]) for p in pts]
        fit = fit_latency(lines, toks, secs)
        if fit is not None:
            entry = {"group": dict(key), **fit.as_dict(), "timings": sum(len(p["stats"]["samples_s"]) for p in pts)}
            padding = [float(p["padding_percent"]) for p in pts if p.get("padding_percent") is not None]
            # A batch is padded to its longest text, and a short list of mixed lengths is padded far
            # more than a long one (whose batches group similar lengths): the line then reads that
            # extra padding as a fixed cost. Say so rather than let it pass as per-call overhead.
            if padding and max(padding) - min(padding) > PADDING_SPREAD:
                entry["padding_percent_range"] = [min(padding), max(padding)]
                entry["padding_note"] = (
                    f"padding differs from {min(padding):.0f} % to {max(padding):.0f} % of the tokens across these points: "
                    "a batch is padded to its longest text, so part of the fixed cost is padding; texts of one length "
                    "(--axis tokens=N) keep the two apart")
            out.append(entry)
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


def _spec_key(spec: Any) -> tuple[Any, ...]:
    return (spec.device, spec.dtype, spec.truncate_dim)


def _empty_cuda_cache() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
