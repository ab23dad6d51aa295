"""The report, compare and charts on the typed model: nothing unmeasured is shown as a figure,
latency is never pooled over kinds of call, estimates say so."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from embprof.engine import report, tables
from embprof.engine.charts import compare_chart, sweep_charts
from embprof.engine.compare import compare_tables
from embprof.engine.events import (
    BatchTimed,
    EncodeTimed,
    Event,
    PhaseEnded,
    PhaseStarted,
    RequestTimed,
    Result,
    RunFinished,
    RunStarted,
)
from embprof.engine.results import (
    ClientCeiling,
    LatencyStats,
    LoadResult,
    MemoryLimit,
    MemoryPoint,
    MtebRun,
    MtebTask,
    SpeedResult,
    SweepPoint,
    SweepResult,
    TargetFacts,
)
from embprof.engine.snapshot import Snapshot
from embprof.engine.tables import NA, Table, fmt
from embprof.engine.workload_facts import (
    EncodeFacts,
    LoadFacts,
    MtebFacts,
    SpeedFacts,
    SweepFacts,
    WorkloadFacts,
)
from fake_engine import sample, snapshot_of

MS = 1_000_000

LOCAL = TargetFacts(backend="sentence-transformers", model_name="tiny", device="cpu", device_resolved="cpu", dtype="float32",
                    parameters=1000)
LLAMA = TargetFacts(backend="http", model_name="llama-server", api="llama", url="http://127.0.0.1:8080")


def calls(group: str, ms: Iterable[float], *, t0: int, tokens: int | None = 40, words: int | None = 20,
          warmup_ms: float | None = None) -> list[Event]:
    """Timed encode calls of one kind (a warm-up first), each with one forward batch."""
    out: list[Event] = []
    t = t0
    timings = ([(warmup_ms, True)] if warmup_ms is not None else []) + [(m, False) for m in ms]
    for i, (m, warm) in enumerate(timings):
        t += int(m * MS)
        out.append(BatchTimed(t_ns=t, phase_id=1, call_index=i, batch_index=0, items=4, tokens=tokens,
                              padded_tokens=None if tokens is None else tokens + 8, duration_ns=int(m * MS), warmup=warm, group=group))
        out.append(EncodeTimed(t_ns=t, phase_id=1, call_index=i, label=group or "call", items=4, tokens=tokens, words=words,
                               duration_ns=int(m * MS), warmup=warm, group=group))
    return out


def snapshot(body: list[Event], *, target: TargetFacts = LOCAL, workload: WorkloadFacts | None = None, results: Iterable[Any] = (),
             migrated_from: int | None = None, plan_note: str = "", run_id: str = "r1") -> Snapshot:
    """A complete run of one encode phase holding ``body`` (timed calls, requests …), then ``results``."""
    return snapshot_of([
        RunStarted(t_ns=0, run_id=run_id, started_utc="2026-01-01T00:00:00+00:00", target=target, workload=workload or EncodeFacts(),
                   sample_hz=10.0),
        Result(t_ns=1, result=target),
        sample(2, 100.0),
        PhaseStarted(t_ns=3, phase_id=1, name="encode", detail=""),
        *body,
        *[Result(t_ns=10**10, result=r) for r in results],
        PhaseEnded(t_ns=10**10, phase_id=1, name="encode", duration_ns=10**10 - 3),
        RunFinished(t_ns=10**10 + 1, status="complete", duration_ns=10**10 + 1),
    ], migrated_from=migrated_from, plan_note=plan_note)


def table(tables: list[Table], name: str) -> Table:
    found = [t for t in tables if t.name == name]
    assert len(found) == 1, f"{name}: {[t.name for t in tables]}"
    return found[0]


def kv(t: Table) -> dict[str, Any]:
    assert t.columns == ["field", "value"]
    return {str(r[0]): r[1] for r in t.rows}


# -- cells ---------------------------------------------------------------------------------------------------


def test_unmeasured_cells_render_as_na_never_zero() -> None:
    assert fmt(None) == "n/a"
    assert fmt(NA("the server reports no token counts")) == "n/a (the server reports no token counts)"
    assert fmt(NA()) == "n/a"
    assert fmt(0.0) == "0.000" and fmt(0) == "0"  # a measured zero is still a zero
    t = Table("x", "X", ["a", "b", "c"], [[NA("why"), None, 1.5]])
    assert tables.to_csv(t).splitlines()[1] == ",,1.5"
    assert json.loads(tables.tables_json([t]))["x"]["rows"] == [[None, None, 1.5]]
    assert "| n/a (why) | n/a | 1.500 |" in tables.tables_markdown("# t", [t])


# -- tokens, words, padding ----------------------------------------------------------------------------------


def test_llama_api_tokens_are_na_with_the_reason_not_zero() -> None:
    snap = snapshot(calls("", [10, 11, 12], t0=10, tokens=None, warmup_ms=30), target=LLAMA)
    head = snap.summary.headline
    assert head is not None and head.tokens_per_s is None
    tables = report.summary_tables(snap)
    tp = kv(table(tables, "throughput"))
    why = "the server reports no token counts"
    assert tp["tokens/s"] == NA(why) and tp["padding %"] == NA(why)
    assert isinstance(tp["items/s"], float) and tp["items/s"] > 0
    md = report.to_markdown(snap)
    assert f"| tokens/s | n/a ({why}) |" in md
    assert f"| padding % | n/a ({why}) |" in md
    flat = report.export(snap, "csv")
    assert "throughput,tokens/s,value,\n" in flat  # empty in CSV, not 0
    assert "throughput,tokens/s,value,0" not in flat


def test_words_per_s_in_an_mteb_run_says_why() -> None:
    body = calls("STS16 › Encoding samples 1", [50, 52], t0=10, words=None)
    snap = snapshot(body, workload=MtebFacts(), results=[
        MtebRun(tasks=("STS16",), model_name="tiny", revision=None, results_dir="results"),
        MtebTask(task="STS16", status="ok", phase_id=1, main_score_name="cosine_spearman", main_score=0.789859, seconds=0.1),
    ])
    tp = kv(table(report.summary_tables(snap), "throughput"))
    assert tp["words/s"] == NA("texts not read twice in MTEB runs")
    rows = report.mteb_rows(snap.summary.results, lambda pid, name: 123.0 if name == "rss_mib" else None)
    assert rows == [["STS16", "ok", "0.789859", "cosine_spearman", 0.1, 123.0, None]]


# -- latency per kind of call ------------------------------------------------------------------------------


def two_kinds(run_id: str = "r1") -> Snapshot:
    body = calls("encode A", [10, 11, 12, 13], t0=10) + calls("encode B", [100, 110, 120, 130], t0=10**9)
    return snapshot(body, run_id=run_id)


def test_two_kinds_of_call_get_one_row_each_and_no_pooled_figure() -> None:
    snap = two_kinds()
    assert snap.summary.headline is None
    tables = report.summary_tables(snap)
    lat = table(tables, "latency")
    assert lat.title.startswith("Latency by kind of call")
    assert lat.columns == list(report.LATENCY_BY_CALL_COLUMNS)
    assert [r[0] for r in lat.rows] == ["encode A", "encode B"]
    p50 = {r[0]: r[3] for r in lat.rows}
    assert abs(float(p50["encode A"]) - 0.0115) < 1e-9 and abs(float(p50["encode B"]) - 0.115) < 1e-9  # type: ignore[arg-type]
    assert "statistic" not in lat.columns  # the one-kind layout (a pooled column) is not used
    tp = table(tables, "throughput")
    assert [r[0] for r in tp.rows] == ["encode A", "encode B"]


def test_one_kind_of_call_is_the_headline_latency_table() -> None:
    snap = snapshot(calls("", [10, 20, 30], t0=10, warmup_ms=50))
    tables = report.summary_tables(snap)
    lat = table(tables, "latency")
    assert lat.title.startswith("Latency (warm-ups not counted")
    stats = {r[0]: r[1] for r in lat.rows}
    assert stats["count"] == 3 and abs(float(stats["p50"]) - 0.02) < 1e-9  # type: ignore[arg-type]
    assert table(tables, "warmups").rows == [[1, 0.05]]


def test_one_call_has_no_spread_rather_than_zero() -> None:
    snap = snapshot(calls("", [10], t0=10))
    stats = {r[0]: r[1] for r in table(report.summary_tables(snap), "latency").rows}
    assert stats["std"] == NA("one call has no spread") and stats["CV %"] == NA("one call has no spread")


# -- estimates, speed, load ----------------------------------------------------------------------------------


def point(lines: int, ms: float, gflops: float | None = 1.5) -> SweepPoint:
    st = LatencyStats(count=4, mean_s=ms / 1e3, p50_s=ms / 1e3, samples_s=tuple(ms / 1e3 * f for f in (0.98, 0.99, 1.01, 1.02)))
    return SweepPoint(params={"lines": lines}, label=f"lines={lines}", lines=lines, batch_size=32, status="ok", repeats=4, stats=st,
                      median_s=ms / 1e3, ci95_s=(ms / 1e3 * 0.98, ms / 1e3 * 1.02), ci_half_width_percent=2.0, tokens=lines * 10.0,
                      items_per_s=lines / ms * 1e3, tokens_per_s=None, gflops_estimate=gflops, peak_rss_mib=200.0)


def sweep(limit: MemoryLimit | None = None) -> SweepResult:
    return SweepResult(axes={"lines": (25, 50)}, points=(point(25, 100.0), point(50, 180.0)), parameters=1000, memory_limit=limit)


def test_gflops_is_labelled_an_estimate() -> None:
    tables = report.sweep_tables(sweep())
    points = table(tables, "sweep")
    assert "GFLOP/s (estimate)" in points.columns and "GFLOP/s" not in points.columns
    assert any("estimate" in str(r[0]) for r in table(tables, "fit-notes").rows)
    assert points.rows[0][points.columns.index("tokens/s")] == NA("the target reports no token counts")


def test_memory_limit_reads_memory_points() -> None:
    curve = (MemoryPoint(value=64, peak_rss_mib=None, peak_gpu_mib=None, torch_peak_mib=None, status="oom"),)
    limit = MemoryLimit(axis="batch", largest_that_fits=None, stopped="oom", ceiling_mib=None, curve=curve)
    assert report.largest_fit_text(limit) == "none: batch 64, the first point, already failed"
    assert report.largest_fit_text(limit.model_copy(update={"largest_that_fits": 32})) == "32"
    assert report.largest_fit_text(limit.model_copy(update={"curve": ()})) == "none: no point was measured"


def test_speed_task_name_for_a_server_says_why() -> None:
    why = "a server is neither CPUSpeedTask nor GPUSpeedTask"
    speed = SpeedResult(task_name=None, task_name_why=why, time_mean=1.0, time_std=0.1, timings=(1.0, 1.1), avg_words_per_sec=3633.0,
                        words=3633, stats=LatencyStats(count=2, mean_s=1.05))
    snap = snapshot(calls("", [10, 11], t0=10, tokens=None), target=LLAMA, workload=SpeedFacts(), results=[speed])
    t = table(report.summary_tables(snap), "speed")
    assert kv(t)["task"] == NA(why)
    assert "None" not in t.title


def test_client_ceiling_of_another_request_shape_is_not_shown_as_the_ceiling() -> None:
    load = LoadResult(requests_sent=10, requests_done=10, ok=10, errors=0, errors_by_kind={}, wall_s=1.0, requests_per_s=10.0,
                      items_per_s=40.0, tokens_per_s=None, latency=LatencyStats(count=10, mean_s=0.1), client_ceiling_per_s=900.0,
                      client_share_percent=1.1)
    ceiling = ClientCeiling(requests_per_s=900.0, workers=1, seconds=1.0, texts_per_request=1)
    reqs: list[Event] = [RequestTimed(t_ns=10 + i, phase_id=1, call_index=0, request_index=i, items=4, duration_ns=100 * MS, status=200,
                                      bytes_sent=10, bytes_received=100, group="load") for i in range(3)]
    from embprof.engine.migrate import workload_facts

    # A migrated file without a plan: its texts per request are only in the settings it recorded.
    facts = LoadFacts.model_validate(workload_facts({"name": "load", "texts_per_request": 4, "requests": 10}, has_plan=False))
    snap = snapshot(reqs, target=LLAMA, workload=facts, results=[load, ceiling])
    tables = report.summary_tables(snap)
    rows = kv(table(tables, "load"))
    assert isinstance(rows["client alone, requests/s"], NA) and "1 text a request" in str(rows["client alone, requests/s"])
    assert isinstance(rows["load as % of the client's ceiling"], NA)
    assert rows["tokens/s"] == NA("the server reports no token counts")
    req = kv(table(tables, "requests"))
    assert req["requests"] == 3 and req["tokens (server-reported)"] == NA("the server reports no token counts")


def test_migrated_snapshot_and_missing_plan_are_said() -> None:
    snap = snapshot(calls("", [10, 11], t0=10), migrated_from=1, plan_note="the v1 settings do not say which input file was read")
    rows = kv(table(report.summary_tables(snap), "run"))
    assert rows["migrated from"] == "schema 1"
    assert rows["plan"] == NA("the v1 settings do not say which input file was read")


# -- compare -------------------------------------------------------------------------------------------------


def test_compare_refuses_to_pool_kinds_of_call() -> None:
    tables = compare_tables([two_kinds("a"), two_kinds("b")], ["a", "b"])
    figures = [r[0] for r in table(tables, "compare").rows]
    assert "encode call p50 s" not in figures and "items/s" not in figures
    notes = " ".join(str(r[0]) for r in table(tables, "compare-notes").rows)
    assert "not pooled" in notes and "A has 2 kinds of timed call" in notes


def test_compare_headline_runs_with_ratio_and_noise_test() -> None:
    a = snapshot(calls("", [10, 11, 12, 13, 14], t0=10), run_id="a")
    b = snapshot(calls("", [20, 21, 22, 23, 24], t0=10), run_id="b")
    rows = {r[0]: r for r in table(compare_tables([a, b], ["a", "b"]), "compare").rows}
    p50 = rows["encode call p50 s"]
    assert abs(float(p50[3]) - 22 / 12) < 1e-6  # type: ignore[arg-type]
    assert str(p50[4]).startswith("B: yes")


def test_compare_without_exact_values_says_it_did_not_test() -> None:
    a = snapshot(calls("", [10, 11, 12, 13, 14], t0=10), run_id="a")
    b = snapshot(calls("", [20, 21, 22, 23, 24], t0=10), run_id="b")
    head = b.summary.calls[0]
    hist = head.model_copy(update={"stats": head.stats.model_copy(update={"samples_s": None, "quantiles": "histogram"})})
    b = b.model_copy(update={"summary": b.summary.model_copy(update={"calls": (hist,)})})
    rows = {r[0]: r for r in table(compare_tables([a, b], ["a", "b"]), "compare").rows}
    assert rows["encode call p50 s"][4] == "B: not tested: quantiles from a histogram"


def test_compare_llama_tokens_are_not_a_ratio() -> None:
    a = snapshot(calls("", [10, 11, 12, 13], t0=10, tokens=None), target=LLAMA, run_id="a")
    b = snapshot(calls("", [10, 11, 12, 13], t0=10, tokens=None), target=LLAMA, run_id="b")
    rows = {r[0]: r for r in table(compare_tables([a, b], ["a", "b"]), "compare").rows}
    assert "tokens/s" not in rows  # unknown on both sides: no row, never 0 or a ratio of zeros


# -- charts --------------------------------------------------------------------------------------------------


def test_charts_draw_from_typed_results(tmp_path: Path) -> None:
    curve = (MemoryPoint(value=8, peak_rss_mib=200.0, peak_gpu_mib=None, torch_peak_mib=None, status="ok"),
             MemoryPoint(value=16, peak_rss_mib=None, peak_gpu_mib=None, torch_peak_mib=None, status="oom"))
    limit = MemoryLimit(axis="batch", largest_that_fits=8, stopped="oom", ceiling_mib=None, curve=curve)
    snap = snapshot(calls("lines=25", [10], t0=10), workload=SweepFacts(), results=[sweep(limit)])
    paths = sweep_charts(snap, tmp_path, "s")
    assert [p.name for p in paths] == ["s-latency.svg", "s-throughput.svg", "s-memory.svg"]
    assert compare_chart([two_kinds("a"), two_kinds("b")], ["a", "b"], tmp_path, "c") == []  # no pooled column
    a = snapshot(calls("", [10, 11, 12], t0=10), run_id="a")
    assert [p.name for p in compare_chart([a, a], ["a", "b"], tmp_path, "c")] == ["c-latency.svg"]
