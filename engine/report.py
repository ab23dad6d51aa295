"""A snapshot as tables: the one description that `show`, Markdown and CSV export all render.

Every cell comes from the snapshot; nothing here measures or estimates anything. A figure that was
not measured is never shown as 0: it is ``None`` (``n/a``) where the reason is obvious, or an
:class:`NA` with the reason (``n/a (the server reports no token counts)``) where it is not. CSV
writes both as an empty cell, JSON as ``null``. Latency is never pooled over calls of different
kinds: a run with one kind of timed call has one "Latency" table, any other run a "Latency by kind
of call" table with one row per kind.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

from pydantic import BaseModel

from .errors import UserError
from .events import (
    BatchTimed,
    EncodeTimed,
    PhaseEnded,
    PhaseStarted,
    RequestTimed,
    ResourceSample,
    TrainStep,
)
from .fold import CallGroup, RequestGroup, Summary
from .plan import LoadPlan
from .results import (
    Agreement,
    ClientCeiling,
    EncodeResult,
    KneeResult,
    LatencyStats,
    LoadResult,
    MemoryLimit,
    MtebRun,
    MtebTask,
    SamplerFacts,
    ServerMetrics,
    SimilarityResult,
    SpeedResult,
    SweepResult,
    TokenCounts,
    TokenLengths,
    TrainResult,
    VersusResult,
)
from .snapshot import Snapshot, to_json
from .tables import NA, Cell, Table, kv_table, or_na, tables_markdown, to_csv
from .text import json_text, one_line

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

GFLOPS_LABEL = "GFLOP/s (estimate)"  # 2 × parameters × tokens / time: a floor of the forward pass, not a measurement
WORDS_IN_MTEB = "texts not read twice in MTEB runs"
HISTOGRAM_QUANTILES = "quantiles from a histogram"


# -- why a figure is missing -----------------------------------------------------------------------------


# The reasons are worded here once; the dashboard shows the same ones (``tokens_missing(...).reason``).
def tokens_missing(server: bool, counts: TokenCounts | None = None) -> NA:
    """Why tokens, tokens/s and padding are n/a: a server (llama.cpp's native API) reports no token counts, or what it
    reports are not tokens (``counts``: its texts' characters or words)."""
    if counts is not None and counts.counts != "tokens":
        return NA(counts.label())
    return NA("the server reports no token counts" if server else "the target reports no token counts")


def token_counts(snap: Snapshot) -> TokenCounts | None:
    """What the server's counts were found to be, where it reported any."""
    found = snap.summary.results.get("token_counts")
    return found if isinstance(found, TokenCounts) else None


def tokens_label(snap: Snapshot) -> str:
    """The heading of the server's reported tokens: what they were found to be."""
    found = token_counts(snap)
    return f"tokens ({found.label()})" if found is not None else "tokens (server-reported)"


def words_missing(workload_name: str | None) -> NA:
    """Why words/s is n/a: mteb's texts are not read a second time to count their words."""
    return NA(WORDS_IN_MTEB if workload_name == "mteb" else "words not counted")


def _server(snap: Snapshot) -> bool:
    return snap.target.backend == "http"


def no_tokens(snap: Snapshot) -> NA:
    return tokens_missing(_server(snap), token_counts(snap))


def no_words(snap: Snapshot) -> NA:
    return words_missing(snap.workload.name)


def _group_label(g: CallGroup | RequestGroup) -> str:
    return g.group or "encode call"


def _tokens_per_s(snap: Snapshot, g: CallGroup) -> Cell:
    if g.tokens_per_s is not None:
        return g.tokens_per_s
    return no_tokens(snap) if g.calls else None


def _words_per_s(snap: Snapshot, g: CallGroup) -> Cell:
    if g.words_per_s is not None:
        return g.words_per_s
    return no_words(snap) if g.calls else None


def _padding(snap: Snapshot, g: CallGroup) -> Cell:
    if g.padding_percent is not None:
        return g.padding_percent
    if not g.batches:
        return NA("no batches timed")
    if g.batch_tokens is None or g.padded_tokens is None:
        return no_tokens(snap)
    return None


def _spread(st: LatencyStats, value: float | None) -> Cell:
    return NA("one call has no spread") if value is None and st.count == 1 else value


# -- the summary ------------------------------------------------------------------------------------------


def workload_rows(snap: Snapshot) -> list[tuple[str, Any]]:
    """How the workload ran: the plan's settings that were given (lists and the texts themselves left
    out), then what it learned of its inputs (lines, the speed text's digest, the training format)."""
    rows: list[tuple[str, Any]] = []
    if snap.plan is not None:
        for key, value in snap.plan.workload:
            if key != "name" and value is not None and not isinstance(value, (tuple, list, dict, BaseModel)):
                rows.append((key, value))
    given = {k for k, _ in rows}
    rows += [(k, v) for k, v in snap.workload.rows() if v is not None and k not in given]
    return rows


def summary_tables(snap: Snapshot) -> list[Table]:
    s = snap.summary
    t = snap.target
    env = snap.environment
    sampler = s.results.get("sampler")
    run_rows: list[tuple[str, Any]] = [
        ("run id", snap.run_id),
        ("status", snap.status),
        ("started (UTC)", snap.created_utc),
        ("duration s", s.duration_s),
        ("workload", snap.workload.name),
        ("model", t.model_name),
        ("backend", t.backend),
        ("device", t.device_resolved or t.device),
        ("dtype", t.dtype),
        ("truncate_dim", t.truncate_dim),
        ("max_seq_length", t.max_seq_length),
        ("embedding dim", t.embedding_dim),
        ("parameters", t.parameters),
        ("server", t.url),
        ("server API", t.api),
        ("sample rate Hz", sampler.hz if isinstance(sampler, SamplerFacts) else None),
    ]
    if snap.migrated_from is not None:
        run_rows.append(("migrated from", f"schema {snap.migrated_from}"))
    if snap.plan is None:
        run_rows.append(("plan", NA(snap.plan_note or "not recorded")))
    elif snap.plan_note:
        run_rows.append(("plan", snap.plan_note))
    run_rows += [(f"workload {k}", v) for k, v in workload_rows(snap)]
    tables: list[Table] = [
        kv_table("run", "Run", run_rows),
        kv_table(
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
        ["phase", "detail", "start s", "duration s", "peak RSS MiB", "peak RSS MiB (kernel, exact)", "peak GPU process MiB",
         "peak CPU %", "samples"],
    )
    for p in s.phases:
        phases.rows.append(
            [p.name, p.detail, p.start_s, p.duration_s, p.peaks.get("rss_mib"), p.rss_hwm_mib, p.peaks.get("gpu_process_mib"),
             p.peaks.get("cpu_percent"), p.samples]
        )
    tables.append(phases)
    tables.extend(latency_tables(snap))

    peaks = Table("peaks", "Peaks (sampled, and the kernel's or torch's own counter)", ["metric", "sampled", "at s", "during", "counter", "source"])
    for name, pk in s.peaks.items():
        peaks.rows.append([PEAK_LABELS.get(name, name), pk.sampled, pk.at_s, pk.phase, pk.counter, pk.counter_source])
    tables.append(peaks)

    speed = s.results.get("speed")
    if isinstance(speed, SpeedResult):
        tables.append(speed_table(speed))
    else:  # an MTEB run's SpeedTasks carry theirs
        tasks = [r for r in s.results.values() if isinstance(r, MtebTask) and r.speed is not None]
        for i, r in enumerate(tasks):
            assert r.speed is not None
            tables.append(speed_table(r.speed, "speed" if i == 0 else f"speed-{r.task}"))
    tok = s.results.get("tokens")
    if isinstance(tok, TokenLengths):
        tables.append(kv_table("tokens", "Input length in tokens (before truncation)", [
            ("texts", tok.count),
            ("min", tok.min),
            ("mean", tok.mean),
            ("p50", tok.p50),
            ("p90", tok.p90),
            ("max", tok.max),
            ("max_seq_length", or_na(tok.max_seq_length, NA("the target does not say"))),
            ("truncated texts", tok.truncated),
            ("truncated %", tok.truncated_percent),
            ("counted with prompt", repr(tok.counted_with_prompt) if tok.counted_with_prompt else None),
        ]))
    enc = s.results.get("encode")
    if isinstance(enc, EncodeResult):
        tables.append(kv_table("encode", "Encode", [
            ("lines", enc.lines),
            ("mode", enc.mode),
            ("prompt name", enc.prompt_name),
            ("prompt used", repr(enc.prompt_used)),
            ("embedding dim", or_na(enc.embedding_dim, NA("no embedding came back"))),
        ]))
    sim = s.results.get("similarity")
    if isinstance(sim, SimilarityResult):
        tables.extend(similarity_tables(sim))
    sweep = s.results.get("sweep")
    if isinstance(sweep, SweepResult):
        tables.extend(sweep_tables(sweep, no_tokens(snap)))
    vs = s.results.get("vs")
    if isinstance(vs, VersusResult):
        tables.append(vs_table(vs))
    tables.extend(server_tables(snap))
    tables.extend(training_tables(snap))
    peaks_by_phase = {p.phase_id: p.peaks for p in s.phases}
    rows = mteb_rows(s.results, lambda pid, name: peaks_by_phase.get(pid, {}).get(name))
    if rows:
        tables.append(Table("mteb", "MTEB tasks (scores computed by mteb)", list(MTEB_COLUMNS), rows))
        tables.append(mteb_phase_table(s))
        encodes = mteb_encode_table(snap)
        if encodes.rows:
            tables.append(encodes)
    if s.errors:
        tables.append(
            Table("errors", "Errors", ["kind", "phase", "message"], [[e.error_kind, e.phase, e.message] for e in s.errors])
        )
    if s.notes:
        tables.append(Table("notes", "Notes", ["note"], [[n] for n in s.notes]))
    return tables


STAT_ROWS = (("count", "count"), ("mean", "mean_s"), ("std", "std_s"), ("CV %", "cv_percent"), ("min", "min_s"), ("p50", "p50_s"),
             ("p90", "p90_s"), ("p95", "p95_s"), ("p99", "p99_s"), ("max", "max_s"))
LATENCY_BY_CALL_COLUMNS = ("kind of call", "calls", "mean s", "p50 s", "p95 s", "p99 s", "CV %", "items/s", "tokens/s")
THROUGHPUT_BY_CALL_COLUMNS = ("kind of call", "calls", "items/s", "tokens/s", "words/s", "padding %")


def latency_tables(snap: Snapshot) -> list[Table]:
    """Latency, warm-ups and throughput: one table each for a run with one kind of timed call; with
    several kinds, one row per kind and never one p50/p95/CV pooled over them."""
    s = snap.summary
    groups = [g for g in s.calls if g.calls]
    out: list[Table] = []
    head = s.headline
    if head is not None:
        series = [("encode call s", head.stats)] + ([("batch s", head.batch_stats)] if head.batch_stats.count else [])
        quantiles = "; quantiles from an HDR histogram, 3 significant digits" if head.stats.quantiles == "histogram" else ""
        title = f"Latency: {head.group} (warm-ups not counted{quantiles})" if head.group else f"Latency (warm-ups not counted{quantiles})"
        latency = Table("latency", title, ["statistic", *[label for label, _ in series]])
        for label, attr in STAT_ROWS:
            cells: list[Cell] = []
            for _, st in series:
                value = getattr(st, attr)
                cells.append(_spread(st, value) if attr in ("std_s", "cv_percent") else value)
            latency.rows.append([label, *cells])
        out.append(latency)
    elif groups:
        latency = Table("latency", "Latency by kind of call (warm-ups not counted; calls of different kinds are never pooled)",
                        list(LATENCY_BY_CALL_COLUMNS))
        for g in groups:
            st = g.stats
            latency.rows.append([_group_label(g), g.calls, st.mean_s, st.p50_s, st.p95_s, st.p99_s, _spread(st, st.cv_percent),
                                 g.items_per_s, _tokens_per_s(snap, g)])
        out.append(latency)

    warm = [g for g in s.calls if g.warmup_s]
    if head is not None and head.warmup_s and warm == [head]:
        out.append(Table("warmups", "Warm-ups (recorded, not counted)", ["#", "seconds"], [[i + 1, v] for i, v in enumerate(head.warmup_s)]))
    elif warm:
        out.append(Table("warmups", "Warm-ups (recorded, not counted)", ["kind of call", "#", "seconds"],
                         [[_group_label(g), i + 1, v] for g in warm for i, v in enumerate(g.warmup_s)]))

    if head is not None:
        out.append(kv_table("throughput", "Throughput", [
            ("items/s", or_na(head.items_per_s, NA("no timed call took time"))),
            ("tokens/s", _tokens_per_s(snap, head)),
            ("words/s", _words_per_s(snap, head)),
            ("padding %", _padding(snap, head)),
        ]))
    elif groups:
        tp = Table("throughput", "Throughput by kind of call", list(THROUGHPUT_BY_CALL_COLUMNS))
        for g in groups:
            tp.rows.append([_group_label(g), g.calls, g.items_per_s, _tokens_per_s(snap, g), _words_per_s(snap, g), _padding(snap, g)])
        out.append(tp)
    return out


def speed_table(speed: SpeedResult, name: str = "speed") -> Table:
    title = f"Speed ({speed.task_name}, MTEB v1 protocol)" if speed.task_name else "Speed (MTEB v1 protocol)"
    return kv_table(name, title, [
        ("task", or_na(speed.task_name, NA(speed.task_name_why or "neither CPUSpeedTask nor GPUSpeedTask"))),
        ("time_mean s", speed.time_mean),
        ("time_std s", speed.time_std),
        ("avg_words_per_sec", speed.avg_words_per_sec),
        ("timings s", ", ".join(f"{x:.4f}" for x in speed.timings)),
        ("words", speed.words),
    ])


SWEEP_COLUMNS = ("point", "status", "median s", "95% CI ±%", "ended by", "repeats", "items/s", "tokens/s", "padding %",
                 GFLOPS_LABEL, "peak RSS MiB", "peak GPU MiB")


def sweep_tables(sweep: SweepResult, no_tokens_why: NA | None = None) -> list[Table]:
    """The points, the latency fits and the memory search. ``no_tokens_why`` is the reason shown for
    a point whose tokens/s was not measured (default: the target reports no token counts)."""
    why_tokens = no_tokens_why or tokens_missing(server=False)
    points = Table("sweep", "Sweep points (each: warm-up, then repeated until the 95 % CI of the median is within target or the budget is spent)",
                   list(SWEEP_COLUMNS))
    for p in sweep.points:
        ok = p.status == "ok"
        points.rows.append([
            p.label, p.status, p.median_s, p.ci_half_width_percent, p.stop, p.repeats,
            p.items_per_s, why_tokens if ok and p.tokens_per_s is None and p.items_per_s is not None else p.tokens_per_s,
            p.padding_percent, p.gflops_estimate, p.peak_rss_mib, p.peak_gpu_mib,
        ])
    out = [points]
    fits = Table("fit", "Latency model (least squares over the points' medians, statsmodels OLS; 95 % CIs)",
                 ["group", "latency =", "R²", "fixed s", "per line s", "per token s", "points", "timings"])
    notes: list[str] = []
    for f in sweep.fits:
        def term(name: str, f: Any = f) -> str | None:
            if name not in f.terms:
                return None
            if name not in f.ci95:
                return f"{f.coef[name]:.6g}"
            lo, hi = f.ci95[name]
            return f"{f.coef[name]:.6g} [{lo:.4g}, {hi:.4g}]"

        group = " ".join(f"{k}={v}" for k, v in f.group.items()) or "all points"
        fits.rows.append([group, f.formula, f.r2, term("fixed"), term("per_line"), term("per_token"), f.observations, f.timings])
        if f.why_dropped and f.why_dropped not in notes:
            notes.append(f.why_dropped)
        if f.padding_note and f.padding_note not in notes:
            notes.append(f.padding_note)
        if f.r2 is None:
            exact = "as many points as terms: the line passes through them, so there is no R² or interval; one more point gives both"
            if exact not in notes:
                notes.append(exact)
    if fits.rows:
        out.append(fits)
    if any(p.gflops_estimate is not None for p in sweep.points):
        notes.append(f"{GFLOPS_LABEL} is 2 × parameters × tokens / time: an estimate of the forward pass's floor, not a measurement")
    if notes:
        out.append(Table("fit-notes", "About the fit", ["note"], [[n] for n in notes]))
    limit = sweep.memory_limit
    if limit is not None:
        out.append(kv_table("memory-limit", f"Memory limit search ({limit.axis})", [
            (f"largest {limit.axis} that fits", largest_fit_text(limit)),
            ("stopped because", limit.stopped),
            ("RAM ceiling MiB", limit.ceiling_mib),
        ]))
    return out


def largest_fit_text(limit: MemoryLimit) -> str:
    """The memory search's answer in words; 'none' is an answer too, and must be said rather than left out."""
    if limit.largest_that_fits is not None:
        return str(limit.largest_that_fits)
    first = limit.curve[0].value if limit.curve else None
    return f"none: {limit.axis} {first}, the first point, already failed" if first is not None else "none: no point was measured"


def _kinds(by_kind: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(by_kind.items())) or "none"


LLAMA_PROMPT_SECONDS = "llamacpp:prompt_seconds_total"
SPLIT_PARTS = (("queue", "queue (server)"), ("tokenization", "tokenization (server)"), ("inference", "inference (server)"),
               ("server_total", "the server's total"), ("network_client", "network and client (the rest)"))


def _confirmation(knee: KneeResult) -> Cell:
    """The confirmation step at the sustainable rate, in words."""
    held = knee.confirmation
    if held is None:
        return NA("no rate held the objective" if knee.sustainable_per_s is None else "the run was stopped first")
    p99 = "n/a" if held.p99_s is None else f"{held.p99_s * 1e3:.1f} ms"
    return (f"{held.offered_per_s:.4g}/s for {held.sent:,} requests: p99 {p99}, "
            + ("holds" if held.passed else f"breaks ({held.why})"))


def knee_tables(knee: KneeResult) -> list[Table]:
    """The knee search: its answer and objective, then every step in the order it ran."""
    broke = next((st for st in knee.steps if not st.passed), None)
    head = kv_table("knee", "The knee: the largest rate that held the objective", [
        ("sustainable rate, requests/s", or_na(knee.sustainable_per_s, NA("even the first rate broke the objective" if knee.steps else
                                                                       "no step ran"))),
        ("between", f"{knee.bracket[0]:.4g}/s (held) and {knee.bracket[1]:.4g}/s (broke)" if knee.bracket else NA(
            "no rate broke the objective" if knee.sustainable_per_s is not None else "no rate held it")),
        ("objective", f"p99 ≤ {knee.objective_p99_s * 1e3:g} ms, failed ≤ {knee.objective_errors_percent:g} %, "
                      f"at most {100 * (1 - knee.objective_min_achieved_share):g} % of the sent still waiting at a step's end"),
        ("latency from", "when each request was due (open loop, Poisson arrivals)"),
        ("steps", f"{len(knee.steps)} of {knee.step_s:g} s"),
        ("first rate", knee.start_from),
        ("what broke it first", broke.why if broke is not None else NA("nothing broke it")),
        ("held for longer", _confirmation(knee)),
        ("p99 held for longer / in the search", or_na(knee.stability(), NA("no confirmation step" if knee.confirmation is None
                                                                          else "a p99 is missing"))),
    ])
    steps = Table("knee-steps", "The knee's steps (in the order run)", ["step", "offered/s", "answered/s", "sent", "ok", "failed", "p50 s", "p99 s",
                                                                    "sends late p99 s", "objective"])
    for i, st in enumerate(knee.steps, 1):
        steps.rows.append([i, st.offered_per_s, or_na(st.achieved_per_s, NA("no time elapsed")), st.sent, st.ok, st.errors,
                           or_na(st.p50_s, NA("none answered")), or_na(st.p99_s, NA("none answered")), or_na(st.send_lag_p99_s, NA("none sent")),
                           "holds" if st.passed else f"breaks: {st.why}"])
    return [head, steps]


def _server_split_table(load: LoadResult, metrics: Any = None, warmups: int = 0, *, llama: bool = False,
                        counted_from_here: bool = False) -> Table:
    """Where each answered request's time went, as the server itself timed it (TEI's x-*-time headers), or,
    for llama.cpp, the mean its /metrics totals give over the timed requests (an estimate, said as one).

    ``counted_from_here``: the run read llama.cpp's start counters again after its warm-up (so its totals
    cover the timed requests alone); a run written before that counted from the connect, its warm-ups
    included, and divides by them too."""
    table = Table("load-split", "Where the time went (the server's own timings, per answered request)",
                  ["part", "requests", "mean s", "p50 s", "p99 s"])
    split = load.server_split or {}
    none = NA("the server reports no timings of its own (TEI sends x-queue-time, x-inference-time …)")
    if split:
        for key, label in SPLIT_PARTS:
            st = split.get(key)
            if st is None:
                table.rows.append([label, 0, none, none, none])
            else:
                table.rows.append([label, st.count, st.mean_s, st.p50_s, st.p99_s])
        return table
    if not llama or not isinstance(metrics, ServerMetrics) or LLAMA_PROMPT_SECONDS not in metrics.end:
        # No llama.cpp counters (llama-server without --metrics, or another server on its API).
        table.rows.append(["every part", 0, none, none, none])
        return table
    served = load.requests_sent + (0 if counted_from_here else warmups)
    estimate = _llama_inference_mean(load, metrics, served)
    over = "the timed requests' prompt seconds over their number" if counted_from_here else \
        "the run's prompt seconds over its requests, the warm-up among them"
    inference_label = f"inference (llama.cpp /metrics: {over}, an estimate; requests batched together share theirs)"
    rest_label = "the rest: queue, network and client (mean latency less that, an estimate)"
    if isinstance(estimate, NA):
        table.rows.append([inference_label, served, estimate, estimate, estimate])
        table.rows.append([rest_label, load.ok, estimate, estimate, estimate])
        return table
    totals = NA("llama.cpp's /metrics count totals, not each request")
    table.rows.append([inference_label, served, estimate, totals, totals])
    latency = load.latency.mean_s
    rest: Cell = NA("no request answered") if latency is None else latency - estimate
    if isinstance(rest, float) and rest < 0:
        # Not clamped to 0: a negative rest says the totals do not divide by request here.
        rest = NA(f"the server's prompt seconds per request ({estimate:.4g} s) exceed the mean latency ({latency:.4g} s): "
                  "requests processed together each count the time they shared")
    table.rows.append([rest_label, load.ok, rest, totals, totals])
    return table


def _llama_inference_mean(load: LoadResult, metrics: ServerMetrics, served: int) -> float | NA:
    """The mean prompt seconds a request of the load, from llama.cpp's /metrics totals over ``served``
    requests, or why there is none."""
    key = LLAMA_PROMPT_SECONDS
    if key not in metrics.start or key not in metrics.delta:
        return NA("llama.cpp's /metrics had no prompt_seconds_total when the load began")
    seconds = metrics.delta[key]
    if seconds < 0:
        return NA("llama.cpp's prompt seconds went down during the run (was the server restarted?)")
    if load.requests_sent == 0:
        return NA("no request was sent")
    if load.requests_done < load.requests_sent:
        in_flight = load.requests_sent - load.requests_done
        return NA(f"{in_flight} of {load.requests_sent} requests were still in flight when the load ended: "
                  "the server's totals may or may not count them")
    if seconds == 0:
        return NA(f"llama.cpp counted no prompt time for {served} requests")
    return seconds / served


def _counted_from_here(s: Summary) -> bool:
    """Whether the run read llama.cpp's start counters again after its warm-up (its own phase says so)."""
    from .targets.http import COUNTERS_PHASE  # here: the server target's module is not the report's to load

    return any(p.name == COUNTERS_PHASE for p in s.phases)


def _load_batch(snap: Snapshot) -> int | None:
    """Texts per request the load sent (the plan's, else the recorded settings': the load workload
    records it as ``texts_per_request``)."""
    workload = snap.plan.workload if snap.plan is not None else None
    if isinstance(workload, LoadPlan):
        return workload.batch
    recorded = (snap.workload.recorded or {}).get("texts_per_request")  # a migrated file without a plan
    return recorded if isinstance(recorded, int) else None


REQUEST_COLUMNS = ("kind of call", "requests", "answered", "failed", "failed by kind", "mean s", "p50 s", "p90 s", "p99 s",
                   "bytes sent", "bytes received", "tokens (server-reported)")


def server_tables(snap: Snapshot) -> list[Table]:
    """An embedding server's side: every request, the load result, agreement with a local model."""
    s = snap.summary
    out: list[Table] = []
    groups = list(s.requests)
    no_tok = tokens_missing(server=True, counts=token_counts(snap))
    none_answered = NA("no request answered (warm-ups are not counted)")
    if len(groups) == 1:
        r = groups[0]
        st = r.stats
        title = "Requests to the server (send to parsed response)" + (f": {r.group}" if r.group else "")
        out.append(kv_table("requests", title, [
            ("requests", r.requests),
            ("answered", r.answered),
            ("failed", r.failed),
            ("failed by kind", _kinds(r.failed_by_kind)),
            ("latency mean s (answered, not warm-up)", or_na(st.mean_s, none_answered)),
            ("latency p50 s", or_na(st.p50_s, none_answered)),
            ("latency p90 s", or_na(st.p90_s, none_answered)),
            ("latency p99 s", or_na(st.p99_s, none_answered)),
            ("bytes sent", r.bytes_sent),
            ("bytes received", r.bytes_received),
            (tokens_label(snap), or_na(r.tokens, no_tok if r.answered else none_answered)),
            ("server pid", snap.target.server_pid),
        ]))
    elif groups:
        table = Table("requests", "Requests to the server by kind of call (send to parsed response; latency: answered, not warm-up)",
                      [*REQUEST_COLUMNS[:-1], tokens_label(snap)])
        for r in groups:
            st = r.stats
            table.rows.append([_group_label(r), r.requests, r.answered, r.failed, _kinds(r.failed_by_kind), st.mean_s, st.p50_s, st.p90_s,
                               st.p99_s, r.bytes_sent, r.bytes_received, or_na(r.tokens, no_tok if r.answered else none_answered)])
        out.append(table)
    load = s.results.get("load")
    if isinstance(load, LoadResult):
        lat = load.latency
        ceiling_cell: Cell = load.client_ceiling_per_s
        share_cell: Cell = load.client_share_percent
        ceiling = s.results.get("client_ceiling")
        sent = _load_batch(snap)
        if isinstance(ceiling, ClientCeiling) and sent is not None and ceiling.texts_per_request != sent:
            texts = "text" if ceiling.texts_per_request == 1 else "texts"
            why = NA(f"the client alone was measured with {ceiling.texts_per_request} {texts} a request; the load sent {sent}")
            ceiling_cell = share_cell = why
        due = load.latency_from == "due"
        rows: list[tuple[str, Cell]] = [
            ("requests sent / done / ok", f"{load.requests_sent} / {load.requests_done} / {load.ok}"),
            ("wall s", load.wall_s),
            ("requests/s", or_na(load.requests_per_s, NA("no time elapsed"))),
            ("items/s", or_na(load.items_per_s, none_answered)),
            ("tokens/s", or_na(load.tokens_per_s, no_tok if load.ok else none_answered)),
            ("latency from", "when each request was due (open loop)" if due else "each request's send"),
            ("latency mean s", or_na(lat.mean_s, none_answered)),
            ("latency p50 s", or_na(lat.p50_s, none_answered)),
            ("latency p90 s", or_na(lat.p90_s, none_answered)),
            ("latency p95 s", or_na(lat.p95_s, none_answered)),
            ("latency p99 s", or_na(lat.p99_s, none_answered)),
        ]
        if due:
            lag = load.send_lag
            rows += [("sends behind schedule p50 s", or_na(lag.p50_s if lag else None, NA("nothing was sent"))),
                     ("sends behind schedule p99 s", or_na(lag.p99_s if lag else None, NA("nothing was sent"))),
                     ("sends behind schedule max s", or_na(lag.max_s if lag else None, NA("nothing was sent")))]
        rows += [
            ("errors by kind", _kinds(load.errors_by_kind)),
            ("load processes", load.load_processes),
            ("client alone, requests/s", or_na(ceiling_cell, NA("not measured"))),
            ("load as % of the client's ceiling", or_na(share_cell, NA("not measured"))),
        ]
        if isinstance(ceiling, ClientCeiling) and ceiling.endpoint:
            rows.append(("client alone, measured against", ceiling.endpoint))
        out.append(kv_table("load", "Load", rows))
        warmups = sum(1 for e in snap.events if isinstance(e, RequestTimed) and e.warmup)
        out.append(_server_split_table(load, s.results.get("server_metrics"), warmups, llama=snap.target.api == "llama",
                                       counted_from_here=_counted_from_here(s)))
        if load.by_source:
            by = Table("load-sources", "Latency by the source of the texts (answered requests)", ["source", "requests", "p50 s", "p90 s",
                                                                                                 "p99 s"])
            for name, st in load.by_source.items():
                by.rows.append([name, st.count, st.p50_s, st.p90_s, st.p99_s])
            out.append(by)
    knee = s.results.get("knee")
    if isinstance(knee, KneeResult):
        out.extend(knee_tables(knee))
    agreement = s.results.get("agreement")
    if isinstance(agreement, Agreement):
        out.append(kv_table("agreement", f"Server against {agreement.compare_model} locally (cosine per text)", [
            ("texts", len(agreement.cosine)),
            ("min cosine", agreement.min),
            ("mean cosine", agreement.mean),
            ("least alike", agreement.worst_text),
            ("prompt", repr(agreement.prompt)),
        ]))
    return out


def vs_table(vs: VersusResult) -> Table:
    a, b = vs.a, vs.b
    ci = vs.ci95
    rows: list[tuple[str, Any]] = [
        ("A", f"{a.model_name} ({a.device_resolved}, {a.dtype})"),
        ("B", f"{b.model_name} ({b.device_resolved}, {b.dtype})"),
        ("texts per call", vs.texts),
        ("pairs (ABBA order)", len(vs.ratios)),
        ("A median s", or_na(vs.a_stats.p50_s, NA("no timed call"))),
        ("B median s", or_na(vs.b_stats.p50_s, NA("no timed call"))),
        ("B/A pair by pair", ", ".join(f"{r:.3f}" for r in vs.ratios)),
        ("B/A median", or_na(vs.median_ratio, NA("no pair"))),
        ("B/A 95% CI", f"{ci[0]:.3f} – {ci[1]:.3f}" if ci else "too few pairs"),
        ("beyond noise", {True: "yes", False: "no", None: "too few pairs"}[vs.beyond_noise]
         + (f" ({vs.test}, p={vs.p_value:.3g})" if vs.p_value is not None else "")),
    ]
    return kv_table("vs", "A against B, alternately in one process", rows)


MTEB_COLUMNS = ("task", "status", "main score", "metric", "seconds", "peak RSS MiB", "peak GPU MiB")


def _at_step(value: float | None, step: int | None) -> Cell:
    if value is None:
        return None
    return f"{value:,.1f} (step {step})" if step is not None else f"{value:,.1f}"


def training_tables(snap: Snapshot) -> list[Table]:
    """A training run: what it trained on and how far it got, the cost of a step and of its parts, and
    the evaluations before and after. Every figure is from the run's own steps and results."""
    from .neighbours import evaluation_changes

    s = snap.summary
    tr = s.results.get("train")
    ts = s.training
    if not isinstance(tr, TrainResult) and ts is None:
        return []
    out: list[Table] = []
    rows: list[tuple[str, Any]] = []
    on_gpu = str(snap.target.device_resolved or "").startswith("cuda")
    if isinstance(tr, TrainResult):
        rows += [
            ("training file", tr.train_file),
            ("examples", f"{tr.examples:,} of {tr.rows_in_file:,} rows ({tr.data_format}: {', '.join(tr.columns)})"),
            ("loss", f"{tr.loss} ({tr.loss_chosen})"),
            ("batch size", tr.batch_size),
            ("batch sampler", tr.batch_sampler or None),
            ("learning rate", f"{tr.learning_rate:g} (warm-up over {tr.warmup_steps} steps: {tr.warmup_ratio:g} of them)"
             if tr.warmup_steps is not None else f"{tr.learning_rate:g} (warm-up {tr.warmup_ratio:g} of the steps)"),
            ("prompt", repr(tr.prompt) if tr.prompt is not None else None),
            ("steps", f"{tr.steps_done:,} of {tr.steps_planned:,}" + (" (stopped early)" if tr.stopped else "")),
            ("epochs", tr.epochs_done),
            ("trainer's train() s", tr.train_seconds),
            ("a step's parts", tr.unsplit or None),
        ]
    if ts is not None:
        rows += [
            ("steps' time added up s", ts.seconds),
            ("samples/s", ts.samples_per_s),
            ("tokens/s", or_na(ts.tokens_per_s, NA("the batches carried no attention mask"))),
            ("loss: first step", ts.first_loss),
            ("loss: last step", ts.last_loss),
            ("loss: lowest", f"{ts.min_loss.value:.4f} (step {ts.min_loss.step})" if ts.min_loss.value is not None else None),
            ("learning rate: last step", ts.last_learning_rate),
            ("RSS at a step's end, highest MiB", _at_step(ts.rss_at_step_end.value, ts.rss_at_step_end.step)),
            ("peak RSS (kernel's high-water) MiB",
             None if ts.max_rss.value is None else
             _at_step(ts.max_rss.value, ts.max_rss.step) if ts.max_rss.step is not None
             else f"{ts.max_rss.value:,.1f} (reached before training)"),
            ("torch peak allocated in a step MiB", _at_step(ts.torch_allocated.value, ts.torch_allocated.step) if on_gpu else None),
            ("torch peak reserved in a step MiB", _at_step(ts.torch_reserved.value, ts.torch_reserved.step) if on_gpu else None),
            ("GPU process at a step's end, highest MiB",
             (_at_step(ts.gpu_process.value, ts.gpu_process.step) or NA("NVML does not list this process")) if on_gpu else None),
        ]
    if isinstance(tr, TrainResult):
        rows += [
            ("trainer's mean loss", tr.trainer_loss),
            ("saved to", tr.saved_to),
            ("not saved", tr.not_saved_why),
        ]
    out.append(kv_table("training", "Training", rows))
    if ts is not None and ts.steps:
        steps = Table("training-steps", f"Training step time ({ts.steps:,} steps; a part's share is of the steps' total)",
                      ["part", "mean s", "p50 s", "p95 s", "max s", "share %"])
        steps.rows.append(["step", ts.step.mean_s, ts.step.p50_s, ts.step.p95_s, ts.step.max_s, 100.0 if ts.seconds > 0 else None])
        for part in ts.parts:
            if part.stats.count:
                steps.rows.append([part.part, part.stats.mean_s, part.stats.p50_s, part.stats.p95_s, part.stats.max_s, part.share_percent])
        for name in ts.unsplit:
            steps.rows.append([name, NA("not timed apart in some steps"), None, None, None, None])
        out.append(steps)
    changes = tr.evaluations if isinstance(tr, TrainResult) and tr.evaluations else tuple(evaluation_changes(s.results))
    if changes:
        table = Table("before-after", "Evaluations before and after training (chance: the score of random neighbours)",
                      ["evaluation", "metric", "before", "after", "change", "verdict", "chance"])
        for c in changes:
            verdict = ("REGRESSED" if c.regressed else "improved" if c.change and c.change > 0 else "unchanged") if c.change is not None else None
            table.rows.append([c.evaluation, c.metric, _score(c.before), _score(c.after),
                               f"{c.change:+.6f}" if c.change is not None else None, verdict,
                               f"{c.chance:.6f}" if c.chance is not None else ""])
        out.append(table)
    return out


def _score(value: float | None) -> Cell:
    # mteb rounds scores to six places in its files; three would hide real differences.
    return f"{value:.6f}" if value is not None else None


def mteb_rows(results: Mapping[str, Any], peak: Callable[[int, str], float | None]) -> list[list[Cell]]:
    """One row per MTEB task, in the order run; ``peak(phase_id, field)`` gives the task phase's
    sampled peak (from the snapshot's phase summary, or live from the dashboard's samples)."""
    run = results.get("mteb")
    order = run.tasks if isinstance(run, MtebRun) else ()
    rows: list[list[Cell]] = []
    for name in order:
        r = results.get(f"mteb:{name}")
        if not isinstance(r, MtebTask):
            rows.append([name, "not run", None, None, None, None, None])
            continue
        pid = r.phase_id
        gpu = peak(pid, "gpu_process_mib") if pid is not None else None
        if gpu is None and pid is not None:
            gpu = peak(pid, "torch_reserved_mib")
        rows.append([
            name,
            r.status,  # the reason of a failure is in the run's notes and errors
            # mteb rounds scores to six places in its files; three would hide real differences.
            f"{r.main_score:.6f}" if r.main_score is not None else None,
            r.main_score_name,
            r.seconds,
            peak(pid, "rss_mib") if pid is not None else None,
            gpu,
        ])
    return rows


def mteb_phase_table(s: Summary) -> Table:
    """Each phase inside the MTEB tasks with what it took: the answer to "how much memory did
    encoding JSICK take" (peak RSS in the phase, and its rise over the last sample before it)."""
    table = Table(
        "mteb-phases",
        "MTEB phases",
        ["phase", "detail", "seconds", "peak RSS MiB", "RSS rise MiB", "peak GPU process MiB", "peak CPU %"],
    )
    run = s.results.get("mteb")
    tasks = set(run.tasks) if isinstance(run, MtebRun) else set()
    top = {p.phase_id for p in s.phases if p.name in tasks and p.parent_id == 0}
    for p in s.phases:
        if p.phase_id in top or p.path.split(" › ")[0] in tasks and p.parent_id != 0:
            rss = p.peaks.get("rss_mib")
            rise = rss - p.rss_before_mib if rss is not None and p.rss_before_mib is not None else None
            table.rows.append([p.path or p.name, p.detail, p.duration_s, rss, rise, p.peaks.get("gpu_process_mib"), p.peaks.get("cpu_percent")])
    return table


MTEB_ENCODE_COLUMNS = ("task", "phase", "split", "texts", "seconds", "texts/s", "tokens", "batches", "prompt name")


def mteb_encode_table(snap: Snapshot) -> Table:
    """Every encode call mteb made, one row each: latency per phase, never one figure pooled over them."""
    table = Table("mteb-encodes", "MTEB encode calls (one row each; calls of different phases are not pooled)", list(MTEB_ENCODE_COLUMNS))
    results = snap.summary.results
    run = results.get("mteb")
    for name in run.tasks if isinstance(run, MtebRun) else ():
        r = results.get(f"mteb:{name}")
        if not isinstance(r, MtebTask):
            continue
        for e in r.encodes:
            batches: Cell = e.batches if e.batches is not None else NA(
                "the server's own batching is not visible" if _server(snap) else "not counted")
            table.rows.append([
                name, e.phase, e.split or e.subset, e.texts, e.seconds, e.texts / e.seconds if e.seconds > 0 else None,
                or_na(e.tokens, no_tokens(snap)), batches, e.prompt_name,
            ])
    return table


def similarity_tables(sim: SimilarityResult) -> list[Table]:
    out: list[Table] = []
    docs = sim.documents
    for qi, query in enumerate(sim.queries):
        ranking = sim.rankings[qi]
        expected = sim.expected[qi] if qi < len(sim.expected) else None
        table = Table(
            f"similarity-q{qi + 1}" if len(sim.queries) > 1 else "similarity",
            f"Query: {query}  (prompt {sim.query_prompt!r}; documents {sim.document_prompt!r})",
            ["rank", "doc", "score", "expected", "document"],
        )
        for rank, di in enumerate(ranking):
            table.rows.append([rank + 1, di + 1, sim.scores[qi][di], "✓" if expected == di else "", docs[di]])
        margin: Cell = sim.margins[qi] if qi < len(sim.margins) else None
        if margin is None and len(docs) < 2:
            margin = NA("one document: no runner-up")
        verdict = sim.top1_correct[qi] if qi < len(sim.top1_correct) else None
        table.rows.append(["margin", None, margin, {True: "right first", False: "WRONG first", None: ""}[verdict], "best − runner-up"])
        out.append(table)
    return out


def raw_tables(snap: Snapshot) -> list[Table]:
    """Every measured event as a flat table, for spreadsheets (an unmeasured figure is an empty cell)."""
    encodes = Table("encodes", "Encode calls",
                    ["t_s", "phase_id", "call", "group", "label", "items", "tokens", "words", "seconds", "warmup"])
    batches = Table("batches", "Batches",
                    ["t_s", "phase_id", "call", "group", "batch", "items", "tokens", "padded_tokens", "seconds", "warmup"])
    requests = Table("request-events", "Requests",
                     ["t_s", "phase_id", "call", "group", "request", "items", "status", "seconds", "bytes_sent", "bytes_received",
                      "tokens", "error_kind", "warmup"])
    sample_cols = [f for f in ResourceSample.__dataclass_fields__ if f not in ("kind", "t_ns", "per_core_percent")]
    timeline = Table("timeline", "Resource timeline", ["t_s", *sample_cols, "per_core_percent"])
    phases = Table("phase-events", "Phase events", ["t_s", "event", "phase_id", "name", "detail", "duration_s", "ok"])
    steps = Table("train-steps", "Training steps",
                  ["t_s", "step", "epoch", "samples", "tokens", "loss", "learning_rate", "seconds", "data_s", "forward_s", "backward_s",
                   "optimizer_s", "rss_mib", "max_rss_mib", "torch_peak_allocated_mib", "torch_peak_reserved_mib", "gpu_process_mib"])
    for e in snap.events:
        t = e.t_ns / 1e9
        if isinstance(e, EncodeTimed):
            encodes.rows.append([t, e.phase_id, e.call_index, e.group, e.label, e.items, e.tokens, e.words, e.duration_ns / 1e9,
                                 e.warmup])
        elif isinstance(e, BatchTimed):
            batches.rows.append(
                [t, e.phase_id, e.call_index, e.group, e.batch_index, e.items, e.tokens, e.padded_tokens, e.duration_ns / 1e9,
                 e.warmup]
            )
        elif isinstance(e, RequestTimed):
            requests.rows.append([t, e.phase_id, e.call_index, e.group, e.request_index, e.items, e.status, e.duration_ns / 1e9,
                                  e.bytes_sent, e.bytes_received, e.tokens, e.error_kind, e.warmup])
        elif isinstance(e, ResourceSample):
            d = asdict(e)
            timeline.rows.append([t, *[d[c] for c in sample_cols], " ".join(f"{v:.1f}" for v in e.per_core_percent)])
        elif isinstance(e, PhaseStarted):
            phases.rows.append([t, "start", e.phase_id, e.name, e.detail, None, None])
        elif isinstance(e, PhaseEnded):
            phases.rows.append([t, "end", e.phase_id, e.name, "", e.duration_ns / 1e9, e.ok])
        elif isinstance(e, TrainStep):
            def s_(ns: int | None) -> float | None:
                return ns / 1e9 if ns is not None else None

            steps.rows.append([t, e.step, e.epoch, e.samples, e.tokens, e.loss, e.learning_rate, e.duration_ns / 1e9, s_(e.data_ns),
                               s_(e.forward_ns), s_(e.backward_ns), s_(e.optimizer_ns), e.rss_mib, e.max_rss_mib,
                               e.torch_peak_allocated_mib, e.torch_peak_reserved_mib, e.gpu_process_mib])
    return [encodes, batches, requests, timeline, phases, *([steps] if steps.rows else [])]


def all_tables(snap: Snapshot) -> dict[str, Table]:
    return {t.name: t for t in [*summary_tables(snap), *raw_tables(snap)]}


def to_markdown(snap: Snapshot, images: list[str] | None = None) -> str:
    title = f"# embprof profile: {snap.workload.name} on {snap.target.model_name}"
    return tables_markdown(title, summary_tables(snap), images)


# Every table `export --format csv --table` can name, for one kind of run or another (the help lists them).
CSV_TABLES = ("summary", "run", "phases", "timings", "throughput", "peaks", "speed", "tokens", "similarity", "encodes", "batches",
              "timeline", "phase-events")


def export(snap: Snapshot, fmt_name: str, table: str = "summary", images: list[str] | None = None) -> str:
    if fmt_name == "json":
        return json_text(to_json(snap))  # read in a terminal too: no raw C1 control or bidirectional override
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
        if table in CSV_TABLES:  # a table of another kind of run (speed, similarity …): this run made none
            raise UserError(f"this snapshot has no '{table}' table (its run made none): choose one of summary, {', '.join(tables)}")
        raise UserError(f"unknown table '{one_line(table)}': choose one of summary, {', '.join(tables)}")
    return to_csv(tables[table])
