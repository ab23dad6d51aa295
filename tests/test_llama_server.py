"""embprof against a real llama.cpp server, built from the llama-cpp-python sdist (tests/llama_server.py)
and serving the bundled all-MiniLM-L6-v2 converted to GGUF f16 by llama.cpp's own converter.

The first run builds llama-server (several minutes on two cores) into a cache outside the project.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from embprof.engine.events import Event, PhaseEnded, PhaseStarted, RequestTimed, ResourceSample, Result, RunFinished, RunStarted
from embprof.engine.report import summary_tables
from embprof.engine.results import LatencyStats, LoadResult, ServerMetrics, TargetFacts
from embprof.engine.tables import NA, Table
from embprof.engine.targets.http import COUNTERS_PHASE
from embprof.engine.workload_facts import LoadFacts
from fake_engine import snapshot_of
from llama_server import LlamaServer, minilm_gguf, server_binary
from cli_helpers import run_cli, snapshot_from

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llama() -> Iterator[LlamaServer]:
    model = minilm_gguf()
    server_binary()
    with LlamaServer(model) as server:
        yield server


def vm_hwm_mib(pid: int) -> float:
    """The kernel's own peak resident size of a process (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.parametrize("api", ["llama", "openai"])
def test_encode_and_speed_against_llama_server(cli_env: dict[str, str], llama: LlamaServer, api: str, speed_text: Path) -> None:
    rc, out, err, _ = run_cli(["run", "encode", "--server", llama.url, "--api", api, "--repeats", "3"], cli_env)
    assert rc == 0, err
    _, snap = snapshot_from(out)
    assert snap.status == "complete"
    reqs = [e for e in snap.events if isinstance(e, RequestTimed)]
    assert reqs and all(r.status == 200 and not r.error_kind for r in reqs)
    if api == "openai":
        assert all(r.tokens and r.tokens > 0 for r in reqs)  # llama.cpp reports usage on /v1/embeddings
        assert snap.summary.results["encode"].tokens_per_s is not None and snap.summary.results["encode"].tokens_per_s > 0
    else:
        # llama.cpp's native /embedding reports no token counts: not measured, never 0.
        assert all(r.tokens is None for r in reqs)
        assert snap.summary.results["encode"].tokens_per_s is None
    # Server-side memory, found by the URL's port: the sampled RSS of the server process, checked
    # against the kernel's own high-water mark for that process.
    assert snap.target.server_pid == llama.pid
    server_rss = [s.server_rss_mib for s in snap.events if isinstance(s, ResourceSample) and s.server_rss_mib is not None]
    assert server_rss
    assert max(server_rss) <= vm_hwm_mib(llama.pid) * 1.01
    assert max(server_rss) > 10  # the model is in there

    rc, out, err, _ = run_cli(["run", "speed", "--server", llama.url, "--api", api, "--loops", "2", "--text", str(speed_text)], cli_env)
    assert rc == 0, err
    _, snap = snapshot_from(out)
    speed = snap.summary.results["speed"]
    assert len(speed.timings) == 2 and speed.avg_words_per_sec > 0


def test_server_pid_given_and_metrics(cli_env: dict[str, str], llama: LlamaServer) -> None:
    rc, out, err, _ = run_cli(["run", "encode", "--server", llama.url, "--server-pid", str(llama.pid), "--repeats", "1"], cli_env)
    assert rc == 0, err
    _, snap = snapshot_from(out)
    assert snap.target.server_pid == llama.pid
    metrics = snap.summary.results["server_metrics"].delta
    # The server's own count of what it processed moved while the run went on.
    assert any(v > 0 for k, v in metrics.items() if "tokens" in k), metrics


def test_agreement_with_the_local_model(cli_env: dict[str, str], llama: LlamaServer) -> None:
    rc, out, err, _ = run_cli(["run", "encode", "--server", llama.url, "--repeats", "1", "--compare-model", "bundled"], cli_env)
    assert rc == 0, err
    _, snap = snapshot_from(out)
    agreement = snap.summary.results["agreement"]
    assert agreement.min >= 0.999, agreement
    assert len(agreement.cosine) == snap.summary.results["encode"].lines


