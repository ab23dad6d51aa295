"""The load generator's processes, their merge, the open loop's latency from the schedule, and the
server's own timings: the real console script against local servers, offline.

Independent sources: each load process's own record file (written by that process as it measured,
apart from the pipe the merge reads), and the test server's own clock (the monotonic clock, which
the load processes share with this one).
"""

from __future__ import annotations

import json
import math
import threading
from types import SimpleNamespace
import time
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import run_cli, snapshot_from
from fault_helpers import wait_until

from embprof.engine.events import RequestTimed
from embprof.engine.loadgen import LoadProcesses, ProcessSpec, Record, split
from embprof.engine.plan import ServerTarget
from embprof.engine.results import LoadResult
from embprof.engine.stats import LatencySeries
from embprof.engine.targets.http import HttpTarget
from embprof.engine.targets.protocol import request_payload
from embprof.engine.trivial_server import FastTrivialServer, TrivialHandler


def load_of(out: str) -> tuple[Any, LoadResult]:
    _, snap = snapshot_from(out)
    result = snap.summary.results.get("load")
    assert isinstance(result, LoadResult), snap.summary.results.keys()
    return snap, result


def records(folder: Path) -> list[Record]:
    out = []
    for f in sorted(folder.glob("process-*.jsonl")):
        out += [Record.of_row(json.loads(line)) for line in f.read_text().splitlines() if line.strip()]
    return out


def test_merged_timings_of_two_load_processes_equal_their_own_records(cli_env: dict[str, str], tmp_path: Path) -> None:
    with FastTrivialServer() as srv:
        rc, out, err, _ = run_cli(["run", "load", "--server", srv.url, "--requests", "3000", "--concurrency", "8", "--load-processes", "2",
                                   "--records", str(tmp_path / "rec")], cli_env)
    assert rc == 0, err
    snap, result = load_of(out)
    own = records(tmp_path / "rec")
    assert sorted({r.process for r in own}) == [0, 1] and len(list((tmp_path / "rec").glob("process-*.jsonl"))) == 2
    # Both processes sent, each its share, and the merge holds every request each recorded, no more.
    assert len(own) == result.requests_done == result.ok == 3000 == result.requests_sent
    assert sorted(r.process for r in own).count(0) == 1500
    assert result.load_processes == 2 and result.latency_from == "send"
    # Every request's own latency, exactly: the merged series is the union of the processes' records.
    assert result.latency.quantiles == "exact" and result.latency.samples_s is not None
    assert sorted(result.latency.samples_s) == sorted(r.latency_ns / 1e9 for r in own)
    events = [e for e in snap.events if isinstance(e, RequestTimed) and not e.warmup]
    assert sorted(e.duration_ns for e in events) == sorted(r.latency_ns for r in own)
    # The load's figures are those of the records: the rate is the count over the window they fell in.
    first, last = min(r.sent_ns for r in own), max(r.done_ns for r in own)
    assert result.wall_s == pytest.approx((last - first) / 1e9, abs=0.06)


def test_the_client_alone_sends_thousands_a_second_and_says_what_served_it(cli_env: dict[str, str]) -> None:
    with FastTrivialServer() as srv:
        rc, out, err, _ = run_cli(["run", "load", "--server", srv.url, "--requests", "200", "--concurrency", "16"], cli_env)
    assert rc == 0, err
    snap, _ = load_of(out)
    ceiling = snap.summary.results["client_ceiling"]
    # The bar is 5,000/s on an idle machine (benchmarks/client_ceiling.py prints it); the suite runs
    # beside other work, so here only what no thread-per-request client reached: above 2,000/s.
    assert ceiling.requests_per_s is not None and ceiling.requests_per_s > 2000, ceiling
    assert ceiling.endpoint == "an asyncio protocol server (uvloop) in its own process"
    assert "client alone, measured against" in out


def test_a_count_is_shared_among_the_processes_as_evenly_as_it_goes() -> None:
    assert split(10, 3) == [4, 3, 3] and split(9, 3) == [3, 3, 3] and split(2, 4) == [1, 1, 0, 0]
    assert all(isinstance(n, int) for n in split(10, 3)) and split(None, 2) == [None, None]


class _Stalling(TrivialHandler):
    """Answers at once, except that from the load's first request's arrival + 1 s to + 2 s nothing is answered:
    every request that arrives then waits until the stall ends. The first ``skip`` requests (a run's warm-up) are
    answered and not counted, so that the stall falls inside the load however long the steps before it took.
    Each request's arrival, on this process's monotonic clock, is kept in ``arrivals``."""

    state: dict[str, float] = {}
    arrivals: list[float] = []
    skip = 0
    lock = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self._body()
        now = time.monotonic()
        with self.lock:
            self.arrivals.append(now)
            first = self.state.setdefault("first", now) if len(self.arrivals) > self.skip else now + 3600.0
        start, end = first + 1.0, first + 2.0
        if start <= now < end:
            time.sleep(end - now)
        self._answer(body)


@pytest.fixture
def stalling() -> Any:
    _Stalling.state, _Stalling.arrivals, _Stalling.skip = {}, [], 0
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Stalling)
    httpd.daemon_threads = True
    httpd.request_queue_size = 1024
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _stall_ns() -> tuple[int, int]:
    """The stall's start and end on the monotonic clock, in ns (the server's clock is the load processes' clock)."""
    end = int((_Stalling.state["first"] + 2.0) * 1e9)
    return end - int(1e9), end


