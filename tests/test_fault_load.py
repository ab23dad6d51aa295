"""The load workload ends when it should: at --duration however far off the next Poisson arrival is, at a stop
signal whatever it is waiting for (an arrival, a server that does not answer), and no thread of it ever prints a
traceback. The real console script against a local server, offline; two checks in this process for what the
command line cannot provoke (a worker that fails for no request's reason).

Waits are event-driven: the child's progress lines, the server's count of requests. The bounds on how long a stop
takes are far below what the waits used to take (a Poisson wait of tens of seconds, a request timeout of minutes),
and far above what a busy machine needs.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import embprof_exe
from fault_helpers import Child, wait_until
from cli_helpers import run_cli, snapshot_from

from embprof.engine.events import ErrorEvent, Note, RequestTimed
from embprof.engine.targets.http import HttpTarget
from embprof.engine.plan import LoadPlan, ServerTarget
from embprof.engine.results import ClientCeiling, LoadResult
from embprof.engine.runner import Runner
from embprof.engine.snapshot import Snapshot, load
from embprof.engine.workloads import load as load_module
from embprof.engine.workloads.load import LoadWorkload

# The faults this file tries, by kind, and the tests that try each (tests/test_reliability_doc.py counts them for
# docs/reliability.md): ``{}`` is one kind for each text it stands for in the tests' names.
FAULT_KINDS = {
    "an open-loop rate so slow nothing arrives within --duration": "test_a_duration_ends_a_rate_too_slow_to_send_anything",
    "{} during a wait between Poisson arrivals": "test_a_signal_stops_a_poisson_wait[{}]",
    "a server that never answers, stopped during the {}": "test_a_signal_stops_a_load_whose_server_does_not_answer[{}]",
    "--concurrency 512": "test_the_largest_concurrency_prints_no_thread_traceback",
    "a load process killed in the {} step": "test_a_load_process_that_dies_is_the_runs_one_error[{}]",
    "a stop during the client-ceiling step": "test_a_stop_ends_the_ceiling_probe_at_once",
    "a client-ceiling step whose every request fails": "test_a_probe_whose_requests_all_fail_says_it_measured_nothing",
    "a target whose facts fail before the run's first event": "test_a_target_that_fails_before_the_run_begins_releases_whoever_waits",
}

LOAD_LINE = r"^\s+load\s+… (concurrency|Poisson)"  # the load phase has begun (tui/console.py ConsoleProgress)
STOP_BOUND_S = 10.0  # a stop, from the signal to the process's end: the snapshot saved, the summary printed


def load_result(snap: Snapshot) -> LoadResult:
    result = snap.summary.results.get("load")
    assert isinstance(result, LoadResult), snap.summary.results.keys()
    return result


def notes(snap: Snapshot) -> list[str]:
    return [e.text for e in snap.events if isinstance(e, Note)]


def stop(child: Child, sig: int) -> tuple[int, str, str, float]:
    sent = time.monotonic()
    child.send(sig)
    rc, out, err = child.finish(timeout=120)
    return rc, out, err, time.monotonic() - sent


def saved(out: str) -> Snapshot:
    last = out.strip().splitlines()[-1]
    assert last.startswith("snapshot: "), out[-2000:]
    return load(Path(last.removeprefix("snapshot: ").strip()))


def assert_stopped_by(sig: int, rc: int, out: str, err: str, took: float) -> Snapshot:
    name = signal.Signals(sig).name
    assert "Traceback" not in err and "Exception in thread" not in err, err[-3000:]
    assert took < STOP_BOUND_S, f"{name} took {took:.1f} s to end the run"
    assert rc == 128 + sig, (rc, err[-2000:])
    snap = saved(out)
    assert snap.status == "incomplete"
    assert [e.error_kind for e in snap.summary.errors] == ["cancelled"], snap.summary.errors
    assert snap.summary.errors[0].message.startswith(f"stopped by {name}")
    return snap


@pytest.mark.slow
def test_a_duration_ends_a_rate_too_slow_to_send_anything(cli_env: dict[str, str], fault_servers: Any) -> None:
    # Seed 0's first arrival at 0.001/s comes after 1,860 s: the load ends at its 0.5 s without sending one.
    srv = fault_servers("ok")
    rc, out, err, _ = run_cli(["run", "load", "--server", srv.url, "--rate", "0.001", "--duration", "0.5"], cli_env)
    assert rc == 0, err
    assert "Traceback" not in err
    _, snap = snapshot_from(out)
    assert snap.status == "complete"
    phase = next(p for p in snap.summary.phases if p.name == "load")
    assert 0.5 <= phase.duration_s < 5.0, phase
    result = load_result(snap)
    assert (result.requests_sent, result.requests_done, result.ok, result.errors) == (0, 0, 0, 0)
    assert 0.5 <= result.wall_s < 5.0 and result.requests_per_s == 0.0 and result.latency.count == 0
    # The one request the server saw is the warm-up, which is not counted.
    assert [r.warmup for r in snap.events if isinstance(r, RequestTimed)] == [True]
    assert srv.state.count == 1
    assert any(n.startswith("no request was sent: at --rate 0.001") for n in notes(snap)), notes(snap)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_a_poisson_wait(sig: int, cli_env: dict[str, str], fault_servers: Any) -> None:
    # Seed 0's first arrival at 0.05/s comes after 37 s: the signal lands while the load waits for it.
    srv = fault_servers("ok")
    child = Child([embprof_exe(), "run", "load", "--server", srv.url, "--rate", "0.05", "--duration", "600"], cli_env)
    child.err.wait_for(LOAD_LINE, timeout=120)
    snap = assert_stopped_by(sig, *stop(child, sig))
    result = load_result(snap)  # what was measured until the stop is kept
    assert result.requests_sent == 0 and result.wall_s < STOP_BOUND_S + 120


@pytest.mark.slow
@pytest.mark.parametrize("stall", ["warm-up", "load"])
def test_a_signal_stops_a_load_whose_server_does_not_answer(stall: str, cli_env: dict[str, str], fault_servers: Any) -> None:
    # The server sleeps 120 s over every request after ok_first; the client would wait --timeout 300 s for each.
    answered = 0 if stall == "warm-up" else 1
    srv = fault_servers("slow", slow_s=120.0, ok_first=answered)
    child = Child([embprof_exe(), "run", "load", "--server", srv.url, "--concurrency", "2", "--duration", "600",
                   "--timeout", "300"], cli_env)
    in_flight = answered + (1 if stall == "warm-up" else 2)
    wait_until(lambda: srv.state.count >= in_flight, 120, f"{in_flight} requests at the server", alive=child.proc)
    snap = assert_stopped_by(signal.SIGTERM, *stop(child, signal.SIGTERM))
    if stall == "load":
        result = load_result(snap)
        assert (result.requests_sent, result.requests_done) == (2, 0), result
        assert any(n.startswith("2 requests were still in flight") for n in notes(snap)), notes(snap)
    else:
        assert "load" not in snap.summary.results


@pytest.mark.slow
def test_the_largest_concurrency_prints_no_thread_traceback(cli_env: dict[str, str], fault_servers: Any) -> None:
    srv = fault_servers("ok")
    rc, out, err, _ = run_cli(["run", "load", "--server", srv.url, "--requests", "1", "--concurrency", "512"], cli_env)
    assert "Traceback" not in err and "Exception in thread" not in err and "Exception occurred" not in err, err[-3000:]
    assert rc == 0, err
    _, snap = snapshot_from(out)
    ceiling = snap.summary.results.get("client_ceiling")
    # The probe runs at most 64 threads, against an endpoint whose backlog takes them all connecting at once.
    assert isinstance(ceiling, ClientCeiling) and ceiling.workers == 64 and ceiling.requests_per_s, ceiling
    assert not any("client-ceiling probe" in n for n in notes(snap)), notes(snap)
    assert load_result(snap).ok == 1


# -- in this process: a worker that fails for no request's reason ------------------------------------------------


@pytest.mark.parametrize("where", ["load", "ceiling"])
def test_a_load_process_that_dies_is_the_runs_one_error(where: str, server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A load process killed mid-run (SIGKILL: nothing of it can say why) ends the run with one error that says
    which process ended and how; what was measured before is kept, and no thread prints a traceback."""
    hooked: list[str] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: hooked.append(repr(args.exc_value)))
    real_run = load_module.LoadProcesses.run
    probes = [0]

    def run(self: Any, on_record: Any, should_stop: Any, poll_s: float = 0.05) -> Any:
        probes[0] += 1
        kill = (where == "ceiling" and probes[0] == 1) or (where == "load" and probes[0] == 2)
        seen = [0]

        def record(rec: Any) -> None:
            seen[0] += 1
            if kill and seen[0] == 3:
                self.procs[0].kill()
            on_record(rec)

        return real_run(self, record, should_stop, poll_s)

    monkeypatch.setattr(load_module.LoadProcesses, "run", run)
    monkeypatch.setattr(LoadWorkload, "probe_s", 0.5)
    target = HttpTarget(ServerTarget(url=server("ok")))
    events: list[Any] = []
    runner = Runner(target, LoadWorkload(LoadPlan(duration_s=30.0, concurrency=4)), subscribers=[events.append], nvml=None)
    started = time.monotonic()
    assert runner.run_sync() == "failed"
    assert time.monotonic() - started < 25, "the load went on after its process died"
    errors = [e for e in events if isinstance(e, ErrorEvent)]
    assert len(errors) == 1 and errors[0].message == "RuntimeError: load process 1 ended unexpectedly (killed by signal 9)", errors
    assert hooked == []
    if where == "load":
        result = next(e.result for e in events if isinstance(getattr(e, "result", None), LoadResult))
        assert result.ok >= 3 and result.errors == 0


