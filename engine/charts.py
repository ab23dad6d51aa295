"""Charts as image files (SVG or PNG) a person can paste into a document, drawn by matplotlib
from a snapshot's own figures: a sweep's latency with its fit, its throughput, its memory curve,
and a comparison's latencies side by side."""

from __future__ import annotations

from pathlib import Path
from collections.abc import Sequence
from typing import Any

from .files import atomic_write_bytes, check_output_path
from .report import largest_fit_text
from .results import KneeResult, SweepPoint, SweepResult
from .snapshot import Snapshot

NUMERIC_AXES = ("lines", "batch", "tokens", "threads", "max_seq_length", "truncate_dim")


def quiet_matplotlib() -> None:
    """matplotlib caches its font list in the user's cache and logs a warning to stderr when it cannot
    (a full disk, a read-only home): the chart is drawn all the same, and embprof's own error about the
    file it could not write is the one line a user should read."""
    import logging

    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)


def _plt() -> Any:
    quiet_matplotlib()
    import matplotlib

    matplotlib.use("Agg")  # files only: no display is needed or touched
    import matplotlib.pyplot as plt

    return plt


def figure_bytes(fig: Any, fmt: str) -> bytes:
    """A figure as SVG or PNG bytes; no date in an SVG, so the same figures give the same bytes."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, bbox_inches="tight", metadata={"Date": None} if fmt == "svg" else None)
    return buf.getvalue()


def _save(fig: Any, path: Path, fmt: str, avoid: Sequence[str | Path] = ()) -> Path:
    # A chart is written beside the report, under a name made from it: never over one of the inputs.
    check_output_path(path, list(avoid), "chart file")
    atomic_write_bytes(path, figure_bytes(fig, fmt))
    return path


def _finish(plt: Any, fig: Any, ax: Any, xlabel: str, ylabel: str, title: str, path: Path, fmt: str,
            avoid: Sequence[str | Path] = ()) -> Path:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    saved = _save(fig, path, fmt, avoid)
    plt.close(fig)
    return saved


def _x_axis(points: list[SweepPoint]) -> str | None:
    for axis in NUMERIC_AXES:
        if len({p.params.get(axis) for p in points if axis in p.params}) > 1:
            return axis
    return None


def _others(p: SweepPoint, axis: str) -> tuple[tuple[str, int | str], ...]:
    return tuple((k, v) for k, v in p.params.items() if k != axis)


def _x(p: SweepPoint, axis: str) -> float:
    value = p.params[axis]
    return float(value) if isinstance(value, (int, float)) else float(str(value))


def _group_order(group: tuple[tuple[str, int | str], ...]) -> tuple[tuple[str, int, int, str], ...]:
    """Numbers in numeric order, names after them: a sweep's axis values may be either."""
    return tuple((k, 0, v, "") if isinstance(v, int) else (k, 1, 0, str(v)) for k, v in group)


def sweep_charts(snap: Snapshot, out_dir: Path, stem: str, fmt: str = "svg", avoid: Sequence[str | Path] = ()) -> list[Path]:
    sweep = snap.summary.results.get("sweep")
    if not isinstance(sweep, SweepResult):
        return []
    points = [p for p in sweep.points if p.median_s is not None]
    axis = _x_axis(points)
    if axis is None or not points:
        return []
    plt = _plt()
    out: list[Path] = []
    others = sorted({_others(p, axis) for p in points}, key=_group_order)

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for group in others:
        pts = sorted((p for p in points if _others(p, axis) == group), key=lambda p: _x(p, axis))
        xs = [_x(p, axis) for p in pts]
        meds = [p.median_s or 0.0 for p in pts]  # every point here has a median (filtered above)
        cis = [p.ci95_s or (m, m) for p, m in zip(pts, meds)]
        ys = [m * 1e3 for m in meds]
        lo = [(m - ci[0]) * 1e3 for m, ci in zip(meds, cis)]
        hi = [(ci[1] - m) * 1e3 for m, ci in zip(meds, cis)]
        name = " ".join(f"{k}={v}" for k, v in group) or "measured"
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", capsize=3, label=f"{name} (median, 95 % CI)")
        fit = next((f for f in sweep.fits if tuple(sorted(f.group.items())) == tuple(sorted(group))), None)
        if fit is not None and axis == "lines" and list(fit.terms) in (["fixed", "per_line"], ["fixed"]):
            grid = [min(xs) + (max(xs) - min(xs)) * k / 50 for k in range(51)]
            c = fit.coef
            ax.plot(grid, [(c["fixed"] + c.get("per_line", 0.0) * g) * 1e3 for g in grid], "-", alpha=0.7,
                    label=f"fit: {fit.formula}" + (f" (R² {fit.r2:.3f})" if fit.r2 is not None else ""))
    title = f"{snap.target.model_name} on {snap.target.device_resolved or snap.target.device or snap.target.url}: latency by {axis}"
    out.append(_finish(plt, fig, ax, axis, "encode call latency (ms)", title, out_dir / f"{stem}-latency.{fmt}", fmt, avoid))

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for group in others:
        pts = sorted((p for p in points if _others(p, axis) == group and p.items_per_s is not None), key=lambda p: _x(p, axis))
        ax.plot([_x(p, axis) for p in pts], [p.items_per_s for p in pts], "o-", label=" ".join(f"{k}={v}" for k, v in group) or "items/s")
    out.append(_finish(plt, fig, ax, axis, "items per second", "throughput", out_dir / f"{stem}-throughput.{fmt}", fmt, avoid))

    limit = sweep.memory_limit
    if limit is not None and limit.curve:
        curve = limit.curve
        fig, ax = plt.subplots(figsize=(7, 4.2))
        rss = [c for c in curve if c.peak_rss_mib is not None]  # an unmeasured peak is left out, never drawn as 0
        ax.plot([c.value for c in rss], [c.peak_rss_mib for c in rss], "o-", label="peak RSS (sampled)")
        gpu = [c for c in curve if c.peak_gpu_mib is not None]
        if gpu:
            ax.plot([c.value for c in gpu], [c.peak_gpu_mib for c in gpu], "s-", label="peak GPU (NVML)")
        if limit.ceiling_mib:
            ax.axhline(limit.ceiling_mib, color="red", linestyle="--", label="RAM ceiling")
        ax.set_xscale("log", base=2)
        title = f"memory up to the limit: largest {limit.axis} that fits = {largest_fit_text(limit)}"
        out.append(_finish(plt, fig, ax, limit.axis, "MiB", title, out_dir / f"{stem}-memory.{fmt}", fmt, avoid))
    return out