def test_an_open_loop_counts_a_servers_stall_in_every_request_due_during_it(cli_env: dict[str, str], tmp_path: Path,
                                                                            stalling: Any) -> None:
    url = f"http://127.0.0.1:{stalling.server_address[1]}"
    _Stalling.skip = 1  # the warm-up
    rc, out, err, _ = run_cli(["run", "load", "--server", url, "--rate", "100", "--duration", "3.5", "--records", str(tmp_path / "open")],
                              cli_env)
    assert rc == 0, err
    _, result = load_of(out)
    assert result.latency_from == "due" and result.send_lag is not None
    stall_start_ns, stall_end_ns = _stall_ns()
    own = records(tmp_path / "open")
    during = [r for r in own if r.due_ns is not None and stall_start_ns + 20e6 <= r.due_ns < stall_end_ns - 20e6]
    assert len(during) > 50, len(during)  # about 100 a second were due
    for r in during:  # each waited for the stall's end, and its latency (from when it was due) says so
        assert r.done_ns >= stall_end_ns and r.latency_ns >= stall_end_ns - (r.due_ns or 0), r
    # The snapshot's figures are each request's answer less its due time, and its lag its send less its due time,
    # from the processes' own fields: a latency timed from the send would differ by each request's lag.
    assert result.latency.samples_s is not None and result.send_lag.samples_s is not None
    assert sorted(result.latency.samples_s) == sorted((r.done_ns - (r.due_ns or 0)) / 1e9 for r in own)
    assert sorted(result.send_lag.samples_s) == sorted(max(0, r.sent_ns - (r.due_ns or 0)) / 1e9 for r in own)
    # The snapshot's own figures carry it: every request due in the stall's first half is slower than 0.5 s.
    slow = [r for r in own if r.latency_ns > 0.5e9]
    assert len(slow) >= sum(1 for r in during if (r.due_ns or 0) < stall_end_ns - 0.5e9) > 10
    assert result.latency.max_s is not None and result.latency.max_s > 0.9 and result.latency.count == len(own)
    assert "latency from" in out and "when each request was due (open loop)" in out

    # The closed loop against the same stall: one request waits, and the rest are never sent during it.
    _Stalling.state, _Stalling.arrivals = {}, []
    rc, out, err, _ = run_cli(["run", "load", "--server", url, "--concurrency", "1", "--duration", "3.5", "--records",
                               str(tmp_path / "closed")], cli_env)
    assert rc == 0, err
    _, closed = load_of(out)
    assert closed.latency_from == "send" and closed.send_lag is None
    assert sum(r.latency_ns > 0.5e9 for r in records(tmp_path / "closed")) == 1


def test_an_open_loop_request_sent_late_counts_its_wait_from_when_it_was_due(stalling: Any) -> None:
    """Sends that fall behind schedule: one request at a time (max_in_flight 1) against a server that stalls for a
    second, so that the arrivals due during the stall are sent only after it. The server's own log of arrivals shows
    that they were sent late; each one's latency must still run from when it was due, the wait included (timed
    from its send, it would be the few milliseconds of its answer: coordinated omission)."""
    url = f"http://127.0.0.1:{stalling.server_address[1]}"
    path, body = request_payload("llama", ["a text"], None)
    spec = ProcessSpec(base_url=url, path=path, bodies=[json.dumps(body)], items=[1], api="llama", concurrency=1, rate=50.0, seed=3,
                       duration_s=4.0, timeout_s=30.0, max_in_flight=1)
    got: list[Record] = []
    merged = LoadProcesses([spec]).run(got.append, lambda: False)
    assert not merged.crashed and all(r.kind == "" for r in got), merged
    stall_start_ns, stall_end_ns = _stall_ns()
    # The schedule does not stop for the stall: about 50 arrivals were due in it (and answered in the two seconds left
    # after it, one at a time) ...
    during = [r for r in got if r.due_ns is not None and stall_start_ns + 20e6 <= r.due_ns < stall_end_ns - 20e6]
    assert len(during) > 25, len(during)
    # ... while the server saw none arrive but the one it held (its clock, not the load process's records).
    arrived = [t for t in _Stalling.arrivals if stall_start_ns + 20e6 <= t * 1e9 < stall_end_ns - 20e6]
    assert len(arrived) <= 1, arrived
    for r in during:
        assert r.due_ns is not None and r.latency_ns == r.done_ns - r.due_ns >= stall_end_ns - r.due_ns, r
    # All but the one the server held were sent only once the stall had ended: late by the whole wait, which their
    # latency holds beside the time from their send to their answer.
    late = [r for r in during if r.sent_ns >= stall_end_ns]
    assert len(late) >= len(during) - 1, (len(late), len(during))
    for r in late:
        assert r.due_ns is not None and r.lag_ns == r.sent_ns - r.due_ns >= stall_end_ns - r.due_ns, r
        assert r.latency_ns == r.lag_ns + (r.done_ns - r.sent_ns), r
    # Folded as the load workload folds them, the figures keep the wait.
    series = LatencySeries()
    for r in got:
        series.add(r.latency_ns / 1e9)
    worst_wait = max(stall_end_ns - (r.due_ns or 0) for r in during) / 1e9
    assert series.stats().max_s is not None and series.stats().max_s >= worst_wait > 0.9


class _Tei(TrivialHandler):
    """An OpenAI-compatible answer with Text Embeddings Inference's timing headers (milliseconds), after
    spending the 16 ms its headers claim."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self._body()
        time.sleep(0.016)
        self._answer(body)

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.command == "POST":
            for name, ms in (("x-queue-time", "3"), ("x-tokenization-time", "1"), ("x-inference-time", "12"), ("x-total-time", "16")):
                self.send_header(name, ms)
        self.end_headers()
        self.wfile.write(body)


def test_a_servers_timing_headers_split_each_requests_time(cli_env: dict[str, str]) -> None:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Tei)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        rc, out, err, _ = run_cli(["run", "load", "--server", url, "--api", "openai", "--requests", "120", "--concurrency", "2"], cli_env)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert rc == 0, err
    _, result = load_of(out)
    split = result.server_split
    assert split is not None and result.server_split_requests == 120
    for part, seconds in (("queue", 0.003), ("tokenization", 0.001), ("inference", 0.012), ("server_total", 0.016)):
        assert split[part].count == 120 and split[part].p50_s == pytest.approx(seconds), part
    # The rest of each request's time is the network and the client: its own latency less the server's total.
    rest = split["network_client"]
    assert rest.count == 120 and rest.mean_s is not None and result.latency.mean_s is not None
    assert rest.mean_s == pytest.approx(result.latency.mean_s - 0.016, abs=1e-6)
    assert "Where the time went" in out and "inference (server)" in out


def test_a_server_without_timings_shows_na_in_the_split(cli_env: dict[str, str]) -> None:
    with FastTrivialServer() as srv:
        rc, out, err, _ = run_cli(["run", "load", "--server", srv.url, "--requests", "50"], cli_env)
    assert rc == 0, err
    snap, result = load_of(out)
    assert result.server_split is None
    from embprof.engine.report import summary_tables
    from embprof.engine.tables import NA

    (split,) = [t for t in summary_tables(snap) if t.name == "load-split"]
    assert split.rows == [["every part", 0, *[NA("the server reports no timings of its own (TEI sends x-queue-time, x-inference-time …)")] * 3]]
    assert "every part" in out


@pytest.mark.parametrize(("mode", "api", "kind", "text"), [
    ("redirect", "openai", "http 307", "redirects to 'http://elsewhere.invalid/v1/embeddings'; give that URL to --server"),
    ("toolarge", "llama", "too large", "restart llama-server with larger -b and -ub"),
])
def test_a_load_process_reads_a_failed_answer_as_the_server_target_does(fault_servers: Any, mode: str, api: str, kind: str,
                                                                       text: str) -> None:
    """One reading of answers for both clients: the load generator follows no redirect (it names where the server moved)
    and turns llama.cpp's batch refusal into what to do about it, in the very words of the synchronous client."""
    srv = fault_servers(mode)
    chunk = ["a text", "another text"]
    path, body = request_payload(api, chunk, None)
    spec = ProcessSpec(base_url=srv.url, path=path, bodies=[json.dumps(body)], items=[len(chunk)], api=api, concurrency=1,
                       requests=3, timeout_s=30.0)
    got: list[Record] = []
    merged = LoadProcesses([spec]).run(got.append, lambda: False)
    target = HttpTarget(ServerTarget(url=srv.url, api=api))
    try:
        sync = target.try_request(chunk)
    finally:
        target.close()
    assert not merged.crashed and len(got) == 3, (merged, got)
    assert sync.error_kind == kind and text in sync.error, sync
    for rec in got:
        assert (rec.kind, rec.message) == (sync.error_kind, sync.error), rec
    # Not followed: the server saw every request the load sent (and the synchronous one), and nothing went elsewhere.
    assert srv.state.count == 4