def test_a_stop_ends_the_ceiling_probe_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    started = time.monotonic()
    probe = load_module.client_ceiling(8, 60.0, cancel=cancel)
    assert time.monotonic() - started < STOP_BOUND_S
    assert probe.ceiling.seconds < STOP_BOUND_S and not probe.failed


def test_a_probe_whose_requests_all_fail_says_it_measured_nothing() -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on: every connection is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    probe = load_module.client_ceiling(4, 0.2, endpoint=f"http://127.0.0.1:{port}")
    assert probe.ceiling.requests_per_s is None and set(probe.failed) == {"connection"}
    assert probe.note().startswith("the client's own ceiling could not be measured: its ")
    assert "all failed (connection: " in probe.note() and f"127.0.0.1:{port}" in probe.note(), probe.note()


def test_a_target_that_fails_before_the_run_begins_releases_whoever_waits(server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure before the run's first event (the target's facts) leaves nothing to save, but never a caller waiting
    for ever: run_sync returns "failed", and the failure reaches the thread's own report."""
    hooked: list[str] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: hooked.append(repr(args.exc_value)))

    def no_facts(self: HttpTarget) -> Any:
        raise RuntimeError("no facts")

    monkeypatch.setattr(HttpTarget, "describe", no_facts)
    runner = Runner(HttpTarget(ServerTarget(url=server("ok"), api="llama")), LoadWorkload(LoadPlan(requests=1, concurrency=1)), nvml=None)
    status: list[str] = []
    waiter = threading.Thread(target=lambda: status.append(runner.run_sync()), daemon=True)
    waiter.start()
    waiter.join(30)
    assert status == ["failed"], "run_sync was still waiting 30 s after a failure before the run began"
    assert hooked == ["RuntimeError('no facts')"], hooked