def test_similarity_against_llama_server(cli_env: dict[str, str], llama: LlamaServer) -> None:
    rc, out, err, _ = run_cli(["run", "similarity", "--server", llama.url, "--api", "openai"], cli_env)
    assert rc == 0, err
    _, snap = snapshot_from(out)
    assert list(snap.summary.results["similarity"].top1_correct) == [True]  # as MiniLM ranks it locally


def test_load_against_llama_server(cli_env: dict[str, str], llama: LlamaServer) -> None:
    rc, out, err, _ = run_cli(["run", "load", "--server", llama.url, "--requests", "60", "--concurrency", "2"], cli_env)
    assert rc == 0, err
    _, snap = snapshot_from(out)
    load = snap.summary.results["load"]
    assert load.ok == 60 and load.errors == 0
    assert load.client_ceiling_per_s is not None and load.requests_per_s is not None
    assert load.client_ceiling_per_s > load.requests_per_s
    rc, out, err, _ = run_cli(["run", "load", "--server", llama.url, "--api", "openai", "--duration", "2", "--rate", "20"], cli_env)
    assert rc == 0, err
    _, snap = snapshot_from(out)
    load = snap.summary.results["load"]
    assert load.errors == 0 and 10 <= load.requests_done <= 80  # about 40 arrivals in 2 s


def test_texts_of_a_stated_token_length_are_counted_by_the_servers_tokenizer(cli_env: dict[str, str], llama: LlamaServer) -> None:
    rc, out, err, _ = run_cli(["run", "load", "--server", llama.url, "--text-tokens", "64", "--requests", "20"], cli_env)
    assert rc == 0, err
    _, snap = snapshot_from(out)
    notes = [e.text for e in snap.events if getattr(e, "kind", "") == "note" and e.text.startswith("texts of 64 tokens")]
    assert len(notes) == 1 and "by the server's tokenizer" in notes[0], notes
    counted = int(notes[0].split(" words each, ")[1].split(" tokens")[0])
    assert abs(counted - 64) <= 3, notes[0]
    assert snap.summary.results["load"].ok == 20
    # Where the time went: llama.cpp sends no timings with an answer, but its /metrics total the prompt seconds,
    # read again after the warm-up (its own phase) so that they cover the 20 timed requests alone.
    phases = [p.name for p in snap.summary.phases]
    assert phases.index("warm-up") < phases.index(COUNTERS_PHASE) < phases.index("load"), phases
    (split,) = [t for t in summary_tables(snap) if t.name == "load-split"]
    seconds = snap.summary.results["server_metrics"].delta["llamacpp:prompt_seconds_total"]
    assert str(split.rows[0][0]).startswith("inference (llama.cpp /metrics: the timed requests'") and split.rows[0][1] == 20
    assert split.rows[0][2] == pytest.approx(seconds / 20)
    # The server's inference is inside each request's time on the client: over the same 20 requests the
    # server's total is below the client's, and the rest is what the client saw beyond it.
    timed = [e for e in snap.events if getattr(e, "kind", "") == "request_timed" and e.group == "load" and not e.warmup]
    assert len(timed) == 20
    assert 0 < seconds < sum(e.duration_ns for e in timed) / 1e9
    rest = split.rows[1][2]
    assert isinstance(rest, float) and rest == pytest.approx(snap.summary.results["load"].latency.mean_s - seconds / 20)


# -- the split from llama.cpp's totals, where they cannot give one ---------------------------------------------

LLAMA = TargetFacts(backend="http", model_name="llama-server", api="llama", url="http://127.0.0.1:8080")
MS = 1_000_000


