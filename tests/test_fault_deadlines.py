"""A timeout is a deadline: --timeout bounds a whole request, from its connect to its last byte, whatever the
server sends meanwhile, and a stop ends a run within 2 s even while a request is under way.

Against real local servers that stall (tests/fault_server.py's STALL_MODES: informational 1xx answers without
end, header lines dribbled forever, a body one byte at a time, a status line never finished), a listener whose
backlog is full (a connect that never completes) and one that never answers a TLS handshake:

* in this process: each request ends as a ``timeout`` at its deadline, with a sentence that says how far the
  answer had come, and the client goes on to answer the next request on a new connection; a stop ends a
  request within a fraction of a second, also while it connects or shakes hands;
* through the command line: ``run encode`` ends within --timeout + 2 s of the stalled request's start, exit 1,
  its snapshot saved with the request's ``timeout``; SIGTERM and SIGINT mid-request end the run within 2 s
  (143, 130) with an incomplete snapshot of what was measured; ``run load`` records its timed-out requests,
  the warm-up's and the load processes';
* a 404 names the URL path that answered it, while connecting and during a run, in both clients;
* a target whose end of run fails leaves a note, and its request errors are kept; llama.cpp's NaN rates are
  left out of its counters (JSON holds no NaN).
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from cli_helpers import run_cli, snapshot_from
from conftest import embprof_exe
from fault_helpers import Child, wait_until

from embprof.engine.context import RunContext
from embprof.engine.errors import RunCancelled, UserError
from embprof.engine.events import Clock, ErrorEvent, EventBus, Note, RequestTimed, Result
from embprof.engine.execute import prepare
from embprof.engine.loadgen import LoadProcesses, ProcessSpec, Record
from embprof.engine.plan import EncodePlan, RunPlan, ServerTarget
from embprof.engine.results import LoadResult, RequestErrors, ServerMetrics
from embprof.engine.snapshot import Snapshot
from embprof.engine.targets.http import HttpTarget

# The faults this file tries, by kind, and the tests that try each (tests/test_reliability_doc.py counts them for
# docs/reliability.md): ``{}`` is one kind for each text it stands for in the tests' names.
FAULT_KINDS = {
    "a server that sends informational 1xx answers without end": ("test_a_stalling_answer_ends_at_the_deadline[endless1xx-*",
                                                                  "test_run_encode_against_a_stalling_server_ends_at_timeout[endless1xx]"),
    "a server that dribbles header lines forever": ("test_a_stalling_answer_ends_at_the_deadline[dribble-*",
                                                    "test_run_encode_against_a_stalling_server_ends_at_timeout[dribble]"),
    "a server that sends a body one byte at a time": ("test_a_stalling_answer_ends_at_the_deadline[drip-*",
                                                      "test_run_encode_against_a_stalling_server_ends_at_timeout[drip]"),
    "a server that never finishes its status line": ("test_a_stalling_answer_ends_at_the_deadline[endless-status-*",
                                                     "test_run_encode_against_a_stalling_server_ends_at_timeout[endless-status]"),
    "a connect that never completes (a full backlog)": "test_a_connect_or_handshake_that_never_completes_ends_at_the_deadline[connect]",
    "a TLS handshake never answered": "test_a_connect_or_handshake_that_never_completes_ends_at_the_deadline[tls]",
    "a stop while waiting for headers": "test_a_stop_ends_a_request_under_way_at_once[dribble]",
    "a stop while connecting": "test_a_stop_ends_a_request_under_way_at_once[connect]",
    "a stop during a TLS handshake": "test_a_stop_ends_a_request_under_way_at_once[tls]",
    "{} mid-request": "test_a_signal_ends_a_run_mid_request[{}]",
    "run load against a stalling server": "test_run_load_records_its_timed_out_requests",
    "a 404 during a run": "test_a_404_during_a_run_names_the_path",
    "a 404 to the load client": "test_a_404_to_the_load_client_names_the_path",
    "a 404 while connecting": "test_a_404_while_connecting_names_the_path",
    "a target whose end of run fails": "test_a_target_whose_end_fails_leaves_a_note",
    "llama.cpp /metrics with NaN and Inf": "test_llama_cpp_rates_over_no_time_are_left_out_of_its_counters",
}
NOT_FAULTS: tuple[str, ...] = ()

EXIT_FAILED = 1
STOP_BOUND_S = 2.0  # the bound: from a signal (or a stop) to the run's end, its snapshot saved
# In this process a request ends at its deadline plus the wake-up of one wait on its socket, plus what a
# busy machine adds: far below the seconds a stalling server would otherwise hold it.
SLACK_S = 0.5

STALLS = {  # mode -> what the timeout's sentence says of how far the answer had come
    "endless1xx": "only informational (1xx) answers came within",
    "dribble": "the answer's status line and headers were still arriving after",
    "drip": "the answer was still arriving after",
    "endless-status": "the answer's status line and headers were still arriving after",
}


def requests_of(snap: Snapshot) -> list[RequestTimed]:
    return [e for e in snap.events if isinstance(e, RequestTimed)]


@contextmanager
def stalled_listener(backlog: int) -> Iterator[str]:
    """A TCP port that nobody serves: with backlog 0 and one connection holding the queue, a connect never
    completes (the kernel drops the handshake); with room in the backlog, a connect completes and nothing
    is ever read or said (a TLS handshake waits for ever)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(backlog)
        port = listener.getsockname()[1]
        held: list[socket.socket] = []
        try:
            if backlog == 0:
                first = socket.create_connection(("127.0.0.1", port), timeout=5)
                held.append(first)
            yield f"http{'s' if backlog else ''}://127.0.0.1:{port}"
        finally:
            for s in held:
                s.close()


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


