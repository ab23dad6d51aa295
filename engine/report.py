"""A snapshot as tables: the one description that `show`, Markdown and CSV export all render.

Every cell comes from the snapshot; nothing here measures or estimates anything.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import UserError
from .events import BatchTimed, EncodeTimed, PhaseEnded, PhaseStarted, ResourceSample
from .snapshot import Snapshot, to_json
from .stats import describe

Cell = str | int | float | None

PEAK_LABELS = {
    "rss_mib": "process RSS MiB",
    "sys_ram_used_mib": "system RAM used MiB",
    "gpu_used_mib": "GPU used MiB",
    "gpu_process_mib": "GPU this process MiB",
    "torch_allocated_mib": "torch allocated MiB",
    "torch_reserved_mib": "torch reserved MiB",
    "cpu_percent": "process CPU %",
    "threads": "threads",
    "server_rss_mib": "server process RSS MiB",
    "server_gpu_mib": "server process GPU MiB",
    "server_cpu_percent": "server process CPU %",
}


@dataclass
class Table:
    name: str  # a slug: what --table takes
    title: str
    columns: list[str]
    rows: list[list[Cell]] = field(default_factory=list)


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "N/A"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != 0 and abs(value) < 10 ** (-digits):
            return f"{value:.2e}"
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _kv(name: str, title: str, pairs: list[tuple[str, Any]]) -> Table:
    return Table(name, title, ["field", "value"], [[k, v] for k, v in pairs if v is not None])


def summary_tables(snap: Snapshot) -> list[Table]:
    s = snap.summary
    t = snap.target
    w = snap.workload
    env = snap.environment
    tables: list[Table] = [
        _kv(
            "run",
            "Run",
            [
                ("run id", snap.run_id),
                ("status", snap.status),
                ("started (UTC)", snap.created_utc),
                ("duration s", s.duration_s),
                ("workload", w.get("name")),
                ("model", t.get("model_name")),
                ("backend", t.get("backend")),
                ("device", t.get("device_resolved") or t.get("device")),
                ("dtype", t.get("dtype")),
                ("truncate_dim", t.get("truncate_dim")),
                ("max_seq_length", t.get("max_seq_length")),
                ("embedding dim", t.get("embedding_dim")),
                ("parameters", t.get("parameters")),
                ("sample rate Hz", (s.results.get("sampler") or {}).get("hz")),
            ]
            + [(f"workload {k}", v) for k, v in w.items() if k != "name" and not isinstance(v, (list, dict))],
        ),
        _kv(
            "environment",
            "Environment",
            [
                ("host", env.get("hostname")),
                ("os", env.get("os")),
                ("cpu", env.get("cpu_model")),
                ("cores (logical/physical)", f"{env.get('cpu_cores_logical')}/{env.get('cpu_cores_physical')}"),
                ("RAM MiB", env.get("ram_total_mib")),
                ("GPU", ", ".join(f"{g['name']} (driver {g['driver']})" for g in env.get("gpus", [])) or "none"),
                ("python", env.get("python")),
                ("torch threads", env.get("torch_threads")),
            ]
            + [(lib, ver) for lib, ver in (env.get("libraries") or {}).items() if ver],
        ),
    ]
    phases = Table(
        "phases",
        "Phases",
        ["phase", "detail", "start s", "duration s", "peak RSS MiB", "peak GPU process MiB", "peak CPU %", "samples"],
    )
    for p in s.phases:
        phases.rows.append(
            [
                p.name,
                p.detail,
                p.start_s,
                p.duration_s,
                p.peaks.get("rss_mib"),
                p.peaks.get("gpu_process_mib"),
                p.peaks.get("cpu_percent"),
                p.samples,
            ]
        )
    tables.append(phases)

    stat_cols = ["count", "mean_s", "std_s", "cv_percent", "min_s", "p50_s", "p90_s", "p95_s", "p99_s", "max_s"]
    series = [(label, st) for label, st in (("encode call", s.encode.get("stats", {})), ("batch", s.batches.get("stats", {}))) if st.get("count")]
    if series:
        pooled = "" if w.get("name") in ("encode", "speed", "similarity") else "; every call of the run pooled: see the tables below"
        timings = Table("timings", f"Latency (warm-ups not counted{pooled})", ["statistic", *[f"{label} s" for label, _ in series]])
        for col in stat_cols:
            label = col.removesuffix("_s").replace("cv_percent", "CV %")
            timings.rows.append([label, *[st.get(col) for _, st in series]])
        tables.append(timings)
    if s.encode.get("warmup_s"):
        tables.append(
            Table("warmups", "Warm-ups (recorded, not counted)", ["#", "seconds"], [[i + 1, v] for i, v in enumerate(s.encode["warmup_s"])])
        )
    if s.throughput:
        tp = _kv(
            "throughput",
            "Throughput",
            [
                ("items/s", s.throughput.get("items_per_s")),
                ("tokens/s", s.throughput.get("tokens_per_s")),
                ("words/s", s.throughput.get("words_per_s")),
                ("padding %", s.batches.get("padding_percent")),
            ],
        )
        tables.append(tp)

    peaks = Table("peaks", "Peaks (sampled, and the kernel's or torch's own counter)", ["metric", "sampled", "at s", "during", "counter", "source"])
    for name, pk in s.peaks.items():
        peaks.rows.append([PEAK_LABELS.get(name, name), pk.sampled, pk.at_s, pk.phase, pk.counter, pk.counter_source])
    tables.append(peaks)

    speed = s.results.get("speed")
    if speed:
        tables.append(
            _kv(
                "speed",
                f"Speed ({speed.get('task_name')}, MTEB v1 protocol)",
                [
                    ("time_mean s", speed.get("time_mean")),
                    ("time_std s", speed.get("time_std")),
                    ("avg_words_per_sec", speed.get("avg_words_per_sec")),
                    ("timings s", ", ".join(f"{x:.4f}" for x in speed.get("timings", []))),
                    ("words", speed.get("words")),
                ],
            )
        )
    tok = s.results.get("tokens")
    if tok:
        tables.append(
            _kv(
                "tokens",
                "Input length in tokens (before truncation)",
                [
                    ("texts", tok.get("count")),
                    ("min", tok.get("min")),
                    ("mean", tok.get("mean")),
                    ("p50", tok.get("p50")),
                    ("p90", tok.get("p90")),
                    ("max", tok.get("max")),
                    ("max_seq_length", tok.get("max_seq_length")),
                    ("truncated texts", tok.get("truncated")),
                    ("truncated %", tok.get("truncated_percent")),
                ],
            )
        )
    enc = s.results.get("encode")
    if enc:
        tables.append(
            _kv(
                "encode",
                "Encode",
                [
                    ("lines", enc.get("lines")),
                    ("mode", enc.get("mode")),
                    ("prompt name", enc.get("prompt_name")),
                    ("prompt used", repr(enc.get("prompt_used", ""))),
                    ("embedding dim", enc.get("embedding_dim")),
                ],
            )
        )
    sim = s.results.get("similarity")
    if sim:
        tables.extend(similarity_tables(sim))
    sweep = s.results.get("sweep")
    if sweep:
        tables.extend(sweep_tables(sweep))
    vs = s.results.get("vs")
    if vs:
        tables.append(vs_table(vs))
    tables.extend(server_tables(snap))
    peaks_by_phase = {p.phase_id: p.peaks for p in s.phases}
    rows = mteb_rows(s.results, lambda pid, name: peaks_by_phase.get(pid, {}).get(name))
    if rows:
        tables.append(Table("mteb", "MTEB tasks (scores computed by mteb)", list(MTEB_COLUMNS), rows))
        tables.append(mteb_phase_table(s))
    if s.errors:
        tables.append(
            Table("errors", "Errors", ["kind", "phase", "message"], [[e["error_kind"], e["phase"], e["message"]] for e in s.errors])
        )
    if s.notes:
        tables.append(Table("notes", "Notes", ["note"], [[n] for n in s.notes]))
    return tables


SWEEP_COLUMNS = ("point", "status", "median s", "95% CI ±%", "ended by", "repeats", "items/s", "tokens/s", "padding %",
                 "GFLOP/s", "peak RSS MiB", "peak GPU MiB")


def sweep_tables(sweep: dict[str, Any]) -> list[Table]:
    points = Table("sweep", "Sweep points (each: warm-up, then repeated until the 95 % CI of the median is within target or the budget is spent)",
                   list(SWEEP_COLUMNS))
    for p in sweep["points"]:
        points.rows.append([
            p["label"], p["status"], p.get("median_s"), p.get("ci_half_width_percent"), p.get("stop"), p.get("repeats"),
            p.get("items_per_s"), p.get("tokens_per_s"), p.get("padding_percent"), p.get("gflops"), p.get("peak_rss_mib"),
            p.get("peak_gpu_mib"),
        ])
    out = [points]
    fits = Table("fit", "Latency model (least squares over the points' medians, statsmodels OLS; 95 % CIs)",
                 ["group", "latency =", "R²", "fixed s", "per line s", "per token s", "points", "timings"])
    notes = []
    for f in sweep.get("fits", []):
        def term(name: str, f: dict[str, Any] = f) -> str | None:
            if name not in f["terms"]:
                return None
            if name not in f["ci95"]:
                return f"{f['coef'][name]:.6g}"
            lo, hi = f["ci95"][name]
            return f"{f['coef'][name]:.6g} [{lo:.4g}, {hi:.4g}]"

        group = " ".join(f"{k}={v}" for k, v in f["group"].items()) or "all points"
        fits.rows.append([group, f["formula"], f["r2"], term("fixed"), term("per_line"), term("per_token"), f["observations"], f.get("timings")])
        if f["why_dropped"] and f["why_dropped"] not in notes:
            notes.append(f["why_dropped"])
        if f.get("padding_note") and f["padding_note"] not in notes:
            notes.append(f["padding_note"])
        if f["r2"] is None:
            exact = "as many points as terms: the line passes through them, so there is no R² or interval; one more point gives both"
            if exact not in notes:
                notes.append(exact)
    if fits.rows:
        out.append(fits)
    if notes:
        out.append(Table("fit-notes", "About the fit", ["note"], [[n] for n in notes]))
    limit = sweep.get("memory_limit")
    if limit:
        out.append(_kv("memory-limit", f"Memory limit search ({limit['axis']})", [
            (f"largest {limit['axis']} that fits", largest_fit_text(limit)),
            ("stopped because", limit.get("stopped")),
            ("RAM ceiling MiB", limit.get("ceiling_mib")),
        ]))
    return out


def largest_fit_text(limit: dict[str, Any]) -> str:
    """The memory search's answer in words; 'none' is an answer too, and must be said rather than left out."""
    largest = limit.get("largest_that_fits")
    if largest is not None:
        return str(largest)
    curve = limit.get("curve") or []
    first = curve[0].get(limit["axis"]) if curve else None
    return f"none: {limit['axis']} {first}, the first point, already failed" if first is not None else "none: no point was measured"