# -- the knee -----------------------------------------------------------------------------------------------


@pytest.fixture
def capacity_server() -> Any:
    """A server of known capacity: 50 requests at once, each answered after 0.25 s (200 a second at most).
    Below that, latency stays at 0.25 s; above it a queue grows and so does latency."""
    import asyncio

    from aiohttp import web

    ready = threading.Event()
    box: dict[str, Any] = {}

    def serve() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        slots = asyncio.Semaphore(50)

        async def embed(request: web.Request) -> web.Response:
            body = await request.json()
            async with slots:
                await asyncio.sleep(0.25)
            return web.json_response([{"index": i, "embedding": [[0.5, 0.5, 0.5, 0.5]]} for i in range(len(body["content"]))])

        async def info(request: web.Request) -> web.Response:
            return web.json_response({"status": "ok"})

        app = web.Application()
        app.router.add_post("/embedding", embed)
        app.router.add_get("/{tail:.*}", info)
        runner = web.AppRunner(app, access_log=None)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=2048)
        loop.run_until_complete(site.start())
        box["port"] = runner.addresses[0][1]
        box["loop"] = loop
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ready.wait(30)
    yield f"http://127.0.0.1:{box['port']}"
    box["loop"].call_soon_threadsafe(box["loop"].stop)
    thread.join(30)


@pytest.mark.slow
def test_the_knee_of_a_server_of_known_capacity_is_found_within_ten_percent(cli_env: dict[str, str], capacity_server: str) -> None:
    # The capacity, measured apart: a closed loop of twice the server's slots keeps every slot busy, so what it
    # gets answered is all the server can answer (by construction 200/s, less the server's own overhead).
    rc, out, err, _ = run_cli(["run", "load", "--server", capacity_server, "--api", "llama", "--concurrency", "100", "--duration", "5"],
                              cli_env)
    assert rc == 0, err
    _, saturated = load_of(out)
    capacity = saturated.requests_per_s
    assert capacity is not None and 170 <= capacity <= 205, capacity
    rc, out, err, _ = run_cli(["run", "load", "--server", capacity_server, "--api", "llama", "--find-knee", "--rate", "150",
                               "--step-duration", "6", "--slo-p99", "400"], cli_env)
    assert rc == 0, err
    _, snap = snapshot_from(out)
    knee = snap.summary.results["knee"]
    steps = [(s.offered_per_s, s.p99_s, s.why) for s in knee.steps]
    assert knee.sustainable_per_s is not None and abs(knee.sustainable_per_s - capacity) <= 0.10 * capacity, (capacity, steps)
    assert knee.bracket is not None and knee.bracket[1] / knee.bracket[0] <= 1.05 + 1e-9
    offered = [s.offered_per_s for s in knee.steps]
    assert offered[:2] == pytest.approx([150, 225])  # grown by half each step until it broke, then bisected
    assert all(s.passed == (s.offered_per_s <= knee.sustainable_per_s) for s in knee.steps)
    # Each step's figures are its own requests': latency from when each was due, at least the 0.25 s of service.
    for s in knee.steps:
        assert s.p50_s is not None and s.p50_s >= 0.25
        assert s.achieved_per_s is not None and s.achieved_per_s <= capacity * 1.1
    assert "The knee: the largest rate that held the objective" in out and "sustainable rate" in out


async def test_the_dashboard_draws_the_knee_as_the_search_goes(tmp_path: Path) -> None:
    """The real workload in the dashboard (no scripted engine): the Scores panel lists each step as it ends,
    then the sustainable rate; the curve is drawn."""
    from pilot_helpers import plain, until
    from textual.widgets import DataTable, Static

    from embprof.engine.plan import LoadPlan, RunPlan, ServerTarget
    from embprof.tui.app import EmbprofApp

    with FastTrivialServer() as srv:
        plan = RunPlan(target=ServerTarget(url=srv.url), workload=LoadPlan(find_knee=True, rate=20.0, max_rate=40.0, step_s=1.0))
        app = EmbprofApp(plan, profiles_dir=tmp_path / "profiles")
        async with app.run_test(size=(140, 44)) as pilot:
            await pilot.press("4")
            table = app.query_one("#scores-table", DataTable)
            await until(pilot, lambda: table.row_count >= 1, timeout=120)  # the first step, before the search ends
            await until(pilot, lambda: app.current is not None and app.current.finished, timeout=120)
            await pilot.pause(0.5)
            rows = [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]
            assert [r[1] for r in rows] == ["20.0", "30.0", "40.0"] and all(r[6] == "holds" for r in rows), rows
            head = plain(app.query_one("#scores-head", Static).content, 200)
            assert "sustainable rate" in head and "40/s" in head
            assert app.query_one("#sweep-plot").display


# -- request shapes --------------------------------------------------------------------------------------------


