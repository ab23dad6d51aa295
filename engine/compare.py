"""Snapshots side by side: the same figures with their ratios to the first, whether each latency
difference is beyond the noise, and what differs in how they were measured.

Every figure comes from the snapshots; the tests (Mann–Whitney U on the timed calls of the two
runs) are scipy's.
"""

from __future__ import annotations

from typing import Any

from .errors import UserError
from .report import HISTOGRAM_QUANTILES, no_tokens
from .results import MtebTask, SpeedResult, SweepResult, TrainResult
from .snapshot import Snapshot
from .sweepstats import differ
from .tables import NA, Cell, Table

ENV_KEYS = (
    ("hostname", "host"),
    ("cpu_model", "CPU"),
    ("cpu_cores_logical", "logical cores"),
    ("ram_total_mib", "RAM MiB"),
    ("python", "python"),
    ("torch_threads", "torch threads"),
)
TARGET_KEYS = ("device_resolved", "dtype", "truncate_dim", "max_seq_length")


def _letter(i: int) -> str:
    return chr(ord("A") + i) if i < 26 else f"#{i + 1}"


def _phase_s(s: Snapshot, name: str) -> float | None:
    return next((p.duration_s for p in s.summary.phases if p.name == name and p.parent_id == 0), None)


def _figures(s: Snapshot) -> dict[str, Cell]:
    """The figures compared; latency and throughput only from the run's one kind of timed call."""
    sm = s.summary
    peaks = sm.peaks
    gpu = peaks.get("gpu_process_mib") or peaks.get("gpu_used_mib")
    head = sm.headline
    out: dict[str, Cell] = {
        "import s": _phase_s(s, "import"),
        "load s": _phase_s(s, "load"),
        "encode call p50 s": head.stats.p50_s if head else None,
        "encode call mean s": head.stats.mean_s if head else None,
        "encode call p95 s": head.stats.p95_s if head else None,
        "items/s": head.items_per_s if head else None,
        "tokens/s": (head.tokens_per_s if head.tokens_per_s is not None else no_tokens(s)) if head else None,
        "peak RSS MiB": peaks["rss_mib"].sampled if "rss_mib" in peaks else None,
        "peak GPU MiB": gpu.sampled if gpu else None,
    }
    speed = sm.results.get("speed")
    if isinstance(speed, SpeedResult):
        out["speed avg_words_per_sec"] = speed.avg_words_per_sec
    for key, r in sm.results.items():
        if isinstance(r, MtebTask) and r.main_score is not None:
            out[f"{key.removeprefix('mteb:')} {r.main_score_name}"] = r.main_score
    return out


# Figures of the timed calls: compared only when every run has exactly one kind of timed call (its
# latency is then the run's); calls of different kinds are never pooled into one figure.
HEADLINE_ROWS = ("encode call p50 s", "encode call mean s", "encode call p95 s", "items/s", "tokens/s")
# Figures that need the same work on both sides (comparable()).
LATENCY_ROWS = (*HEADLINE_ROWS, "speed avg_words_per_sec")


def _number(v: Cell) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _setting(s: Snapshot, key: str) -> Any:
    """A workload's setting or fact by name: the facts first (the input as found, the lines read, the
    batch a sweep used), then the plan, then what a migrated file without a plan recorded."""
    facts = s.workload
    for source in (getattr(facts, "inner", None), facts):
        if source is not None and getattr(source, key, None) is not None:
            return getattr(source, key)
    if s.plan is not None and getattr(s.plan.workload, key, None) is not None:
        value = getattr(s.plan.workload, key)
        return {k: list(v) for k, v in value.items()} if isinstance(value, dict) else list(value) if isinstance(value, tuple) else value
    return (facts.recorded or {}).get(key)


def _workload_key(s: Snapshot) -> tuple[Any, ...]:
    return (s.workload.name, *(str(_setting(s, k)) if k in ("axes", "tasks") else _setting(s, k)
                               for k in ("input", "lines", "mode", "prompt_name", "prompt", "batch_size", "axes", "tasks", "vs_model")))


def comparable(snaps: list[Snapshot]) -> tuple[bool, str]:
    """Whether the runs' latencies can be compared, and if not, the one sentence that says why."""
    names = [s.workload.name for s in snaps]
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


def not_pooled(snaps: list[Snapshot]) -> str:
    """The sentence that says why latency rows are not compared when a run has several kinds of timed
    call (or none); "" when every run has exactly one."""
    parts = []
    for i, s in enumerate(snaps):
        timed = [g for g in s.summary.calls if g.calls]
        if len(timed) == 1:
            continue
        if not timed:
            parts.append(f"{_letter(i)} has no timed calls")
        else:
            names = ", ".join(g.group or "encode call" for g in timed[:4]) + (", …" if len(timed) > 4 else "")
            parts.append(f"{_letter(i)} has {len(timed)} kinds of timed call ({names})")
    if not parts:
        return ""
    return (f"{'; '.join(parts)}: latency over calls of different kinds is not pooled into one figure, so the latency "
            "and throughput rows are not compared; each run's own latency table shows them per kind of call")