def load_run(*, seconds_start: float | None, seconds_end: float, sent: int = 20, done: int = 20, latency_s: float = 0.010,
             counters_phase: bool = True) -> Table:
    """The split table of a load run against llama.cpp, one warm-up then ``sent`` timed requests (``done`` answered),
    whose /metrics read ``seconds_start`` (None: no such counter then) and ``seconds_end`` prompt seconds; ``counters_phase``: the start counters
    were read after the warm-up, as a run now reads them (a run written before read them at the connect)."""
    def request(i: int, warm: bool) -> RequestTimed:
        return RequestTimed(t_ns=10 * MS + i, phase_id=2 if warm else 4, call_index=0, request_index=i, items=1,
                            duration_ns=int(latency_s * 1e9), status=200, bytes_sent=10, bytes_received=100, warmup=warm, group="load")

    t = 20 * MS
    events: list[Event] = [
        RunStarted(t_ns=0, run_id="r1", started_utc="2026-01-01T00:00:00+00:00", target=LLAMA, workload=LoadFacts(), sample_hz=10.0),
        Result(t_ns=1, result=LLAMA),
        PhaseStarted(t_ns=2, phase_id=2, name="warm-up", detail="1 request"), request(0, True),
        PhaseEnded(t_ns=t, phase_id=2, name="warm-up", duration_ns=t - 2),
    ]
    if counters_phase:
        events += [PhaseStarted(t_ns=t, phase_id=3, name=COUNTERS_PHASE), PhaseEnded(t_ns=t + 1, phase_id=3, name=COUNTERS_PHASE, duration_ns=1)]
    stats = LatencyStats(count=done, mean_s=latency_s) if done else LatencyStats(count=0)
    load = LoadResult(requests_sent=sent, requests_done=done, ok=done, errors=0, errors_by_kind={}, wall_s=1.0, requests_per_s=float(done),
                      items_per_s=float(done), tokens_per_s=None, latency=stats, client_ceiling_per_s=None, client_share_percent=None)
    key = "llamacpp:prompt_seconds_total"
    start = {} if seconds_start is None else {key: seconds_start}
    # As the server target takes the difference: a counter missing at the start counts from 0.
    metrics = ServerMetrics(start=start, end={key: seconds_end}, delta={key: seconds_end - start.get(key, 0.0)})
    events += [PhaseStarted(t_ns=t + 2, phase_id=4, name="load", detail="concurrency 1"), *[request(i, False) for i in range(1, done + 1)],
               Result(t_ns=t + 3, result=load), PhaseEnded(t_ns=t + 4, phase_id=4, name="load", duration_ns=2),
               Result(t_ns=t + 5, result=metrics), RunFinished(t_ns=t + 6, status="complete", duration_ns=t + 6)]
    (split,) = [tab for tab in summary_tables(snapshot_of(events)) if tab.name == "load-split"]
    return split


def test_the_split_divides_the_counters_read_after_the_warm_up_by_the_timed_requests() -> None:
    split = load_run(seconds_start=3.0, seconds_end=3.1)  # the warm-up's seconds are in the start
    assert split.rows[0][1] == 20 and split.rows[0][2] == pytest.approx(0.1 / 20)
    assert split.rows[1][1] == 20 and split.rows[1][2] == pytest.approx(0.010 - 0.1 / 20)
    # A run written before the counters were read after the warm-up: its totals hold it, and divide by it too.
    old = load_run(seconds_start=0.0, seconds_end=0.105, counters_phase=False)
    assert str(old.rows[0][0]).startswith("inference (llama.cpp /metrics: the run's prompt seconds over its requests, the warm-up among")
    assert old.rows[0][1] == 21 and old.rows[0][2] == pytest.approx(0.105 / 21)


@pytest.mark.parametrize(("fault", "kw", "why"), [pytest.param(*case, id=case[0]) for case in [
    ("a mean above the latency", {"seconds_start": 0.0, "seconds_end": 0.4},
     "the server's prompt seconds per request (0.02 s) exceed the mean latency (0.01 s)"),
    ("a counter that went down", {"seconds_start": 5.0, "seconds_end": 0.1}, "llama.cpp's prompt seconds went down during the run"),
    ("requests in flight", {"seconds_start": 0.0, "seconds_end": 0.1, "done": 18},
     "2 of 20 requests were still in flight when the load ended"),
    ("no prompt time", {"seconds_start": 1.0, "seconds_end": 1.0}, "llama.cpp counted no prompt time for 20 requests"),
    ("a counter missing at the start", {"seconds_start": None, "seconds_end": 0.1},
     "llama.cpp's /metrics had no prompt_seconds_total when the load began"),
]])
def test_a_split_the_counters_cannot_give_is_na_with_why_never_0(fault: str, kw: dict[str, Any], why: str) -> None:
    split = load_run(**kw)
    cells = [cell for row in split.rows for cell in row[2:]]
    wanted = [split.rows[1][2]] if fault == "a mean above the latency" else cells  # its p50 and p99: totals have none
    assert all(isinstance(c, NA) and why in str(c) for c in wanted), split.rows
    assert not any(c == 0 for c in cells), split.rows


