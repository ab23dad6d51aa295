"""Stop signals at every stage of a run, against the real console script on the bundled model, offline.

Fault classes covered:

* SIGINT, SIGTERM and SIGHUP at start-up (Python importing embprof, before the run exists): status 128+N,
  one sentence, no traceback, nothing saved;
* the same signals during the run's import phase (torch), its load phase and its timed encodes: status
  128+N, an ``incomplete`` snapshot saved that ``embprof show`` reads, its error naming the signal;
* SIGKILL during a run: no half-written snapshot;
* a signal during a save: held until the save is done, then acted on (``shutdown.deferred``); a catchable
  signal that cuts an unprotected atomic write leaves the previous file and no temporary file; SIGKILL at
  random moments of repeated atomic writes never leaves a partial file;
* SIGTERM while a matrix cell runs: status 143, the finished cells kept, the folder's lock released.

Waits are event-driven: the child's progress lines on stderr, /proc for its signal handlers, files appearing.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import embprof_exe
from fault_helpers import STOP_SIGNALS, Child, handlers_installed, temp_leftovers, tiny_matrix_spec, wait_until

SIGNAL_IDS = [signal.Signals(s).name for s in STOP_SIGNALS]

# What each stage's first progress line looks like (tui/console.py ConsoleProgress): a slow phase's start
# ("  import   … torch + sentence_transformers") and a timed encode that is not a warm-up ("  encode   0.123 s  repeat 1").
STAGE_LINES = {
    "import": r"^\s+import\s+…",
    "load": r"^\s+load\s+…",
    "run": r"^\s+encode\s+\d+\.\d+ s\s+repeat 1\b",
}
# Passes over four short lines, as many as embprof allows: a pass takes milliseconds (the sample corpus's take
# seconds on two busy cores, and the run stage waits for a warm-up and a pass), and all of them far longer than
# any test waits, so the signal always lands mid-run.
SHORT_LINES = Path(__file__).resolve().parent / "fixtures" / "four_short_lines.txt"
RUN = ["run", "encode", "--input", str(SHORT_LINES), "--repeats", "100000"]


def snapshots(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.json") if not p.name.startswith(".")) if folder.is_dir() else []


# -- start-up ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", STOP_SIGNALS, ids=SIGNAL_IDS)
def test_a_signal_at_start_up_is_one_sentence_and_nothing_is_saved(sig: int, cli_env: dict[str, str]) -> None:
    if not Path("/proc/self/status").is_file():
        pytest.skip("the moment embprof's handlers are in place is read from /proc")
    profiles = Path(cli_env["EMBPROF_PROFILES_DIR"])
    child = Child([embprof_exe(), *RUN], cli_env)
    # The moment embprof's handlers are in place (before that a signal has its default effect, which is no
    # fault of embprof's): sent at once, it arrives while Python is still importing, long before the run.
    wait_until(lambda: handlers_installed(child.pid), 60, "embprof's signal handlers", alive=child.proc)
    child.send(sig)
    rc, out, err = child.finish()
    name = signal.Signals(sig).name
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err[-3000:]
    assert rc == 128 + sig, (rc, err[-2000:])
    assert len(lines) == 1 and lines[0].startswith(f"embprof: interrupted ({name})"), lines
    assert "nothing" in lines[0] and "saved" in lines[0], lines[0]
    assert snapshots(profiles) == [] and temp_leftovers(profiles) == []


# -- the run's stages --------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("stage", list(STAGE_LINES))
def test_a_signal_during_the_run_saves_an_incomplete_snapshot(stage: str, tmp_path: Path, cli_env: dict[str, str]) -> None:
    """Once the run has started (its banner printed, the sampler on), what it measured is kept: the import phase is
    a measured phase too, so a stop during it saves a snapshot of the import alone.

    The three signals go to three runs side by side, each sent the moment its own run reaches the stage: they
    share one handler, and three runs at once cost little more than one."""
    children: dict[int, Child] = {}
    for sig in STOP_SIGNALS:
        env = dict(cli_env, EMBPROF_PROFILES_DIR=str(tmp_path / signal.Signals(sig).name))
        children[sig] = Child([embprof_exe(), *RUN], env)
    waiting = dict(children)

    def signal_those_at_the_stage() -> bool:
        for sig, child in list(waiting.items()):
            if child.err.find(STAGE_LINES[stage]) is not None:
                child.send(sig)
                del waiting[sig]
            elif child.proc.poll() is not None:
                raise AssertionError(f"the {signal.Signals(sig).name} run ended before its {stage} stage:\n{child.err.close(5)[-3000:]}")
        return not waiting

    wait_until(signal_those_at_the_stage, 600, f"every run's {stage} stage", poll=0.005)
    ended = {sig: child.finish() for sig, child in children.items()}
    # `embprof show` reads each snapshot, the three side by side too.
    shown: dict[int, subprocess.Popen[str]] = {}
    for sig, (rc, out, err) in ended.items():
        name = signal.Signals(sig).name
        assert "Traceback" not in err, (name, err[-3000:])
        assert rc == 128 + sig, (name, rc, err[-2000:])
        # One notice naming the signal, however many lines the run still prints while it stops at a batch boundary.
        notices = [line for line in err.splitlines() if "interrupted" in line]
        assert len(notices) == 1 and notices[0].startswith(f"embprof: interrupted ({name})"), (name, notices)
        assert "status: incomplete" in out, (name, out[-2000:])
        profiles = tmp_path / name
        snaps = snapshots(profiles)
        assert len(snaps) == 1 and f"snapshot: {snaps[0]}" in out, (name, snaps, out[-500:])
        assert temp_leftovers(profiles) == [], name
        data = json.loads(snaps[0].read_text())
        assert data["status"] == "incomplete", name
        assert [e["error_kind"] for e in data["summary"]["errors"]] == ["cancelled"], (name, data["summary"]["errors"])
        assert data["summary"]["errors"][0]["message"].startswith(f"stopped by {name}"), name
        shown[sig] = subprocess.Popen([embprof_exe(), "show", str(snaps[0])], env=cli_env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
    for sig, proc in shown.items():
        out, err = proc.communicate(timeout=300)
        name = signal.Signals(sig).name
        assert proc.returncode == 0 and f"stopped by {name}" in out, (name, proc.returncode, err[-2000:])


def test_sigkill_during_a_run_leaves_no_half_written_snapshot(cli_env: dict[str, str]) -> None:
    from embprof.engine.snapshot import load

    profiles = Path(cli_env["EMBPROF_PROFILES_DIR"])
    child = Child([embprof_exe(), *RUN], cli_env)
    child.err.wait_for(STAGE_LINES["run"], timeout=600)
    child.send(signal.SIGKILL)
    rc, _out, _err = child.finish()
    assert rc == -signal.SIGKILL
    for f in snapshots(profiles):  # SIGKILL cannot be caught, so there is no snapshot; whatever is there is whole
        load(f)


# -- a signal during a save ----------------------------------------------------------------------------------------

# A child that saves the same file over and over with the product's atomic write. Each copy is numbered at both
# ends around a fixed body, so a torn or mixed copy is told from a whole one. argv: path, mode (deferred,
# unprotected, plain).
WRITER = r"""
import sys
from pathlib import Path