def compare_tables(snaps: list[Snapshot], names: list[str] | None = None) -> list[Table]:
    if len(snaps) < 2:
        raise UserError("compare needs at least two snapshots")
    names = names or [s.run_id for s in snaps]
    letters = [_letter(i) for i in range(len(snaps))]
    runs = Table("compare-runs", "Runs compared", ["", "snapshot", "workload", "model", "device", "dtype", "status"])
    for letter, name, s in zip(letters, names, snaps):
        runs.rows.append([letter, name, s.workload.name, s.target.model_name,
                          s.target.device_resolved or s.target.device, s.target.dtype, s.status])
    tables = [runs]

    ok, why = comparable(snaps)
    pooled_why = not_pooled(snaps) if ok else ""
    latency = ok and not pooled_why
    figs = [_figures(s) for s in snaps]
    cols = ["figure", "A"]
    for letter in letters[1:]:
        cols += [letter, f"{letter}/A"]
    cols.append("beyond noise")
    fig_table = Table("compare", "Figures side by side (ratios to A)", cols)
    for key in figs[0]:
        if key in HEADLINE_ROWS and not latency:
            continue
        if key in LATENCY_ROWS and not ok:
            continue
        if all(_number(f.get(key)) is None for f in figs):
            continue
        a = _number(figs[0].get(key))
        row: list[Cell] = [key, figs[0].get(key)]
        for f in figs[1:]:
            v = _number(f.get(key))
            row += [f.get(key), (v / a) if v is not None and a else None]
        row.append(_noise(snaps) if latency and key == "encode call p50 s" else "")
        fig_table.rows.append(row)
    tables.append(fig_table)
    notes = [n for n in (why, pooled_why) if n]
    if notes:
        tables.append(Table("compare-notes", "Why some figures are not compared", ["note"], [[n] for n in notes]))

    if all(s.summary.training is not None or s.workload.name == "train" for s in snaps):
        tables.append(_training_table(snaps, letters))
    sweeps_compared = ok and all(isinstance(s.summary.results.get("sweep"), SweepResult) for s in snaps)
    if sweeps_compared:
        tables.append(_sweep_table(snaps, letters))
    if latency or sweeps_compared:
        # The rank test knows only the spread inside each run. A second process on the same machine
        # can land in another steady state (memory layout, the host's load), so say what it cannot see.
        tables.append(Table("compare-caveat", "Reading \"beyond noise\"", ["note"], [[
            ("the test sees only the spread of each run's own calls; separate runs of the same work on one machine "
            "can differ by more than that, so repeat a run before trusting a small difference, or run both models "
            "in one process with --vs (A B B A …)")]]))

    env = Table("compare-environment", "How they were measured: what differs", ["setting", *letters])
    for key, label in ENV_KEYS:
        vals = [s.environment.get(key) for s in snaps]
        if len({str(v) for v in vals}) > 1:
            env.rows.append([label, *vals])
    gpus = [", ".join(g.get("name", "") for g in s.environment.get("gpus", [])) or "none" for s in snaps]
    if len(set(gpus)) > 1:
        env.rows.append(["GPU", *gpus])
    where = [_ray_where(s.environment.get("ray")) for s in snaps]
    if len(set(where)) > 1:  # a matrix cell run on a Ray cluster: which node, GPUs, placement and attempt
        env.rows.append(["Ray", *where])
    for key in TARGET_KEYS:
        tvals = [getattr(s.target, key) for s in snaps]
        if len({str(v) for v in tvals}) > 1:
            env.rows.append([key.replace("_resolved", ""), *tvals])
    backends = [s.target.backend for s in snaps]
    if len(set(backends)) > 1:
        env.rows.append(["backend", *backends])
    libs = sorted({lib for s in snaps for lib in (s.environment.get("libraries") or {})})
    for lib in libs:
        vals = [(s.environment.get("libraries") or {}).get(lib) for s in snaps]
        if len({str(v) for v in vals}) > 1:
            env.rows.append([lib, *vals])
    migrated = [f"schema {s.migrated_from}" if s.migrated_from is not None else "" for s in snaps]
    if any(migrated):
        env.rows.append(["migrated from", *migrated])
    if not env.rows:
        env.rows.append(["(nothing: same machine, libraries and settings)", *["" for _ in snaps]])
    tables.append(env)
    return tables