def test_the_knee_of_a_real_llama_server(cli_env: dict[str, str], llama: LlamaServer) -> None:
    """--find-knee against llama-server: from half of what one connection sustains, rate steps until the
    objective breaks, then bisected; the answer is a rate with its curve, each step's figures its own."""
    rc, out, err, _ = run_cli(["run", "load", "--server", llama.url, "--find-knee", "--step-duration", "2", "--slo-p99", "150",
                               "--slo-errors", "0"], cli_env)
    assert rc == 0, err
    _, snap = snapshot_from(out)
    knee = snap.summary.results["knee"]
    assert knee.start_from.startswith("half of what one connection sustained")
    assert len(knee.steps) >= 2 and knee.sustainable_per_s is not None, knee
    held = [s for s in knee.steps if s.passed]
    assert max(s.offered_per_s for s in held) == knee.sustainable_per_s
    assert all(s.p99_s is not None and s.p99_s <= 0.150 and s.errors == 0 for s in held)
    broke = [s for s in knee.steps if not s.passed]
    assert broke and knee.bracket is not None and knee.bracket[1] / knee.bracket[0] <= 1.05 + 1e-9
    assert all(s.offered_per_s > knee.sustainable_per_s for s in broke)
    phases = [ph.name for ph in snap.summary.phases]
    assert "knee: one connection" in phases and sum(n.startswith("knee step") for n in phases) == len(knee.steps)
    # The answer held again, for twice a step's time, at the rate found: how it fared is the result's own.
    held = knee.confirmation
    assert held is not None and held.offered_per_s == knee.sustainable_per_s and "knee: confirmation" in phases
    assert knee.stability() == pytest.approx(held.p99_s / knee.search_step().p99_s)
    assert "The knee's steps" in out
    # Exports: the curve as a chart beside the Markdown report, and every step as CSV.
    path, _ = snapshot_from(out)
    md = path.parent / "knee.md"
    rc, _, err, _ = run_cli(["export", str(path), "--format", "md", "-o", str(md)], cli_env)
    assert rc == 0, err
    chart = path.parent / "knee-knee.svg"
    assert chart.is_file() and chart.read_text().lstrip().startswith("<?xml") and "knee-knee.svg" in md.read_text()
    rc, csv_out, err, _ = run_cli(["export", str(path), "--format", "csv", "--table", "knee-steps"], cli_env)
    assert rc == 0, err
    import csv as csv_module
    import io

    rows = list(csv_module.DictReader(io.StringIO(csv_out)))
    assert [float(r["offered/s"]) for r in rows] == pytest.approx([st.offered_per_s for st in knee.steps], rel=1e-3)


def test_too_large_input_names_the_flags(cli_env: dict[str, str], tmp_path: Path) -> None:
    long_text = tmp_path / "long.txt"
    long_text.write_text(" ".join(["word"] * 400) + "\n", encoding="utf-8")
    with LlamaServer(minilm_gguf(), "-ub", "128", "-b", "128") as small:
        rc, out, err, _ = run_cli(["run", "encode", "--server", small.url, "--input", str(long_text)], cli_env)
    assert rc == 1, err
    _, snap = snapshot_from(out)
    last = [e for e in snap.events if isinstance(e, RequestTimed)][-1]
    assert last.error_kind == "too large" and "-b and -ub" in last.error


@pytest.mark.skipif(not os.environ.get("EMBPROF_DATASETS") and not Path(__file__).parents[2].joinpath("shared", "datasets", "sts16").is_dir(),
                    reason="the evaluation datasets are absent")
def test_mteb_task_against_llama_server(cli_env: dict[str, str], llama: LlamaServer, tmp_path: Path) -> None:
    from conftest import DATASETS

    data = tmp_path / "data" / "sts16"
    data.mkdir(parents=True)
    rows = (DATASETS / "sts16" / "test.jsonl").read_text(encoding="utf-8").splitlines()[:50]
    (data / "test.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    rc, out, err, _ = run_cli(["mteb", "--server", llama.url, "-t", "STS16", "--data-dir", str(data.parent), "--results-dir", str(tmp_path / "results")], cli_env)
    assert rc == 0, err
    _, snap = snapshot_from(out)
    result = snap.summary.results["mteb:STS16"]
    assert result.status == "ok" and result.main_score is not None and 0.3 < result.main_score <= 1.0
    assert [e.texts for e in result.encodes] == [50, 50]
