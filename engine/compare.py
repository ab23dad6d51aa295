"""Snapshots side by side: the same figures with their ratios to the first, whether each latency
difference is beyond the noise, and what differs in how they were measured.

Every figure comes from the snapshots; the tests (Mann–Whitney U on the timed calls of the two
runs) are scipy's.
"""

from __future__ import annotations

from typing import Any

from .errors import UserError
from .report import Cell, Table
from .snapshot import Snapshot
from .sweepstats import differ

ENV_KEYS = (
    ("hostname", "host"),
    ("cpu_model", "CPU"),
    ("cpu_cores_logical", "logical cores"),
    ("ram_total_mib", "RAM MiB"),
    ("python", "python"),
    ("torch_threads", "torch threads"),
)


def _letter(i: int) -> str:
    return chr(ord("A") + i) if i < 26 else f"#{i + 1}"


def _phase_s(s: Snapshot, name: str) -> float | None:
    return next((p.duration_s for p in s.summary.phases if p.name == name and p.parent_id == 0), None)


def _figures(s: Snapshot) -> dict[str, float | None]:
    sm = s.summary
    stats = sm.encode.get("stats") or {}
    peaks = sm.peaks
    gpu = peaks.get("gpu_process_mib") or peaks.get("gpu_used_mib")
    out: dict[str, float | None] = {
        "import s": _phase_s(s, "import"),
        "load s": _phase_s(s, "load"),
        "encode call p50 s": stats.get("p50_s"),
        "encode call mean s": stats.get("mean_s"),
        "encode call p95 s": stats.get("p95_s"),
        "items/s": sm.throughput.get("items_per_s"),
        "tokens/s": sm.throughput.get("tokens_per_s"),
        "peak RSS MiB": peaks["rss_mib"].sampled if "rss_mib" in peaks else None,
        "peak GPU MiB": gpu.sampled if gpu else None,
    }
    speed = sm.results.get("speed")
    if speed:
        out["speed avg_words_per_sec"] = speed.get("avg_words_per_sec")
    for key, r in sm.results.items():
        if key.startswith("mteb:") and isinstance(r.get("main_score"), float):
            out[f"{key.removeprefix('mteb:')} {r.get('main_score_name')}"] = r["main_score"]
    return out


LATENCY_ROWS = ("encode call p50 s", "encode call mean s", "encode call p95 s", "items/s", "tokens/s", "speed avg_words_per_sec")


# Workloads whose timed calls are alike, so their pooled latency is one figure; a sweep's, an
# MTEB run's or a --vs run's calls are not (their own tables compare them).
POOLABLE = ("encode", "speed", "similarity")


def _workload_key(s: Snapshot) -> tuple[Any, ...]:
    w = s.workload
    return (w.get("name"), w.get("input"), w.get("lines"), w.get("mode"), w.get("prompt_name"), w.get("prompt"), w.get("batch_size"),
            str(w.get("axes")), str(w.get("tasks")), w.get("vs_model"))


def comparable(snaps: list[Snapshot]) -> tuple[bool, str]:
    """Whether the runs' latencies can be compared, and if not, the one sentence that says why."""
    names = [str(s.workload.get("name")) for s in snaps]
    if len(set(names)) > 1:
        return False, (
            f"these snapshots ran different workloads ({', '.join(names)}): their latencies measure different work, "
            "so only import, load and memory are compared"
        )
    keys = [_workload_key(s) for s in snaps]
    if len(set(keys)) > 1:
        diffs = []
        for label, idx in (("input", 1), ("lines", 2), ("mode", 3), ("prompt name", 4), ("prompt", 5), ("batch size", 6),
                           ("axes", 7), ("tasks", 8), ("--vs model", 9)):
            vals = {str(k[idx]) for k in keys}
            if len(vals) > 1:
                diffs.append(f"{label} {' vs '.join(str(k[idx]) for k in keys)}")
        return False, f"the {names[0]} runs differ in {'; '.join(diffs)}: latencies are not compared, only import, load and memory"
    return True, ""