def _ray_where(ray: Any) -> str:
    if not isinstance(ray, dict):
        return "not on Ray"
    parts = [f"node {str(ray.get('node_id') or '?')[:12]}"]
    if ray.get("gpu_ids"):
        parts.append("GPU " + ",".join(str(g) for g in ray["gpu_ids"]))
    if ray.get("placement"):
        parts.append(f"placement {ray['placement']}")
    if ray.get("cpus"):
        parts.append(f"{ray['cpus']} CPUs")
    return ", ".join(parts) + (f" (attempt {ray.get('attempt')}: retried)" if ray.get("retried") else "")


def _training_table(snaps: list[Snapshot], letters: list[str]) -> Table:
    """Training runs side by side: what each trained on and how, its cost per step, and each evaluation
    after training with its change. Settings differ on purpose here (a learning rate against another),
    so every row is shown, not only those the runs share."""
    from .neighbours import evaluation_changes

    table = Table("compare-training", "Training side by side", ["figure", *letters])
    trains = [s.summary.results.get("train") for s in snaps]
    sums = [s.summary.training for s in snaps]

    def row(label: str, values: list[Cell]) -> None:
        if any(v is not None for v in values):
            table.rows.append([label, *values])

    row("training file", [t.train_file if isinstance(t, TrainResult) else None for t in trains])
    row("examples", [t.examples if isinstance(t, TrainResult) else None for t in trains])
    row("loss", [t.loss if isinstance(t, TrainResult) else None for t in trains])
    row("batch size", [t.batch_size if isinstance(t, TrainResult) else None for t in trains])
    row("learning rate", [t.learning_rate if isinstance(t, TrainResult) else None for t in trains])
    row("steps done", [t.steps_done if isinstance(t, TrainResult) else None for t in trains])
    row("step mean s", [ts.step.mean_s if ts else None for ts in sums])
    row("step p50 s", [ts.step.p50_s if ts else None for ts in sums])
    row("samples/s", [ts.samples_per_s if ts else None for ts in sums])
    row("tokens/s", [ts.tokens_per_s if ts else None for ts in sums])
    row("loss: last step", [ts.last_loss if ts else None for ts in sums])
    row("RSS at a step's end, highest MiB", [ts.rss_at_step_end.value if ts else None for ts in sums])
    row("torch peak allocated in a step MiB", [ts.torch_allocated.value if ts else None for ts in sums])
    changes = [{c.evaluation: c for c in evaluation_changes(s.summary.results)} for s in snaps]
    for name in dict.fromkeys(k for c in changes for k in c):
        row(f"{name}: after", [f"{c[name].after:.6f}" if name in c and c[name].after is not None else None for c in changes])
        row(f"{name}: change", [f"{c[name].change:+.6f}" if name in c and c[name].change is not None else None for c in changes])
    return table


def _test(a: tuple[float, ...] | None, b: tuple[float, ...] | None) -> str:
    """Mann–Whitney U of two runs' timings, in words; untested where a side kept no exact values."""
    if a is None or b is None:
        return f"not tested: {HISTOGRAM_QUANTILES}"
    d = differ(a, b)
    if d["p_value"] is None:
        return str(d["why"])
    return f"{'yes' if d['beyond_noise'] else 'no'} (p={d['p_value']:.3g})"


def _noise(snaps: list[Snapshot]) -> str:
    """Each run's timed calls against A's (their one kind of call each): Mann–Whitney U."""
    heads = [s.summary.headline for s in snaps]
    base = heads[0].stats.samples_s if heads[0] else ()
    parts = []
    for i, head in enumerate(heads[1:], 1):
        other = head.stats.samples_s if head else ()
        parts.append(f"{_letter(i)}: {_test(base, other)}")
    return "; ".join(parts)


def _sweep_table(snaps: list[Snapshot], letters: list[str]) -> Table:
    """Point by point, matched by their axis values."""
    cols = ["point", "A median s"]
    for letter in letters[1:]:
        cols += [f"{letter} median s", f"{letter}/A", f"{letter} beyond noise"]
    table = Table("compare-sweep", "Sweep points side by side", cols)
    by_label = []
    for s in snaps:
        sweep = s.summary.results["sweep"]
        assert isinstance(sweep, SweepResult)
        by_label.append({p.label: p for p in sweep.points})
    for label, pa in by_label[0].items():
        row: list[Cell] = [label, pa.median_s]
        for other in by_label[1:]:
            pb = other.get(label)
            if pb is None or pa.median_s is None or pb.median_s is None:
                row += [None, None, NA("not in both") if pb is None else "not measured in both"]
                continue
            row += [pb.median_s, pb.median_s / pa.median_s if pa.median_s else None, _test(pa.stats.samples_s, pb.stats.samples_s)]
        table.rows.append(row)
    return table