# -- in this process: the deadline -----------------------------------------------------------------------------
@pytest.mark.parametrize(("mode", "api"), [(mode, "openai") for mode in STALLS] + [("drip", "llama")])
def test_a_stalling_answer_ends_at_the_deadline(mode: str, api: str, server: Any) -> None:
    timeout = 0.5
    target = HttpTarget(ServerTarget(url=server(mode, ok_at=(2,)), api=api, timeout_s=timeout, server_model="m"))
    try:
        thread, box = in_thread(lambda: target.try_request(["a", "b"]))
        thread.join(timeout + 10)  # a client that hangs fails the test instead of hanging it
        assert box, f"the request was still waiting {timeout + 10:g} s after it began"
        outcome = box[0]
        assert outcome.error_kind == "timeout", (outcome.error_kind, outcome.error)
        assert outcome.error.startswith(STALLS[mode]) and f"{timeout:g} s (--timeout" in outcome.error, outcome.error
        assert timeout <= outcome.duration_ns / 1e9 <= timeout + SLACK_S, outcome.duration_ns
        # The connection the stall held is given up: the next request is answered on a new one.
        again = target.try_request(["a", "b"])
        assert not again.error_kind and again.vectors is not None and again.vectors.shape[0] == 2, again.error
    finally:
        target.close()


@pytest.mark.parametrize("stall", ["connect", "tls"])
def test_a_connect_or_handshake_that_never_completes_ends_at_the_deadline(stall: str) -> None:
    with stalled_listener(0 if stall == "connect" else 8) as url:
        target = HttpTarget(ServerTarget(url=url, api="llama", timeout_s=0.5))
        try:
            thread, box = in_thread(lambda: target.try_request(["a"]))
            thread.join(10.5)
            assert box, "the request was still waiting 10.5 s after it began"
        finally:
            target.close()
    outcome = box[0]
    assert outcome.error_kind == "timeout" and outcome.error == "no connection within 0.5 s (--timeout)", outcome.error
    assert outcome.duration_ns / 1e9 <= 0.5 + SLACK_S


# -- in this process: a stop -------------------------------------------------------------------------------------
@pytest.mark.parametrize("stall", ["dribble", "connect", "tls"])
def test_a_stop_ends_a_request_under_way_at_once(stall: str, fault_servers: Any) -> None:
    """A stop while the client waits for headers, for a connect or for a TLS handshake, with --timeout far off:
    the request ends with RunCancelled (no failure of the server's is counted) within a fraction of a second."""
    cancel = threading.Event()
    ctx = RunContext(EventBus(Clock()), cancel)
    with stalled(stall, fault_servers) as (url, began):
        # llama.cpp's API: reaching the stalling server is a GET that it answers, then the POST stalls; the two
        # listeners stall the very first connect, in load().
        target = HttpTarget(ServerTarget(url=url, api="llama", timeout_s=60.0))
        try:
            def run() -> Any:
                target.load(ctx)
                return target.try_request(["a"])

            thread, box = in_thread(run)
            wait_until(began, 10, "the stall")
            time.sleep(0.3)  # inside the wait on the socket
            assert not box, box
            stopped = time.monotonic()
            cancel.set()
            thread.join(10)
            took = time.monotonic() - stopped
        finally:
            target.close()
    assert box and isinstance(box[0], RunCancelled), box
    assert took < SLACK_S, f"the stop took {took:.2f} s to end the request"
    assert target.errors == 0