def knee_charts(snap: Snapshot, out_dir: Path, stem: str, fmt: str = "svg", avoid: Sequence[str | Path] = ()) -> list[Path]:
    """A knee search's curve: answered/s against offered/s (the diagonal is keeping up), p50 and p99 on a
    second axis, the objective's p99 and the sustainable rate marked."""
    knee = snap.summary.results.get("knee")
    if not isinstance(knee, KneeResult):
        return []
    pts = sorted((st for st in knee.steps if st.achieved_per_s is not None), key=lambda st: st.offered_per_s)
    if not pts:
        return []
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    xs = [st.offered_per_s for st in pts]
    ax.plot(xs, xs, color="0.7", linestyle=":", label="offered (keeping up)")
    ax.plot(xs, [st.achieved_per_s for st in pts], marker="o", color="tab:blue", label="answered/s")
    if knee.sustainable_per_s is not None:
        ax.axvline(knee.sustainable_per_s, color="tab:green", linestyle="--", label=f"sustainable {knee.sustainable_per_s:,.4g}/s")
    lat = ax.twinx()
    for attr, color, name in (("p50_s", "tab:orange", "p50"), ("p99_s", "tab:red", "p99")):
        pairs = [(st.offered_per_s, getattr(st, attr) * 1e3) for st in pts if getattr(st, attr) is not None]
        if pairs:
            lat.plot([x for x, _ in pairs], [y for _, y in pairs], marker=".", color=color, label=f"{name} ms (from when due)")
    lat.axhline(knee.objective_p99_s * 1e3, color="tab:red", linestyle=":", alpha=0.6, label="objective p99")
    lat.set_ylabel("latency ms")
    lat.set_yscale("log")
    handles, labels = lat.get_legend_handles_labels()
    ax.legend(*[a + b for a, b in zip(ax.get_legend_handles_labels(), (handles, labels))], fontsize=8, loc="upper left")
    ax.set_xlabel("offered requests/s (Poisson)")
    ax.set_ylabel("answered requests/s")
    ax.set_title("The knee: throughput and latency against offered load")
    ax.grid(alpha=0.3)
    saved = _save(fig, out_dir / f"{stem}-knee.{fmt}", fmt, avoid)
    plt.close(fig)
    return [saved]


def compare_chart(snaps: list[Snapshot], names: list[str], out_dir: Path, stem: str, fmt: str = "svg",
                  avoid: Sequence[str | Path] = ()) -> list[Path]:
    """Each run's encode-call latency: median with its 95 % interval, and every timed call.

    Only a run with one kind of timed call (its headline) is drawn, and only while its values were
    kept (below the exact limit): calls of different kinds are never pooled into one column."""
    from .sweepstats import median_ci

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    drawn = False
    for i, s in enumerate(snaps):
        head = s.summary.headline
        samples = head.stats.samples_s if head is not None else None
        if not samples:
            continue
        drawn = True
        ms = sorted(x * 1e3 for x in samples)
        med = ms[len(ms) // 2] if len(ms) % 2 else (ms[len(ms) // 2 - 1] + ms[len(ms) // 2]) / 2
        ci = median_ci(ms)
        ax.scatter([i] * len(ms), ms, alpha=0.35, s=12)
        ax.errorbar([i], [med], yerr=[[med - ci[0]], [ci[1] - med]] if ci else None, fmt="D", capsize=5, color="black")
    if not drawn:
        plt.close(fig)
        return []
    ax.set_xticks(range(len(snaps)), [f"{chr(65 + i)}: {n}" for i, n in enumerate(names)], rotation=15, fontsize=8)
    ax.set_ylabel("encode call latency (ms)")
    ax.set_title("timed encode calls (dots) and median with 95 % CI")
    ax.grid(alpha=0.3, axis="y")
    path = _save(fig, out_dir / f"{stem}-latency.{fmt}", fmt, avoid)
    plt.close(fig)
    return [path]