def test_a_mix_sends_each_source_in_its_share_and_reports_latency_by_source(cli_env: dict[str, str], tmp_path: Path) -> None:
    queries = tmp_path / "queries.txt"
    queries.write_text("\n".join(f"short query {i}" for i in range(50)) + "\n")
    docs = tmp_path / "docs.txt"
    docs.write_text("\n".join("a long document " * 40 + str(i) for i in range(20)) + "\n")
    seen: list[int] = []

    class Counting(TrivialHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self._body()
            seen.append(len(body["content"][0]))
            self._answer(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Counting)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        rc, out, err, _ = run_cli(["run", "load", "--server", url, "--api", "llama", "--requests", "400", "--concurrency", "4",
                                   "--mix", f"{queries}:0.8,{docs}:0.2"], cli_env)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert rc == 0, err
    snap, result = load_of(out)
    long = sum(1 for n in seen[1:] if n > 300)  # the warm-up aside: documents are 600+ characters, queries under 20
    assert len(seen) == 401 and 40 <= long <= 120, long  # 20 % of 400 is 80; the draw is seeded, so this never changes
    assert result.by_source is not None and set(result.by_source) == {"queries.txt", "docs.txt"}
    assert result.by_source["queries.txt"].count + result.by_source["docs.txt"].count == 400
    assert result.by_source["docs.txt"].count == long
    assert snap.plan is not None and getattr(snap.plan.workload, "mix", None) == ((str(queries), 0.8), (str(docs), 0.2))
    assert "Latency by the source of the texts" in out


def test_a_mix_is_refused_in_one_sentence_when_its_spec_is_wrong(cli_env: dict[str, str]) -> None:
    for spec, said in (("queries.txt", "--mix takes SOURCE:SHARE pairs"), ("a.txt:0.5", "--mix mixes two sources or more"),
                       ("tokens=x:0.5,tokens=4:0.5", "--mix takes tokens=N"), ("a.txt:-1,b.txt:1", "must be a positive number")):
        rc, out, err, _ = run_cli(["run", "load", "--server", "http://127.0.0.1:9", "--mix", spec], cli_env)
        assert rc == 2 and said in err and "Traceback" not in err, (spec, err)


# -- the load process's sender, run in this process ------------------------------------------------------------------
# `python -m embprof.engine.loadgen` as embprof drives it (its settings, then `go START DEADLINE` on stdin; JSON lines
# out), but here in this process, so that what it sends, times and writes is checked line by line.


def run_sender(spec: ProcessSpec, monkeypatch: pytest.MonkeyPatch, *, start_in_s: float = 0.05, duration_s: float | None = None,
               stop_after_s: float | None = None, stop_when: Any = None, stdout: Any = None,
               uvloop: bool = False) -> tuple[int, list[dict[str, Any]]]:
    """The load process's own loop on ``spec``: the common start it was given (monotonic ns), and the lines it wrote
    (to ``stdout``, a StringIO, when given). A stop is sent ``stop_after_s`` after the call, or once ``stop_when()``
    holds (polled; at the latest after 30 s)."""
    import asyncio
    import io
    import os

    from embprof.engine import loadgen

    read_end, write_end = os.pipe()
    stdin = os.fdopen(read_end, "r")
    stdout = io.StringIO() if stdout is None else stdout
    monkeypatch.setattr("sys.stdin", stdin)
    monkeypatch.setattr("sys.stdout", stdout)
    start = time.monotonic_ns() + int(start_in_s * 1e9)
    deadline = "-" if duration_s is None else str(start + int(duration_s * 1e9))
    os.write(write_end, f"go {start} {deadline}\n".encode())
    timer = threading.Timer(stop_after_s, lambda: os.write(write_end, b"stop\n")) if stop_after_s is not None else None
    if stop_when is not None:
        def poll() -> None:
            try:
                wait_until(stop_when, 30.0, "the condition for the stop")
            finally:  # the stop goes out whatever happened: a sender never told to stop would run until pytest's timeout
                os.write(write_end, b"stop\n")

        timer = threading.Timer(0.0, poll)
    if timer is not None:
        timer.start()
    try:
        if uvloop:  # the loop the load process runs where it is installed
            import uvloop as uv

            uv.run(loadgen.process_main(spec))
        else:
            asyncio.run(loadgen.process_main(spec))
    finally:
        if timer is not None:
            timer.cancel()
        os.close(write_end)
        stdin.close()
    return start, [json.loads(line) for line in stdout.getvalue().splitlines()]


def rows_of(lines: list[dict[str, Any]]) -> list[Record]:
    return [Record.of_row(row) for line in lines if line["kind"] == "records" for row in line["rows"]]


def sender_spec(url: str, **kw: Any) -> ProcessSpec:
    path, body = request_payload("llama", ["a text", "another text"], None)
    settings: dict[str, Any] = dict(base_url=url, path=path, bodies=[json.dumps(body)], items=[2], api="llama", concurrency=1,
                                    timeout_s=10.0, index=3)
    settings.update(kw)
    return ProcessSpec(**settings)


def test_the_sender_sends_a_count_and_says_what_each_request_did(fault_servers: Any, monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    srv = fault_servers("ok")
    bodies = [json.dumps(request_payload("llama", texts, None)[1]) for texts in (["a"], ["b", "c", "d"])]
    copy = tmp_path / "process-4.jsonl"
    spec = sender_spec(srv.url, bodies=bodies, items=[1, 3], requests=7, concurrency=2, records_file=str(copy))
    start, lines = run_sender(spec, monkeypatch)
    assert lines[0] == {"kind": "ready"} and lines[-1] == {"kind": "end", "sent": 7, "in_flight": 0}
    got = rows_of(lines)
    assert sorted(r.index for r in got) == list(range(7)) and srv.state.count == 7
    for r in got:
        k = r.index % 2
        assert (r.process, r.due_ns, r.status, r.kind, r.message, r.items, r.dim) == (3, None, 200, "", "", [1, 3][k], 4), r
        assert r.sent_bytes == len(bodies[k].encode()) and r.received_bytes > 0 and start <= r.sent_ns <= r.done_ns, r
        assert r.latency_ns == r.done_ns - r.sent_ns and r.lag_ns is None
    # Its own copy of the records is the same rows, as it measured them.
    assert sorted((json.loads(line) for line in copy.read_text().splitlines()), key=lambda row: row[1]) == \
        sorted((r.row() for r in got), key=lambda row: row[1])


def test_the_senders_own_copy_of_its_records_is_whole_when_it_says_it_has_ended(fault_servers: Any, monkeypatch: pytest.MonkeyPatch,
                                                                               tmp_path: Path) -> None:
    """The records file holds every row the process sent down the pipe, batch after batch, and is complete on disk by
    the time the process writes ``end`` (after which embprof may end it): read here at that very moment."""
    import io

    srv = fault_servers("slow", slow_s=0.1)  # answers a tenth of a second apart: a batch or two of them every 50 ms
    copy = tmp_path / "process-1.jsonl"
    on_disk: list[str] = []

    class Watching(io.StringIO):
        def write(self, text: str) -> int:
            if text.startswith('{"kind": "end"'):
                on_disk.append(copy.read_text())
            return super().write(text)

    _, lines = run_sender(sender_spec(srv.url, concurrency=2, records_file=str(copy)), monkeypatch, duration_s=0.45, stdout=Watching())
    rows = [r.row() for r in rows_of(lines)]
    assert sum(1 for line in lines if line["kind"] == "records") >= 2 and len(rows) >= 2, lines[-1]  # several batches
    assert len(on_disk) == 1 and [json.loads(line) for line in on_disk[0].splitlines()] == rows


def test_the_sender_keeps_its_poisson_schedule(fault_servers: Any, monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """Open loop: request i is due at the start plus the first i + 1 gaps of the seeded exponential draws (the
    schedule is the seed's, whatever the server does), and none is sent before it is due. Its event loop reports no
    error meanwhile (asyncio logs one for a callback or task that failed unseen)."""
    import logging
    import random

    srv = fault_servers("ok")
    start, lines = run_sender(sender_spec(srv.url, rate=200.0, seed=11, requests=25, concurrency=4), monkeypatch)
    got = sorted(rows_of(lines), key=lambda r: r.index)
    draws, due = random.Random(11), float(start)
    schedule = []
    for _ in range(25):
        due += draws.expovariate(200.0) * 1e9
        schedule.append(int(due))
    assert [r.index for r in got] == list(range(25)) and [r.due_ns for r in got] == schedule
    assert all(r.lag_ns is not None and 0 <= r.lag_ns and r.latency_ns == r.done_ns - (r.due_ns or 0) for r in got)
    assert lines[-1] == {"kind": "end", "sent": 25, "in_flight": 0}
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR] == []


def poisson_dues(start: int, seed: int, rate: float, count: int) -> list[int]:
    """The seed's schedule, drawn here apart from the sender: request i is due at the start plus the first i + 1 gaps."""
    import random

    draws, due, out = random.Random(seed), float(start), []
    for _ in range(count):
        due += draws.expovariate(rate) * 1e9
        out.append(int(due))
    return out


def test_an_open_loop_with_a_duration_counts_every_request_due_before_its_end(fault_servers: Any,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Open loop for a duration: every arrival due before the deadline is sent, and (against a server that answers at
    once) answered and counted; none due after it is sent. The seed is one whose last arrival before the end leaves a
    quarter of a second for its answer, so that nothing here depends on the machine's speed."""
    srv = fault_servers("ok")
    rate, seconds = 20.0, 0.8
    seed = next(s for s in range(1000) if 3 <= sum(1 for d in poisson_dues(0, s, rate, 40) if d < seconds * 1e9)
                and max(d for d in poisson_dues(0, s, rate, 40) if d < seconds * 1e9) <= (seconds - 0.25) * 1e9)
    start, lines = run_sender(sender_spec(srv.url, rate=rate, seed=seed, concurrency=4), monkeypatch, duration_s=seconds)
    due = [d for d in poisson_dues(start, seed, rate, 40) if d < start + int(seconds * 1e9)]
    got = sorted(rows_of(lines), key=lambda r: r.index)
    assert [(r.index, r.due_ns, r.kind) for r in got] == [(i, d, "") for i, d in enumerate(due)], got
    assert lines[-1] == {"kind": "end", "sent": len(due), "in_flight": 0} and srv.state.count == len(due)


def test_an_open_loop_with_a_duration_ends_at_its_deadline_and_not_before(fault_servers: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """An open loop whose schedule ends early (at 1 a second, the seed's first arrival falls after the 0.3 s): nothing
    is sent, and the process still ends no earlier than its deadline (what runs beside the load, its samplers, takes
    the duration as the load's window), by this test's own clock."""
    srv = fault_servers("ok")
    seed = next(s for s in range(1000) if poisson_dues(0, s, 1.0, 1)[0] > 2e9)  # the first arrival two seconds on
    start, lines = run_sender(sender_spec(srv.url, rate=1.0, seed=seed), monkeypatch, duration_s=0.3)
    assert time.monotonic_ns() >= start + int(0.3e9)
    assert lines[-1] == {"kind": "end", "sent": 0, "in_flight": 0} and srv.state.count == 0


def test_the_sender_records_the_servers_own_timings(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that says how its time went (TEI's headers, in milliseconds): each record carries them, in seconds."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Tei)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        path, body = request_payload("openai", ["a text"], None)
        _, lines = run_sender(sender_spec(f"http://127.0.0.1:{httpd.server_address[1]}", api="openai", path=path, bodies=[json.dumps(body)],
                                          items=[1], requests=2), monkeypatch)
    finally:
        httpd.shutdown()
        httpd.server_close()
    got = rows_of(lines)
    assert len(got) == 2 and all(r.kind == "" for r in got), got
    for r in got:
        assert r.server == {"queue": 0.003, "tokenization": 0.001, "inference": 0.012, "server_total": 0.016}, r


def test_an_open_loop_whose_start_has_passed_sends_what_is_overdue_at_once(fault_servers: Any,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A process told a start already a minute past (it read its `go` late): the arrivals due since are sent at once,
    each still due when the seed's schedule says (to the nanosecond, over a schedule of some twenty seconds) and timed
    from then: its lag is the wait since it was due, not hidden."""
    srv = fault_servers("ok")
    seed = next(s for s in range(1000) if poisson_dues(0, s, 1.0, 20)[-1] < 50e9)  # all twenty due within the minute past
    began = time.monotonic_ns()
    start, lines = run_sender(sender_spec(srv.url, rate=1.0, seed=seed, requests=20, concurrency=4), monkeypatch, start_in_s=-60.0)
    got = sorted(rows_of(lines), key=lambda r: r.index)
    assert [r.due_ns for r in got] == poisson_dues(start, seed, 1.0, 20) and all(r.kind == "" for r in got), got
    for r in got:
        assert r.sent_ns >= began and r.lag_ns == r.sent_ns - (r.due_ns or 0) > 0 and r.latency_ns == r.done_ns - (r.due_ns or 0), r
    assert lines[-1] == {"kind": "end", "sent": 20, "in_flight": 0}


def test_the_sender_counts_nothing_answered_after_its_deadline(fault_servers: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    srv = fault_servers("slow", slow_s=0.3)
    start, lines = run_sender(sender_spec(srv.url, concurrency=2), monkeypatch, duration_s=0.5)
    got = rows_of(lines)
    deadline = start + int(0.5e9)
    # Two workers, each answered after 0.3 s: one answer each within the half second, the second ones cut off.
    assert len(got) == 2 and all(r.done_ns <= deadline for r in got)
    assert lines[-1]["kind"] == "end" and lines[-1]["sent"] == 4 and lines[-1]["in_flight"] == 2


@pytest.mark.parametrize("mode, settings, kind, says", [
    ("slow", {"slow_s": 2.0}, "timeout", "no answer within 0.3 s (--timeout)"),
    ("500", {}, "http 500", "boom"),
    ("huge500", {}, "http 500", "AAAA"),  # a 4 MiB message: its start kept, not refused as too long
    ("html502", {}, "http 502", "HTTP 502 (Bad Gateway)"),  # the reason phrase
    ("redirect", {}, "http 307", "redirects to 'http://elsewhere.invalid/v1/embeddings'"),  # not followed; where it points, said
    ("hugebody", {}, "bad body", "declares 300 MiB"),
    ("drop", {}, "connection", ""),
])
def test_the_sender_names_each_failure(fault_servers: Any, monkeypatch: pytest.MonkeyPatch, mode: str, settings: dict[str, Any],
                                       kind: str, says: str) -> None:
    srv = fault_servers(mode, **settings)
    _, lines = run_sender(sender_spec(srv.url, requests=2, timeout_s=0.3), monkeypatch)
    got = rows_of(lines)
    assert len(got) == 2 and all(r.kind == kind and says in r.message and r.dim is None for r in got), got
    assert all(len(r.message) <= 400 for r in got)


def test_a_refused_connection_is_a_connection_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _, lines = run_sender(sender_spec(f"http://127.0.0.1:{port}", requests=1), monkeypatch)
    (r,) = rows_of(lines)
    # The client's own first line, naming where it could not connect (not only the exception's class).
    assert r.kind == "connection" and r.status is None and f"127.0.0.1:{port}" in r.message and "\n" not in r.message, r
    # Nothing came back: no bytes, no server timings, no tokens, no width.
    assert (r.received_bytes, r.server, r.tokens, r.dim) == (0, None, None, None), r


@pytest.mark.parametrize("mode", ["300", "404", "599"])
def test_the_sender_reads_any_answer_outside_2xx_as_the_server_target_does(fault_servers: Any, monkeypatch: pytest.MonkeyPatch,
                                                                          mode: str) -> None:
    """A 300 (a redirect that names nowhere), a 404 (whose message names the path that answered it) and a 599 (a status
    line with no reason phrase): the load process's record says what the synchronous client (an independent reading of
    the same server) says. Such an answer is an error
    message, read to the error limit whatever the limit on answers: here an answer limit of 16 bytes, shorter than
    the server's message, still gives the status, not "too long"."""
    srv = fault_servers(mode)
    _, lines = run_sender(sender_spec(srv.url, requests=1, max_answer_bytes=16), monkeypatch)
    (r,) = rows_of(lines)
    target = HttpTarget(ServerTarget(url=srv.url, api="llama"))
    try:
        sync = target.try_request(["a text", "another text"])
    finally:
        target.close()
    assert sync.error_kind == f"http {mode}" and (r.status, r.kind, r.message) == (int(mode), sync.error_kind, sync.error), (r, sync)
    assert r.received_bytes > 16, r  # the whole message read, past the answer limit


def test_a_stop_or_the_end_of_stdin_before_the_start_ends_the_sender_with_nothing_sent(fault_servers: Any,
                                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """embprof stops a load before its common start (a stop in the first moments, another process that failed): the
    process ends at once, says it sent nothing, and the server sees no request. A line it cannot read (a `go` without
    its deadline) is a stop too: a process that never hears a start it can use must not wait for one."""
    import asyncio
    import io
    import os

    from embprof.engine import loadgen

    srv = fault_servers("ok")
    for first in (b"stop\n", b"", b"go 5\n"):  # a stop, embprof's process gone (the end of stdin), a go it cannot read
        read_end, write_end = os.pipe()
        stdin = os.fdopen(read_end, "r")
        stdout = io.StringIO()
        monkeypatch.setattr("sys.stdin", stdin)
        monkeypatch.setattr("sys.stdout", stdout)
        if first:
            os.write(write_end, first)
        else:
            os.close(write_end)
        began = time.monotonic()
        try:
            asyncio.run(loadgen.process_main(sender_spec(srv.url, concurrency=2)))
        finally:
            if first:
                os.close(write_end)
            stdin.close()
        lines = [json.loads(line) for line in stdout.getvalue().splitlines()]
        assert lines == [{"kind": "ready"}, {"kind": "end", "sent": 0, "in_flight": 0}], (first, lines)
        assert time.monotonic() - began < 5.0
    assert srv.state.count == 0


def test_a_failures_message_is_cut_at_400_characters(fault_servers: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A broken status line that quotes a 600-character credential back: the client's own message (its first line) is
    longer than a record keeps; the record holds its first 400 characters (the parent redacts them)."""
    srv = fault_servers("echostatus")
    _, lines = run_sender(sender_spec(srv.url, requests=1, headers={"Authorization": "Bearer " + "k" * 600}), monkeypatch)
    (r,) = rows_of(lines)
    assert r.kind == "connection" and len(r.message) == 400 and r.message.endswith("k" * 100), r.message[:200]


def test_the_sender_reads_tokens_and_keeps_one_width(fault_servers: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    path, body = request_payload("openai", ["a", "b", "c"], None)
    srv = fault_servers("ok")
    _, lines = run_sender(sender_spec(srv.url, api="openai", path=path, bodies=[json.dumps(body)], items=[3], requests=2), monkeypatch)
    assert [(r.tokens, r.dim) for r in rows_of(lines)] == [(3, 4), (3, 4)]  # the trivial server's usage: a token a text
    # Vectors that grow after the first answer: the process keeps one width for all its answers.
    srv = fault_servers("dimchange", ok_first=1)
    _, lines = run_sender(sender_spec(srv.url, requests=2), monkeypatch)
    first, second = sorted(rows_of(lines), key=lambda r: r.index)
    assert first.kind == "" and second.kind == "bad shape" and "the server's earlier ones 4" in second.message, second


def test_a_request_of_no_texts_is_answered_with_no_width(fault_servers: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A body of no texts: its (empty) answer is a success, and no vector width is claimed from it (None, not 0)."""
    srv = fault_servers("ok")
    path, body = request_payload("llama", [], None)
    _, lines = run_sender(sender_spec(srv.url, path=path, bodies=[json.dumps(body)], items=[0], requests=1), monkeypatch)
    (r,) = rows_of(lines)
    assert (r.status, r.kind, r.items, r.dim) == (200, "", 0, None), r


def test_the_sender_passes_its_credentials_and_headers(fault_servers: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import base64

    srv = fault_servers("ok")
    run_sender(sender_spec(srv.url, requests=1, headers={"Authorization": "Bearer k-123"}), monkeypatch)
    run_sender(sender_spec(srv.url, requests=1, basic_auth=("alice", "p@ss")), monkeypatch)
    # Beyond ASCII, the bytes the single-request client (httpx) sends: UTF-8, where aiohttp's own BasicAuth wrote Latin-1.
    run_sender(sender_spec(srv.url, requests=1, basic_auth=("zoë", "pässwörd€")), monkeypatch)
    import httpx

    flow = httpx.BasicAuth("zoë", "pässwörd€").auth_flow(httpx.Request("POST", srv.url))
    assert srv.state.auth == ["Bearer k-123", "Basic " + base64.b64encode(b"alice:p@ss").decode(), next(flow).headers["Authorization"]]


def test_the_sender_holds_its_connections_to_its_concurrency(monkeypatch: pytest.MonkeyPatch) -> None:
    """Open loop at 100 a second against answers that take 0.2 s: without a cap some 20 would be out at once; the
    process's connections are its share of the concurrency (2), and the server never sees more at once."""
    active, most = [0], [0]
    lock = threading.Lock()

    class Counting(TrivialHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self._body()
            with lock:
                active[0] += 1
                most[0] = max(most[0], active[0])
            time.sleep(0.2)
            with lock:
                active[0] -= 1
            self._answer(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Counting)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        _, lines = run_sender(sender_spec(f"http://127.0.0.1:{httpd.server_address[1]}", rate=100.0, concurrency=2), monkeypatch,
                              duration_s=1.0)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert most[0] == 2 and len(rows_of(lines)) >= 2, (most, len(rows_of(lines)))


def test_the_sender_ends_at_its_deadline_whatever_is_out(fault_servers: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests out at the deadline are not waited for; with none out, the process still stays until its deadline
    (answers within it count); and its records go out as they come, not only at the end."""
    srv = fault_servers("slow", slow_s=3.0)
    began = time.monotonic()
    _, lines = run_sender(sender_spec(srv.url, concurrency=2), monkeypatch, duration_s=0.2)
    assert time.monotonic() - began < 1.0 and rows_of(lines) == []
    fast = fault_servers("ok")
    began = time.monotonic()
    _, lines = run_sender(sender_spec(fast.url, rate=20.0), monkeypatch, duration_s=0.6)
    assert time.monotonic() - began >= 0.6 and lines[-1]["kind"] == "end"
    _, lines = run_sender(sender_spec(fast.url, concurrency=1), monkeypatch, duration_s=0.4)
    assert sum(1 for line in lines if line["kind"] == "records") >= 3  # every 50 ms or so


def test_a_body_is_read_up_to_its_limit_and_no_further() -> None:
    import asyncio

    from embprof.engine.loadgen import AnswerTooLong, read_capped

    def response(chunks: list[bytes], declared: int | None) -> Any:
        async def iter_any() -> Any:
            for c in chunks:
                yield c
        headers = {} if declared is None else {"content-length": str(declared)}
        return SimpleNamespace(headers=headers, content=SimpleNamespace(iter_any=iter_any))

    read = asyncio.run
    assert read(read_capped(response([b"ab", b"cd"], 4), 4)) == b"abcd"  # exactly the limit: whole
    assert read(read_capped(response([b"ab", b"cd"], None), 4)) == b"abcd"
    with pytest.raises(AnswerTooLong, match="declares"):
        read(read_capped(response([b"abcde"], 5), 4))  # refused from its declared length, before a byte is read
    with pytest.raises(AnswerTooLong):
        read(read_capped(response([b"abc", b"de"], None), 4))
    assert read(read_capped(response([b"abc", b"def"], 6), 4, cut=True)) == b"abcd"  # an error message: its start kept


def test_an_endless_answer_is_cut_at_the_read_limit(fault_servers: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    srv = fault_servers("endless")
    _, lines = run_sender(sender_spec(srv.url, requests=1, max_answer_bytes=1 << 20), monkeypatch)
    (r,) = rows_of(lines)
    assert r.kind == "bad body" and "1 MiB" in r.message, r


def test_a_stop_ends_the_sender_at_once_and_counts_what_was_out(fault_servers: Any, monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    import logging

    srv = fault_servers("slow", slow_s=30.0)
    began = time.monotonic()
    # The stop once the server holds six requests, not after a fixed time: a loaded machine could spend that time
    # starting the loop, and the stop would then arrive before anything was sent.
    _, lines = run_sender(sender_spec(srv.url, rate=50.0, concurrency=8), monkeypatch, stop_when=lambda: srv.state.count >= 6)
    assert time.monotonic() - began < 5.0
    # Every request sent is still out: none was answered, and none of those the stop cut off is counted as recorded.
    assert rows_of(lines) == [] and lines[-1]["kind"] == "end" and lines[-1]["sent"] == lines[-1]["in_flight"] > 5, lines[-1]
    # The stop is read once and its reader removed: the event loop reports no error (a callback that failed).
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR] == []


def test_no_request_is_given_up_before_its_timeout_on_uvloops_millisecond_clock(fault_servers: Any,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """uvloop's clock is the millisecond the loop's iteration began, and its timers are rounded to the millisecond:
    a timeout of 50.4 ms set on it as asked fires about 50 ms after the loop's stale now, before 50.4 ms have passed
    since the send. Each request is held to at least its --timeout on the clock the records are stamped with."""
    srv = fault_servers("slow", slow_s=5.0)
    _, lines = run_sender(sender_spec(srv.url, requests=12, concurrency=4, timeout_s=0.0504), monkeypatch, uvloop=True)
    rows = rows_of(lines)
    assert [r.kind for r in rows] == ["timeout"] * 12, [(r.kind, r.message) for r in rows]
    early = [r.latency_ns for r in rows if r.latency_ns < 50_400_000]
    assert early == [], early
    # Late by the slack and the wake-up only (a busy machine's wake-up included), never by a second.
    assert max(r.latency_ns for r in rows) < 1_050_400_000, [r.latency_ns for r in rows]


def test_a_servers_own_timings_are_read_from_its_headers() -> None:
    from embprof.engine.loadgen import server_timings

    got = server_timings({"x-queue-time": "3", "x-tokenization-time": "0.5", "x-inference-time": "12", "x-total-time": "15.5"})
    assert got == {"queue": 0.003, "tokenization": 0.0005, "inference": 0.012, "server_total": 0.0155}
    # A header that is no figure (negative, not finite, not a number) is not one: the others are kept.
    assert server_timings({"x-queue-time": "-1", "x-tokenization-time": "nan", "x-inference-time": "inf", "x-total-time": "abc"}) is None
    assert server_timings({"x-queue-time": "0", "x-total-time": "x"}) == {"queue": 0.0}
    assert server_timings({"x-inference-time": "12"}) == {"inference": 0.012}  # one part alone, the others not sent
    assert server_timings({"x-queue-time": "abc", "x-total-time": "5"}) == {"server_total": 0.005}
    assert server_timings({}) is None


# -- the processes, driven from embprof's side ---------------------------------------------------------------------


def test_load_processes_share_one_start_and_say_how_the_load_ended(fault_servers: Any) -> None:
    import os
    import signal

    srv = fault_servers("ok")
    specs = [sender_spec(srv.url, requests=5, index=k) for k in range(2)]
    got: list[Record] = []
    merged = LoadProcesses(specs).run(got.append, lambda: False)
    assert (merged.processes, merged.ended, merged.sent, merged.in_flight, merged.crashed) == (2, "done", 10, 0, [])
    assert sorted((r.process, r.index) for r in got) == [(k, i) for k in range(2) for i in range(5)]
    # A count ends with its last answer: the load's time runs from the common start to it (asyncio may wake a
    # process up to a millisecond before that start: its clock's resolution).
    span = (max(r.done_ns for r in got) - min(r.sent_ns for r in got)) / 1e9
    assert 0 < merged.wall_s < 10 and merged.wall_s >= span - 0.002, (merged.wall_s, span)

    timed: list[Record] = []
    merged = LoadProcesses([sender_spec(srv.url, concurrency=1, duration_s=0.3)]).run(timed.append, lambda: False)
    assert (merged.ended, merged.wall_s) == ("deadline", 0.3)  # to the deadline, exactly
    # The start waited for the process to be ready (its start-up takes longer than the 0.3 s): it sent, and was answered.
    assert merged.sent >= 1 and len(timed) >= 1, (merged, len(timed))

    # A stop: seen within a poll, the processes told at once; each in a session of its own (a Ctrl-C at the terminal
    # reaches embprof, which stops them in order), read by a daemon thread of its own.
    slow = fault_servers("slow", slow_s=30.0)
    lp = LoadProcesses([sender_spec(slow.url, concurrency=2, index=k) for k in range(2)])
    seen: dict[str, Any] = {}
    stop_at = math.inf

    def should_stop() -> bool:
        nonlocal stop_at
        if stop_at == math.inf and slow.state.count >= 2:  # both are sending: stop a little later
            seen["sids"] = {os.getsid(p.pid) for p in lp.procs}
            seen["threads"] = {t.name: t.daemon for t in threading.enumerate() if t.name.startswith("embprof-load-")}
            stop_at = time.monotonic() + 0.3
        return time.monotonic() >= stop_at

    merged = lp.run(lambda r: None, should_stop)
    late = time.monotonic() - stop_at
    assert merged.ended == "stopped" and merged.crashed == [] and 0 < merged.wall_s < 1.3 and late < 0.6, (merged, late)
    assert os.getsid(0) not in seen["sids"] and len(seen["sids"]) == 2
    assert seen["threads"] == {"embprof-load-0": True, "embprof-load-1": True}

    # A process that dies is the load's end, and says how it died.
    victim = LoadProcesses([sender_spec(slow.url, concurrency=1, index=k) for k in range(2)])
    killed: list[int] = []

    def kill_one() -> bool:
        if not killed and slow.state.count >= 6:  # both sending: 4 requests from the run above, one from each of these
            killed.append(victim.procs[0].pid)
            os.kill(victim.procs[0].pid, signal.SIGKILL)
        return False

    merged = victim.run(lambda r: None, kill_one)
    assert merged.ended == "stopped" and merged.crashed == ["load process 1 ended unexpectedly (killed by signal 9)"], merged


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_the_load_process_command_runs_a_load_and_exits_0_and_without_settings_exits_2(fault_servers: Any, tmp_path: Path,
                                                                                      loop: str) -> None:
    """``python -m embprof.engine.loadgen`` as embprof drives it, here by hand: its settings (credentials among them) as
    one JSON line, ``ready``, ``go``, its records and ``end``, then exit status 0; with no settings at all (stdin closed
    at once) it sends nothing and exits 2. Where uvloop cannot be imported (here a stand-in module that refuses to be),
    asyncio's own loop does the same."""
    import base64
    import dataclasses
    import os
    import subprocess
    import sys

    env = dict(os.environ)
    if loop == "asyncio":
        (tmp_path / "uvloop.py").write_text("raise ImportError('no uvloop here')\n")
        env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), *filter(None, [env.get("PYTHONPATH")])])
    srv = fault_servers("ok")
    spec = sender_spec(srv.url, requests=2, basic_auth=("alice", "p@ss"))
    p = subprocess.Popen([sys.executable, "-m", "embprof.engine.loadgen"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         env=env)
    assert p.stdin is not None and p.stdout is not None
    try:
        p.stdin.write(json.dumps(dataclasses.asdict(spec)) + "\n")
        p.stdin.flush()
        assert json.loads(p.stdout.readline()) == {"kind": "ready"}
        p.stdin.write(f"go {time.monotonic_ns()} -\n")
        p.stdin.flush()
        lines = [json.loads(line) for line in p.stdout]
        p.stdin.close()
        rc = p.wait(timeout=30)
    finally:
        p.kill()
        p.wait()
    assert rc == 0 and lines[-1] == {"kind": "end", "sent": 2, "in_flight": 0} and len(rows_of(lines)) == 2, (rc, lines)
    assert srv.state.auth == ["Basic " + base64.b64encode(b"alice:p@ss").decode()] * 2
    empty = subprocess.run([sys.executable, "-m", "embprof.engine.loadgen"], stdin=subprocess.DEVNULL, capture_output=True, timeout=30,
                           env=env)
    assert (empty.returncode, empty.stdout) == (2, b""), empty


def test_a_load_process_that_cannot_start_says_why_in_its_own_words() -> None:
    merged = LoadProcesses([sender_spec("not a URL", requests=1)]).run(lambda r: None, lambda: False)
    (why,) = merged.crashed
    assert (merged.ended, merged.wall_s, merged.sent) == ("stopped", 0.0, 0), merged  # it never began: no time, nothing sent
    assert why.startswith("load process 1 ended unexpectedly (exit status 1): ") and "Error" in why and len(why) < 300, why


def test_a_client_that_resets_its_connection_prints_nothing_on_the_trivial_servers_side(capfd: pytest.CaptureFixture[str]) -> None:
    """A load client stopped at its deadline resets the connections it had open: the server's thread must not
    print a traceback for it (http.server's own handle_error would, on standard error)."""
    import socket
    import struct

    from embprof.engine.trivial_server import TrivialEmbeddingServer

    with TrivialEmbeddingServer() as srv:
        for _ in range(3):
            client = socket.create_connection(("127.0.0.1", srv.port))
            client.sendall(b"POST /embedding HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")  # half a request
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = reset (RST)
            client.close()
        with socket.create_connection(("127.0.0.1", srv.port)) as ok:  # the server still answers
            ok.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert ok.recv(100).startswith(b"HTTP/1.1 200")
        time.sleep(0.2)  # the reset requests' threads have finished with them
    err = capfd.readouterr().err
    assert "Traceback" not in err and "ConnectionResetError" not in err, err
