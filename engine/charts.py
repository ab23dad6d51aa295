"""Charts as image files (SVG or PNG) a person can paste into a document, drawn by matplotlib
from a snapshot's own figures: a sweep's latency with its fit, its throughput, its memory curve,
and a comparison's latencies side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .files import atomic_write_bytes
from .report import largest_fit_text
from .snapshot import Snapshot

NUMERIC_AXES = ("lines", "batch", "tokens", "threads", "max_seq_length", "truncate_dim")


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display is needed or touched
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path, fmt: str) -> Path:
    import io

    buf = io.BytesIO()
    # A fixed date keeps an SVG's bytes the same for the same figures.
    fig.savefig(buf, format=fmt, bbox_inches="tight", metadata={"Date": None} if fmt == "svg" else None)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _finish(plt: Any, fig: Any, ax: Any, xlabel: str, ylabel: str, title: str, path: Path, fmt: str) -> Path:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    saved = _save(fig, path, fmt)
    plt.close(fig)
    return saved


def _x_axis(points: list[dict[str, Any]]) -> str | None:
    for axis in NUMERIC_AXES:
        if len({p["params"].get(axis) for p in points if axis in p["params"]}) > 1:
            return axis
    return None


def sweep_charts(snap: Snapshot, out_dir: Path, stem: str, fmt: str = "svg") -> list[Path]:
    sweep = snap.summary.results.get("sweep")
    if not sweep:
        return []
    points = [p for p in sweep["points"] if p.get("median_s") is not None]
    axis = _x_axis(points)
    if axis is None or not points:
        return []
    plt = _plt()
    out: list[Path] = []
    others = sorted({tuple((k, v) for k, v in p["params"].items() if k != axis) for p in points})

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for group in others:
        pts = sorted((p for p in points if tuple((k, v) for k, v in p["params"].items() if k != axis) == group), key=lambda p: p["params"][axis])
        xs = [p["params"][axis] for p in pts]
        ys = [p["median_s"] * 1e3 for p in pts]
        lo = [(p["median_s"] - (p["ci95_s"] or [p["median_s"]] * 2)[0]) * 1e3 for p in pts]
        hi = [((p["ci95_s"] or [p["median_s"]] * 2)[1] - p["median_s"]) * 1e3 for p in pts]
        name = " ".join(f"{k}={v}" for k, v in group) or "measured"
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", capsize=3, label=f"{name} (median, 95 % CI)")
        fit = next((f for f in sweep.get("fits", []) if tuple(sorted(f["group"].items())) == tuple(sorted(group))), None)
        if fit is not None and axis == "lines" and fit["terms"] in (["fixed", "per_line"], ["fixed"]):
            grid = [min(xs) + (max(xs) - min(xs)) * k / 50 for k in range(51)]
            c = fit["coef"]
            ax.plot(grid, [(c["fixed"] + c.get("per_line", 0.0) * g) * 1e3 for g in grid], "-", alpha=0.7,
                    label=f"fit: {fit['formula']}" + (f" (R² {fit['r2']:.3f})" if fit["r2"] is not None else ""))
    title = f"{snap.target.get('model_name')} on {snap.target.get('device_resolved')}: latency by {axis}"
    out.append(_finish(plt, fig, ax, axis, "encode call latency (ms)", title, out_dir / f"{stem}-latency.{fmt}", fmt))

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for group in others:
        pts = sorted((p for p in points if tuple((k, v) for k, v in p["params"].items() if k != axis) == group), key=lambda p: p["params"][axis])
        ax.plot([p["params"][axis] for p in pts], [p["items_per_s"] for p in pts], "o-", label=" ".join(f"{k}={v}" for k, v in group) or "items/s")
    out.append(_finish(plt, fig, ax, axis, "items per second", "throughput", out_dir / f"{stem}-throughput.{fmt}", fmt))

    limit = sweep.get("memory_limit")
    if limit:
        curve = limit["curve"]
        fig, ax = plt.subplots(figsize=(7, 4.2))
        xs = [c[limit["axis"]] for c in curve]
        ax.plot(xs, [c.get("peak_rss_mib") for c in curve], "o-", label="peak RSS (sampled)")
        if any(c.get("peak_gpu_mib") is not None for c in curve):
            ax.plot(xs, [c.get("peak_gpu_mib") for c in curve], "s-", label="peak GPU (NVML)")
        if limit.get("ceiling_mib"):
            ax.axhline(limit["ceiling_mib"], color="red", linestyle="--", label="RAM ceiling")
        ax.set_xscale("log", base=2)
        title = f"memory up to the limit: largest {limit['axis']} that fits = {largest_fit_text(limit)}"
        out.append(_finish(plt, fig, ax, limit["axis"], "MiB", title, out_dir / f"{stem}-memory.{fmt}", fmt))
    return out


def compare_chart(snaps: list[Snapshot], names: list[str], out_dir: Path, stem: str, fmt: str = "svg") -> list[Path]:
    """Each run's encode-call latency: median with its 95 % interval, and every timed call."""
    from .sweepstats import median_ci

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    drawn = False
    for i, s in enumerate(snaps):
        samples = (s.summary.encode.get("stats") or {}).get("samples_s") or []
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
    path = _save(fig, out_dir / f"{stem}-latency.{fmt}", fmt)
    plt.close(fig)
    return [path]