from embprof.engine.files import atomic_write_bytes
from embprof.tui import shutdown

BODY = bytes(range(256)) * 16384  # 4 MiB: a write long enough to be caught in the middle

def payload(n):
    return b"%08d\n" % n + BODY + b"\n%08d\n" % n

path, mode = Path(sys.argv[1]), sys.argv[2]
if mode != "plain":
    shutdown.install()
n = 0
try:
    if mode == "deferred":
        with shutdown.deferred():
            print("ready", flush=True)
            while shutdown.received() is None:  # the signal arrives while a save is being made ...
                n += 1
                atomic_write_bytes(path, payload(n))
            for _ in range(2):  # ... and does not cut short the saves that follow it either
                n += 1
                atomic_write_bytes(path, payload(n))
        print(f"saved {n} after {shutdown.name(shutdown.received())}", flush=True)
        sys.exit(shutdown.exit_status(shutdown.received()))
    print("ready", flush=True)
    while True:
        n += 1
        atomic_write_bytes(path, payload(n))
except shutdown.Stopped as exc:
    sys.exit(shutdown.exit_status(exc.signum))
"""

BODY = bytes(range(256)) * 16384


def check_whole(path: Path) -> int | None:
    """The copy number of the file at ``path``, asserting it is a whole copy; None when there is no file."""
    if not path.exists():
        return None
    data = path.read_bytes()
    assert len(data) == 9 + len(BODY) + 10, f"a partial file: {len(data)} bytes"
    head, body, tail = data[:9], data[9:-10], data[-10:]
    assert body == BODY, "the body is damaged"
    assert re.fullmatch(rb"\d{8}\n", head) and tail == b"\n" + head, (head, tail)
    return int(head)


def writer(path: Path, mode: str) -> Child:
    child = Child([sys.executable, "-c", WRITER, str(path), mode], dict(os.environ))
    child.out.wait_for("^ready$", timeout=120)
    return child


def random_moment(child: Child, seconds: float) -> None:
    """Let the writer run for ``seconds`` (the point is a moment no test chooses, not a wait for an event)."""
    try:
        child.proc.wait(seconds)
    except subprocess.TimeoutExpired:
        pass
    assert child.proc.returncode is None, "the writer stopped by itself"


@pytest.mark.parametrize("sig", STOP_SIGNALS, ids=SIGNAL_IDS)
def test_a_signal_during_a_deferred_save_waits_for_it(sig: int, tmp_path: Path) -> None:
    path = tmp_path / "snapshot.json"
    child = writer(path, "deferred")
    wait_until(path.exists, 120, "the first save", alive=child.proc)  # saves are under way
    child.send(sig)
    rc, out, err = child.finish(timeout=120)
    name = signal.Signals(sig).name
    assert rc == 128 + sig, (rc, err[-2000:])
    m = re.search(r"saved (\d+) after (\w+)", out)
    assert m and m.group(2) == name, out
    assert check_whole(path) == int(m.group(1))  # the last save, whole: none was cut short
    assert temp_leftovers(tmp_path) == []


@pytest.mark.parametrize("sig", STOP_SIGNALS, ids=SIGNAL_IDS)
def test_a_catchable_signal_that_cuts_a_write_leaves_no_temporary_file(sig: int, tmp_path: Path) -> None:
    """Outside ``deferred`` a stop signal ends the write where it is: the file keeps its previous whole copy and the
    temporary file is removed on the way out."""
    rng = random.Random(sig)
    path = tmp_path / "snapshot.json"
    for _ in range(3):
        child = writer(path, "unprotected")
        wait_until(path.exists, 120, "the first save", alive=child.proc)
        random_moment(child, rng.uniform(0.0, 0.3))
        child.send(sig)
        rc, _out, err = child.finish(timeout=120)
        assert rc == 128 + sig, (rc, err[-2000:])
        assert check_whole(path) is not None
        assert temp_leftovers(tmp_path) == [], "a catchable signal left a temporary file"


def test_sigkill_at_random_moments_never_leaves_a_partial_file(tmp_path: Path) -> None:
    """SIGKILL cannot be caught: the temporary file being written is left behind (a hidden ``.NAME.XXXX.tmp``, which
    ``embprof list`` and the profiles glob skip), but the path itself only ever holds a whole copy, since it only
    changes by rename."""
    rng = random.Random(20)
    path = tmp_path / "snapshot.json"
    seen: set[int | None] = set()
    for _ in range(20):
        child = writer(path, "plain")
        random_moment(child, rng.uniform(0.0, 0.4))  # within the first few writes: mostly mid-write
        child.send(signal.SIGKILL)
        rc, _out, err = child.finish(timeout=60)
        assert rc == -signal.SIGKILL, (rc, err[-2000:])
        seen.add(check_whole(path))
        for name in temp_leftovers(tmp_path):
            assert re.fullmatch(r"\.snapshot\.json\..+\.tmp", name), name
    assert seen - {None}, "no write ever completed: the kills tested nothing"


# -- the matrix ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_during_a_matrix_cell_keeps_the_finished_cells(tmp_path: Path, cli_env: dict[str, str]) -> None:
    from embprof.engine.files import folder_lock
    from embprof.engine.matrix import rows
    from embprof.engine.snapshot import load

    spec = tiny_matrix_spec(tmp_path, ("float32", "binary"))  # two cells, the second has time to be stopped
    folder = tmp_path / "m"
    args = [embprof_exe(), "matrix", "--spec", str(spec), "-o", str(folder)]
    child = Child(args, cli_env)
    child.err.wait_for(r"^\[2/2\] [^:]*$", timeout=600)  # the second cell has started (its start line has no figures)
    child.send(signal.SIGTERM)
    rc, _out, err = child.finish(timeout=300)
    assert rc == 143, (rc, err[-3000:])
    assert "Traceback" not in err
    assert "interrupted (SIGTERM): the finished cells are kept" in err, err[-2000:]
    _manifest, table_rows = rows(folder)
    assert [r.status for r in table_rows][0] == "ok" and table_rows[1].status != "ok", [r.status for r in table_rows]
    first = [p for p in (folder / "cells").glob("*.json") if not p.name.endswith(".plan.json")]
    assert first and all(load(p) for p in first)
    assert temp_leftovers(folder) == [] and temp_leftovers(folder / "cells") == []

    # The lock went with the process: a second run takes the folder and goes on from the finished cell.
    again = Child(args, cli_env)
    again.err.wait_for(r"^\[1/2\] .*: finished in an earlier run", timeout=300)
    again.send(signal.SIGTERM)
    rc, _out, err = again.finish(timeout=300)
    assert rc == 143 and "is in use" not in err, (rc, err[-2000:])
    with folder_lock(folder, "matrix folder"):  # and that one let go of it too
        pass


# -- the dashboard ---------------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (make setup installs it where apt-get works)")
@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "SIGHUP"])
def test_the_dashboard_stopped_by_a_signal_saves_what_was_measured(how: str, tmp_path: Path, speed_text: Path) -> None:
    """In a real terminal: SIGTERM (``kill``), SIGINT (``kill -INT``: ctrl+c is a key there) and SIGHUP (the
    terminal closed: tmux's session killed) stop the dashboard's run at its next batch boundary, its snapshot
    is saved incomplete, naming the signal, and the process ends (143, 130; after a hangup nobody is left to
    read a status)."""
    import psutil

    session = f"embprof-signal-{os.getpid()}-{how}"
    profiles = tmp_path / "profiles"
    status_file = tmp_path / "status"
    env = f"EMBPROF_PROFILES_DIR={profiles} HF_HUB_OFFLINE=1 TERM=xterm-256color"
    cmd = (f"env {env} {embprof_exe()} --workload speed --loops 500 --text {speed_text}; "
           f"echo $? > {status_file}; sleep 60")
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "40", cmd], check=True)
    try:
        shell = int(subprocess.run(["tmux", "display-message", "-p", "-t", session, "#{pane_pid}"], capture_output=True,
                                   text=True, check=True).stdout.strip())
        found: list[psutil.Process] = []

        def dashboard() -> bool:
            found[:] = [p for p in psutil.Process(shell).children(recursive=True) if "embprof" in " ".join(p.cmdline())]
            return bool(found)

        wait_until(dashboard, 30, "the dashboard's process", poll=0.1)
        proc = found[0]
        # A timed loop under way: the status bar counts them ("running 2/500").
        wait_until(lambda: re.search(r"running [1-9]\d*/500", _pane(session)) is not None, 180, "a timed loop on screen", poll=0.2)
        if how == "SIGHUP":
            subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True, check=False)
        else:
            proc.send_signal(getattr(signal, how))
        proc.wait(timeout=120)
        if how != "SIGHUP":
            wait_until(lambda: status_file.is_file() and bool(status_file.read_text().strip()), 20, "the exit status", poll=0.1)
            assert status_file.read_text().strip() == str(128 + getattr(signal, how))
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True, check=False)
    saved = snapshots(profiles)
    assert len(saved) == 1, saved
    data = json.loads(saved[0].read_text())
    assert data["status"] == "incomplete"
    assert any(f"stopped by {how}" in e["message"] for e in data["summary"]["errors"]), data["summary"]["errors"]
    assert temp_leftovers(profiles) == []


def _pane(session: str) -> str:
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True, check=False).stdout


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (make setup installs it where apt-get works)")
@pytest.mark.parametrize("how", ["SIGTERM", "SIGHUP"])
def test_the_matrix_dashboard_stopped_by_a_signal_stops_its_running_cell(how: str, tmp_path: Path) -> None:
    """The Matrix view in a real terminal, a cell timing far more loops than the test waits for: SIGTERM (or the
    terminal closed) reaches the running cell as a Ctrl-C would, the cell saves what it measured, and the
    dashboard ends by itself (143 for SIGTERM) instead of waiting for the cell to run to its end."""
    import psutil

    spec = tiny_matrix_spec(tmp_path)
    spec.write_text(spec.read_text().replace("loops = 2", "loops = 100000"))
    folder = tmp_path / "m"
    session = f"embprof-matrix-{os.getpid()}-{how}"
    status_file = tmp_path / "status"
    cmd = (f"env HF_HUB_OFFLINE=1 TERM=xterm-256color {embprof_exe()} matrix --spec {spec} -o {folder} --dashboard; "
           f"echo $? > {status_file}; sleep 60")
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "160", "-y", "45", cmd], check=True)
    try:
        shell = int(subprocess.run(["tmux", "display-message", "-p", "-t", session, "#{pane_pid}"], capture_output=True,
                                   text=True, check=True).stdout.strip())
        found: list[psutil.Process] = []

        def dashboard() -> bool:
            found[:] = [p for p in psutil.Process(shell).children(recursive=False) if "embprof" in " ".join(p.cmdline())]
            return bool(found)

        wait_until(dashboard, 30, "the matrix dashboard's process", poll=0.1)
        proc = found[0]
        # The cell's process is timing its loops: its progress line says so ("timed loop" / "encode").
        wait_until(lambda: "running" in _pane(session) and any("embprof.engine.matrix." in " ".join(c.cmdline()) for c in proc.children(recursive=True)),
                   300, "a running cell", poll=0.2)
        wait_until(lambda: (folder / "cells").is_dir() and "loop" in _pane(session), 300, "the cell's timed loops", poll=0.2)
        if how == "SIGHUP":
            subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True, check=False)
        else:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)  # a whole cell would take far longer: the stop reached it
        if how == "SIGTERM":
            wait_until(lambda: status_file.is_file() and bool(status_file.read_text().strip()), 20, "the exit status", poll=0.1)
            assert status_file.read_text().strip() == "143"
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True, check=False)
    saved = [p for p in (folder / "cells").glob("*.json") if not p.name.endswith(".plan.json")]
    assert len(saved) == 1, saved
    data = json.loads(saved[0].read_text())
    assert data["status"] == "incomplete", data["status"]