def compare_tables(snaps: list[Snapshot], names: list[str] | None = None) -> list[Table]:
    if len(snaps) < 2:
        raise UserError("compare needs at least two snapshots")
    names = names or [s.run_id for s in snaps]
    letters = [_letter(i) for i in range(len(snaps))]
    runs = Table("compare-runs", "Runs compared", ["", "snapshot", "workload", "model", "device", "dtype", "status"])
    for letter, name, s in zip(letters, names, snaps):
        runs.rows.append([letter, name, s.workload.get("name"), s.target.get("model_name"),
                          s.target.get("device_resolved") or s.target.get("device"), s.target.get("dtype"), s.status])
    tables = [runs]

    ok, why = comparable(snaps)
    pooled = ok and str(snaps[0].workload.get("name")) in POOLABLE
    figs = [_figures(s) for s in snaps]
    cols = ["figure", "A"]
    for letter in letters[1:]:
        cols += [letter, f"{letter}/A"]
    cols.append("beyond noise")
    fig_table = Table("compare", "Figures side by side (ratios to A)", cols)
    for key in figs[0]:
        if not pooled and key in LATENCY_ROWS:
            continue
        if all(f.get(key) is None for f in figs):
            continue
        row: list[Cell] = [key, figs[0].get(key)]
        for f in figs[1:]:
            v, a = f.get(key), figs[0].get(key)
            row += [v, (v / a) if isinstance(v, (int, float)) and isinstance(a, (int, float)) and a else None]
        row.append(_noise(snaps) if pooled and key == "encode call p50 s" else "")
        fig_table.rows.append(row)
    tables.append(fig_table)
    if not ok:
        tables.append(Table("compare-notes", "Why some figures are not compared", ["note"], [[why]]))

    sweeps_compared = ok and all(s.summary.results.get("sweep") for s in snaps)
    if sweeps_compared:
        tables.append(_sweep_table(snaps, letters))
    if pooled or sweeps_compared:
        # The rank test knows only the spread inside each run. A second process on the same machine
        # can land in another steady state (memory layout, the host's load), so say what it cannot see.
        tables.append(Table("compare-caveat", "Reading \"beyond noise\"", ["note"], [[
            "the test sees only the spread of each run's own calls; separate runs of the same work on one machine "
            "can differ by more than that, so repeat a run before trusting a small difference, or run both models "
            "in one process with --vs (A B B A …)"]]))

    env = Table("compare-environment", "How they were measured: what differs", ["setting", *letters])
    for key, label in ENV_KEYS:
        vals = [s.environment.get(key) for s in snaps]
        if len({str(v) for v in vals}) > 1:
            env.rows.append([label, *vals])
    gpus = [", ".join(g.get("name", "") for g in s.environment.get("gpus", [])) or "none" for s in snaps]
    if len(set(gpus)) > 1:
        env.rows.append(["GPU", *gpus])
    for key in ("device_resolved", "dtype", "truncate_dim", "max_seq_length"):
        vals = [s.target.get(key) for s in snaps]
        if len({str(v) for v in vals}) > 1:
            env.rows.append([key.replace("_resolved", ""), *vals])
    libs = sorted({lib for s in snaps for lib in (s.environment.get("libraries") or {})})
    for lib in libs:
        vals = [(s.environment.get("libraries") or {}).get(lib) for s in snaps]
        if len({str(v) for v in vals}) > 1:
            env.rows.append([lib, *vals])
    if not env.rows:
        env.rows.append(["(nothing: same machine, libraries and settings)", *["" for _ in snaps]])
    tables.append(env)
    return tables


def _noise(snaps: list[Snapshot]) -> str:
    """Each run's timed calls against A's: Mann–Whitney U."""
    base = (snaps[0].summary.encode.get("stats") or {}).get("samples_s") or []
    parts = []
    for i, s in enumerate(snaps[1:], 1):
        other = (s.summary.encode.get("stats") or {}).get("samples_s") or []
        d = differ(base, other)
        if d["p_value"] is None:
            parts.append(f"{_letter(i)}: {d['why']}")
        else:
            parts.append(f"{_letter(i)}: {'yes' if d['beyond_noise'] else 'no'} (p={d['p_value']:.3g})")
    return "; ".join(parts)


def _sweep_table(snaps: list[Snapshot], letters: list[str]) -> Table:
    """Point by point, matched by their axis values."""
    cols = ["point", "A median s"]
    for letter in letters[1:]:
        cols += [f"{letter} median s", f"{letter}/A", f"{letter} beyond noise"]
    table = Table("compare-sweep", "Sweep points side by side", cols)
    by_label = [{p["label"]: p for p in (s.summary.results["sweep"]["points"])} for s in snaps]
    for label, pa in by_label[0].items():
        row: list[Cell] = [label, pa.get("median_s")]
        for other in by_label[1:]:
            pb = other.get(label)
            if pb is None or pa.get("median_s") is None or pb.get("median_s") is None:
                row += [None, None, "not in both"]
                continue
            d = differ(pa["stats"]["samples_s"], pb["stats"]["samples_s"])
            row += [pb["median_s"], pb["median_s"] / pa["median_s"],
                    "too few timings" if d["p_value"] is None else f"{'yes' if d['beyond_noise'] else 'no'} (p={d['p_value']:.3g})"]
        table.rows.append(row)
    return table