def server_tables(snap: Snapshot) -> list[Table]:
    """An embedding server's side: every request, the load result, agreement with a local model."""
    from .events import RequestTimed

    s = snap.summary
    out: list[Table] = []
    reqs = [e for e in snap.events if isinstance(e, RequestTimed)]  # warm-ups too: they are requests all the same
    if reqs:
        ok = [r for r in reqs if not r.error_kind and not r.warmup]
        kinds: dict[str, int] = {}
        for r in reqs:
            if r.error_kind:
                kinds[r.error_kind] = kinds.get(r.error_kind, 0) + 1
        st = describe([r.duration_ns / 1e9 for r in ok])
        rows: list[tuple[str, Any]] = [
            ("requests", len(reqs)),
            ("answered", sum(1 for r in reqs if not r.error_kind)),
            ("failed", sum(1 for r in reqs if r.error_kind)),
            ("failed by kind", ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())) or "none"),
            ("latency mean s (answered, not warm-up)", st.get("mean_s")),
            ("latency p50 s", st.get("p50_s")),
            ("latency p90 s", st.get("p90_s")),
            ("latency p99 s", st.get("p99_s")),
            ("bytes sent", sum(r.bytes_sent for r in reqs)),
            ("bytes received", sum(r.bytes_received for r in reqs)),
            ("tokens (server-reported)", sum(r.tokens for r in ok if r.tokens) if any(r.tokens for r in ok) else None),
            ("server pid", snap.target.get("server_pid")),
        ]
        out.append(_kv("requests", "Requests to the server (send to parsed response)", rows))
    load = s.results.get("load")
    if load:
        lat = load.get("latency") or {}
        out.append(_kv("load", "Load", [
            ("requests sent / done / ok", f"{load['requests_sent']} / {load['requests_done']} / {load['ok']}"),
            ("wall s", load.get("wall_s")),
            ("requests/s", load.get("requests_per_s")),
            ("items/s", load.get("items_per_s")),
            ("tokens/s", load.get("tokens_per_s")),
            ("latency mean s", lat.get("mean_s")),
            ("latency p50 s", lat.get("p50_s")),
            ("latency p90 s", lat.get("p90_s")),
            ("latency p95 s", lat.get("p95_s")),
            ("latency p99 s", lat.get("p99_s")),
            ("errors by kind", ", ".join(f"{k} {v}" for k, v in sorted((load.get("errors_by_kind") or {}).items())) or "none"),
            ("client alone, requests/s", load.get("client_ceiling_per_s")),
            ("load as % of the client's ceiling", load.get("client_share_percent")),
        ]))
    agreement = s.results.get("agreement")
    if agreement:
        out.append(_kv("agreement", f"Server against {agreement['compare_model']} locally (cosine per text)", [
            ("texts", len(agreement["cosine"])),
            ("min cosine", agreement["min"]),
            ("mean cosine", agreement["mean"]),
            ("least alike", agreement["worst_text"]),
            ("prompt", repr(agreement.get("prompt", ""))),
        ]))
    return out