@contextmanager
def stalled(stall: str, fault_servers: Any) -> Iterator[tuple[str, Callable[[], bool]]]:
    """A server's URL that stalls as ``stall`` says, and how to tell that the stall has begun."""
    if stall in STALLS:
        srv = fault_servers(stall)
        yield srv.url, lambda: bool(srv.state.stalls)
        return
    with stalled_listener(0 if stall == "connect" else 8) as url:
        yield url, lambda: True


# -- through the command line -------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("mode", list(STALLS))
def test_run_encode_against_a_stalling_server_ends_at_timeout(mode: str, cli_env: dict[str, str], fault_servers: Any) -> None:
    srv = fault_servers(mode)
    rc, out, err, _ = run_cli(["run", "encode", "--server", srv.url, "--api", "openai", "--timeout", "1"], cli_env, timeout=30)
    ended = time.monotonic()
    assert rc == EXIT_FAILED, (rc, err[-2000:])
    assert "Traceback" not in err and "request failed (timeout)" in err, err[-2000:]
    # From the stalled request's start (its first byte left the server just after it was sent) to the process's end.
    assert srv.state.stalls and ended - srv.state.stalls[0] <= 1 + STOP_BOUND_S, ended - srv.state.stalls[0]
    _, snap = snapshot_from(out)
    assert snap.status == "failed"
    last = requests_of(snap)[-1]
    assert last.error_kind == "timeout" and last.error.startswith(STALLS[mode]), last.error
    assert snap.summary.results["requests"].errors_by_kind == {"timeout": 1}


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "mode"), [(signal.SIGTERM, "dribble"), (signal.SIGINT, "drip")], ids=["SIGTERM", "SIGINT"])
def test_a_signal_ends_a_run_mid_request(sig: int, mode: str, cli_env: dict[str, str], fault_servers: Any) -> None:
    # Two answers come, then one stalls; --timeout is far off: only the signal can end the run soon.
    srv = fault_servers(mode, ok_first=2)
    child = Child([embprof_exe(), "run", "encode", "--server", srv.url, "--batch-size", "8", "--timeout", "300"], cli_env)
    wait_until(lambda: bool(srv.state.stalls), 60, "the stalling answer", alive=child.proc)
    time.sleep(0.2)  # well inside the request: the client is waiting on its socket
    sent = time.monotonic()
    child.send(sig)
    rc, out, err = child.finish(timeout=30)
    took = time.monotonic() - sent
    name = signal.Signals(sig).name
    assert took <= STOP_BOUND_S, f"{name} took {took:.2f} s to end the run"
    assert rc == 128 + sig, (rc, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    _, snap = snapshot_from(out)
    assert snap.status == "incomplete"
    assert [e.error_kind for e in snap.summary.errors] == ["cancelled"]
    assert snap.summary.errors[0].message.startswith(f"stopped by {name}")
    # What was answered is kept; the request the stop cut short is no failure of the server's and is not counted.
    reqs = requests_of(snap)
    assert len(reqs) == 2 and not any(r.error_kind for r in reqs), [(r.error_kind, r.error) for r in reqs]


@pytest.mark.slow
def test_run_load_records_its_timed_out_requests(cli_env: dict[str, str], fault_servers: Any) -> None:
    """The warm-up (the synchronous client) and the load processes both hold each request to --timeout: the first
    warm-up stalls and times out, the second is answered (ok_at), and the load's two requests stall and are
    recorded as failed ``timeout``."""
    srv = fault_servers("dribble", ok_at=(2,))
    rc, out, err, _ = run_cli(["run", "load", "--server", srv.url, "--requests", "2", "--concurrency", "2", "--timeout", "0.5",
                               "--max-errors", "10"], cli_env, timeout=45)
    assert rc == 0, err[-2000:]
    _, snap = snapshot_from(out)
    reqs = requests_of(snap)
    assert [(r.warmup, r.error_kind) for r in reqs if r.warmup] == [(True, "timeout"), (True, "")], reqs
    load = [r for r in reqs if not r.warmup]
    assert [r.error_kind for r in load] == ["timeout", "timeout"], [(r.error_kind, r.error) for r in load]
    assert all(0.5 <= r.duration_ns / 1e9 <= 0.5 + STOP_BOUND_S for r in load), [r.duration_ns for r in load]
    result = snap.summary.results["load"]
    assert isinstance(result, LoadResult) and result.errors_by_kind == {"timeout": 2} and result.ok == 0, result


# -- a 404 names the path that answered it --------------------------------------------------------------------------
def test_a_404_during_a_run_names_the_path(server: Any) -> None:
    # The URL has a path of its own (a proxy's prefix, say): the 404 names the whole path that answered.
    target = HttpTarget(ServerTarget(url=server("404") + "/api", api="openai", server_model="m"))
    try:
        outcome = target.try_request(["a"])
    finally:
        target.close()
    assert outcome.error_kind == "http 404"
    assert outcome.error == "/api/v1/embeddings answered 404 (Not Found): The model 'm' does not exist", outcome.error


def test_a_404_to_the_load_client_names_the_path(server: Any) -> None:
    spec = ProcessSpec(base_url=server("404"), path="/embedding", bodies=[json.dumps({"content": ["a"]})], items=[1], api="llama",
                       concurrency=1, requests=1, timeout_s=10.0)
    records: list[Record] = []
    LoadProcesses([spec]).run(records.append, lambda: False)
    assert [r.kind for r in records] == ["http 404"]
    assert records[0].message == "/embedding answered 404 (Not Found): The model 'm' does not exist", records[0].message


def test_a_404_while_connecting_names_the_path(server: Any) -> None:
    url = server("health-404")
    target = HttpTarget(ServerTarget(url=url, api="llama"))
    try:
        with pytest.raises(UserError) as refused:
            target.resolve()
    finally:
        target.close()
    assert str(refused.value) == (f"/health answered 404 (Not Found): the server at {url} is not llama.cpp's, or the URL is not "
                                  "its root (--api auto finds which API a server serves)"), str(refused.value)


# -- the end of a run ------------------------------------------------------------------------------------------
def run_events(url: str, api: str = "llama", patch: Callable[[HttpTarget], None] | None = None) -> list[Any]:
    prepared = prepare(RunPlan(target=ServerTarget(url=url, api=api), workload=EncodePlan(repeats=1, warmups=0)))
    assert isinstance(prepared.target, HttpTarget)
    if patch is not None:
        patch(prepared.target)
    events: list[Any] = []
    runner = prepared.runner([events.append], nvml=None)
    runner.run()
    assert runner.status == "complete", [e for e in events if isinstance(e, ErrorEvent)]
    return events


def test_a_target_whose_end_fails_leaves_a_note(server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """finish() failing (here llama.cpp's end counters, by an error nothing foresaw) no longer vanishes: the run's
    notes say what is missing and why, and the count of failed requests is kept all the same."""
    calls = [0]

    def patch(target: HttpTarget) -> None:
        real: Callable[[], dict[str, float] | None] = target.read_counters  # the end's part a test can make fail

        def metrics() -> dict[str, float] | None:
            calls[0] += 1
            if calls[0] > 1:  # the start's counters are read; the end's fail
                raise RuntimeError("counters gone astray")
            return real()

        monkeypatch.setattr(target, "read_counters", metrics)

    events = run_events(server("ok"), patch=patch)
    notes = [e.text for e in events if isinstance(e, Note)]
    assert any(n.startswith("the target's end of the run failed") and n.endswith("RuntimeError: counters gone astray")
               for n in notes), notes
    errors = [e.result for e in events if isinstance(e, Result) and isinstance(e.result, RequestErrors)]
    assert errors == [RequestErrors(errors=0, errors_by_kind={})]


def test_llama_cpp_rates_over_no_time_are_left_out_of_its_counters(server: Any) -> None:
    events = run_events(server("metrics-nan"))
    metrics = [e.result for e in events if isinstance(e, Result) and isinstance(e.result, ServerMetrics)]
    assert len(metrics) == 1
    assert metrics[0].start == metrics[0].end == {"llamacpp:requests_processing": 0.0}, metrics[0]