def vs_table(vs: dict[str, Any]) -> Table:
    a, b = vs["a"], vs["b"]
    ci = vs.get("ci95")
    rows: list[tuple[str, Any]] = [
        ("A", f"{a.get('model_name')} ({a.get('device_resolved')}, {a.get('dtype')})"),
        ("B", f"{b.get('model_name')} ({b.get('device_resolved')}, {b.get('dtype')})"),
        ("texts per call", vs.get("texts")),
        ("pairs (ABBA order)", len(vs.get("ratios", []))),
        ("A median s", vs["a_stats"].get("p50_s")),
        ("B median s", vs["b_stats"].get("p50_s")),
        ("B/A pair by pair", ", ".join(f"{r:.3f}" for r in vs.get("ratios", []))),
        ("B/A median", vs.get("median_ratio")),
        ("B/A 95% CI", f"{ci[0]:.3f} – {ci[1]:.3f}" if ci else "too few pairs"),
        ("beyond noise", {True: "yes", False: "no", None: "too few pairs"}[vs.get("beyond_noise")]
         + (f" ({vs['test']}, p={vs['p_value']:.3g})" if vs.get("p_value") is not None else "")),
    ]
    return _kv("vs", "A against B, alternately in one process", rows)


MTEB_COLUMNS = ("task", "status", "main score", "metric", "seconds", "peak RSS MiB", "peak GPU MiB")


def mteb_rows(results: dict[str, dict[str, Any]], peak: Any) -> list[list[Cell]]:
    """One row per MTEB task, in the order run; ``peak(phase_id, field)`` gives the task phase's
    sampled peak (from the snapshot's phase summary, or live from the dashboard's samples)."""
    order = (results.get("mteb") or {}).get("tasks") or []
    rows: list[list[Cell]] = []
    for name in order:
        r = results.get(f"mteb:{name}")
        if r is None:
            rows.append([name, "not run", None, None, None, None, None])
            continue
        pid = r.get("phase_id")
        gpu = peak(pid, "gpu_process_mib") if pid is not None else None
        if gpu is None and pid is not None:
            gpu = peak(pid, "torch_reserved_mib")
        rows.append(
            [
                name,
                str(r.get("status", "")),  # the reason of a failure is in the run's notes and errors
                # mteb rounds scores to six places in its files; three would hide real differences.
                f"{r['main_score']:.6f}" if isinstance(r.get("main_score"), float) else r.get("main_score"),
                r.get("main_score_name"),
                r.get("seconds"),
                peak(pid, "rss_mib") if pid is not None else None,
                gpu,
            ]
        )
    return rows


def mteb_phase_table(s: Any) -> Table:
    """Each phase inside the MTEB tasks with what it took: the answer to "how much memory did
    encoding JSICK take" (peak RSS in the phase, and its rise over the last sample before it)."""
    table = Table(
        "mteb-phases",
        "MTEB phases",
        ["phase", "detail", "seconds", "peak RSS MiB", "RSS rise MiB", "peak GPU process MiB", "peak CPU %"],
    )
    tasks = set((s.results.get("mteb") or {}).get("tasks") or [])
    top = {p.phase_id for p in s.phases if p.name in tasks and p.parent_id == 0}
    for p in s.phases:
        if p.phase_id in top or p.path.split(" › ")[0] in tasks and p.parent_id != 0:
            rss = p.peaks.get("rss_mib")
            rise = rss - p.rss_before_mib if rss is not None and p.rss_before_mib is not None else None
            table.rows.append([p.path or p.name, p.detail, p.duration_s, rss, rise, p.peaks.get("gpu_process_mib"), p.peaks.get("cpu_percent")])
    return table


def similarity_tables(sim: dict[str, Any]) -> list[Table]:
    out: list[Table] = []
    docs: list[str] = sim["documents"]
    for qi, query in enumerate(sim["queries"]):
        ranking = sim["rankings"][qi]
        expected = sim["expected"][qi] if qi < len(sim.get("expected", [])) else None
        table = Table(
            f"similarity-q{qi + 1}" if len(sim["queries"]) > 1 else "similarity",
            f"Query: {query}  (prompt {sim.get('query_prompt', '')!r}; documents {sim.get('document_prompt', '')!r})",
            ["rank", "doc", "score", "expected", "document"],
        )
        for rank, di in enumerate(ranking):
            table.rows.append(
                [rank + 1, di + 1, sim["scores"][qi][di], "✓" if expected == di else "", docs[di]]
            )
        margin = sim["margins"][qi]
        verdict = sim["top1_correct"][qi] if qi < len(sim.get("top1_correct", [])) else None
        table.rows.append(["margin", None, margin, {True: "right first", False: "WRONG first", None: ""}[verdict], "best − runner-up"])
        out.append(table)
    return out


def raw_tables(snap: Snapshot) -> list[Table]:
    """Every measured event as a flat table, for spreadsheets."""
    encodes = Table("encodes", "Encode calls", ["t_s", "phase_id", "call", "label", "items", "tokens", "words", "seconds", "warmup"])
    batches = Table("batches", "Batches", ["t_s", "phase_id", "call", "batch", "items", "tokens", "padded_tokens", "seconds", "warmup"])
    sample_cols = [f for f in ResourceSample.__dataclass_fields__ if f not in ("kind", "t_ns", "per_core_percent")]
    timeline = Table("timeline", "Resource timeline", ["t_s", *sample_cols, "per_core_percent"])
    phases = Table("phase-events", "Phase events", ["t_s", "event", "phase_id", "name", "detail", "duration_s", "ok"])
    for e in snap.events:
        t = e.t_ns / 1e9
        if isinstance(e, EncodeTimed):
            encodes.rows.append([t, e.phase_id, e.call_index, e.label, e.items, e.tokens, e.words, e.duration_ns / 1e9, e.warmup])
        elif isinstance(e, BatchTimed):
            batches.rows.append(
                [t, e.phase_id, e.call_index, e.batch_index, e.items, e.tokens, e.padded_tokens, e.duration_ns / 1e9, e.warmup]
            )
        elif isinstance(e, ResourceSample):
            d = asdict(e)
            timeline.rows.append([t, *[d[c] for c in sample_cols], " ".join(f"{v:.1f}" for v in e.per_core_percent)])
        elif isinstance(e, PhaseStarted):
            phases.rows.append([t, "start", e.phase_id, e.name, e.detail, None, None])
        elif isinstance(e, PhaseEnded):
            phases.rows.append([t, "end", e.phase_id, e.name, "", e.duration_ns / 1e9, e.ok])
    return [encodes, batches, timeline, phases]


def all_tables(snap: Snapshot) -> dict[str, Table]:
    return {t.name: t for t in [*summary_tables(snap), *raw_tables(snap)]}


def to_markdown(snap: Snapshot, images: list[str] | None = None) -> str:
    title = f"# embprof profile: {snap.workload.get('name')} on {snap.target.get('model_name')}"
    return tables_markdown(title, summary_tables(snap), images)


def tables_markdown(title: str, tables: list[Table], images: list[str] | None = None) -> str:
    lines = [title, ""]
    for image in images or []:
        lines += [f"![{image}]({image})", ""]
    for table in tables:
        lines += [f"## {table.title}", ""]
        lines.append("| " + " | ".join(table.columns) + " |")
        lines.append("|" + "|".join("---" for _ in table.columns) + "|")
        for row in table.rows:
            lines.append("| " + " | ".join(fmt(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |")
        lines.append("")
    return "\n".join(lines)


def to_csv(table: Table) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(table.columns)
    for row in table.rows:
        writer.writerow(["" if c is None else c for c in row])
    return buf.getvalue()


def export(snap: Snapshot, fmt_name: str, table: str = "summary", images: list[str] | None = None) -> str:
    if fmt_name == "json":
        return to_json(snap)
    if fmt_name == "md":
        return to_markdown(snap, images)
    tables = all_tables(snap)
    if table == "summary":
        # One long table a spreadsheet can pivot: section, row label, column, value.
        flat = Table("summary", "Summary", ["section", "row", "column", "value"])
        for t in summary_tables(snap):
            for row in t.rows:
                for col, cell in zip(t.columns[1:], row[1:]):
                    flat.rows.append([t.name, row[0], col, cell])
        return to_csv(flat)
    if table not in tables:
        raise UserError(f"unknown table '{table}': choose one of summary, {', '.join(tables)}")
    return to_csv(tables[table])
