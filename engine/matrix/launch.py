"""How a matrix cell is launched, and how its end is read back.

A cell always runs in a process of its own (``python -m embprof.engine.matrix.cellproc PLAN
SNAPSHOT``): its imports, allocator state and memory are its own, and a model that crashes takes
that process, not the matrix. A ``Launcher`` decides where that process runs: on this machine
(``ProcessLauncher``) or on a Ray worker (``ray.RayLauncher``). Either returns a ``CellOutcome``:
the snapshot the cell saved, or the crash record that says why it has none, with its ``Provenance``.

What every launcher shares is here, once:

* the cell's process is started, its phases read and, when asked, stopped the same way
  (``run_cell_process``);
* a process that ended without a snapshot is judged by ``crash.process_end`` (the one rule for
  "killed" and "out of memory") and recorded by ``record_crash``, the only writer of
  ``cells/ID.crash.json``; ``read_crash`` is its only reader, ``settle`` the one place that reads
  what a cell's process left;
* where a cell ran is said by the cell itself: it writes its ``Provenance`` into its snapshot's
  environment and announces it on its standard output. A launcher hands it only what it cannot
  learn alone (which Ray worker it runs under, and which attempt it is).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, Protocol, TypedDict

from ..crash import process_end
from ..files import atomic_write_bytes, read_json_file
from .paths import crash_path, plan_path, snapshot_path
from .spec import Cell
from .warm import START_ENV, WarmParent

CELL_MODULE = "embprof.engine.matrix.cellproc"
# A launcher's word to its cell's process: the Ray worker and attempt it runs as (JSON). Absent: here, first attempt.
PLACE_ENV = "EMBPROF_CELL_PLACE"
# A parent's pid: the cell's process dies with it (``tie_to_parent``), rather than going on unwatched.
TIE_ENV = "EMBPROF_TIE_TO_PARENT"
CRASH_RECORD_MAX_BYTES = 1024 * 1024

ProgressKind = Literal["queued", "start", "phase"]
Progress = Callable[[ProgressKind, str], None]


class OthersLoad(TypedDict):
    """What the rest of the machine did while a cell ran (``cellproc.others_during_run``)."""

    samples: int
    cpu_percent_mean: float | None  # others' CPU, in percent of one core
    cpu_percent_max: float | None
    gpu_processes: list[dict[str, Any]]  # other processes on the GPUs, when the cell began and ended
    gpu_mib: float | None  # None: NVML could not say


@dataclass(frozen=True)
class RayWorker:
    """The Ray worker a cell ran under, as Ray's runtime context names it: the cell's own process cannot ask Ray."""

    node_id: str
    worker_id: str
    pid: int  # the worker's process: the cell's parent (a cold cell's; a warm cell's parent is the worker's warm parent)
    gpu_ids: tuple[str, ...] = ()
    cpus: int | None = None  # the CPUs (and torch threads) the cell asked Ray for; None: a CUDA cell, which asks for a GPU
    placement: str | None = None  # the placement the cell was pinned to

    def to_json(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "worker_id": self.worker_id, "pid": self.pid, "gpu_ids": list(self.gpu_ids), "cpus": self.cpus,
                "placement": self.placement}


@dataclass(frozen=True)
class Place:
    """What a launcher tells its cell's process of where it runs: the attempt, and the Ray worker if any."""

    attempt: int = 1
    worker: RayWorker | None = None

    def to_env(self) -> str:
        return json.dumps({"attempt": self.attempt, "worker": None if self.worker is None else self.worker.to_json()})

    @classmethod
    def from_env(cls, text: str | None) -> Place:
        """The place a launcher handed over; the first attempt here when it handed none (or nothing readable)."""
        try:
            data = json.loads(text) if text else {}
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            return cls()
        return cls(_attempt(data.get("attempt")), _worker(data.get("worker")))


@dataclass(frozen=True)
class Provenance:
    """Where and how a cell ran, as its own process saw it."""

    host: str
    pid: int | None  # the cell's process; None: not recorded (a crash record says where, not which process)
    attempt: int = 1  # Ray runs a cell again when its worker dies; here, always the first
    worker: RayWorker | None = None  # None: not on a Ray cluster
    others: OthersLoad | None = None  # the rest of the machine's load during the cell; None: not measured (it did not finish)

    @property
    def node(self) -> str | None:
        return None if self.worker is None else self.worker.node_id

    def ray_json(self) -> dict[str, Any] | None:
        """The ``ray`` entry of a snapshot's environment and of a crash record, as both have always had it."""
        if self.worker is None:
            return None
        return {"host": self.host, **self.worker.to_json(), "attempt": self.attempt, "retried": self.attempt > 1}

    def to_json(self) -> dict[str, Any]:
        return {"host": self.host, "pid": self.pid, "attempt": self.attempt, "ray": self.ray_json(), "others": self.others}

    @classmethod
    def from_json(cls, data: object) -> Provenance | None:
        """``to_json``'s output read back; None for anything else (a line from outside, a damaged message)."""
        if not isinstance(data, dict) or not isinstance(data.get("host"), str):
            return None
        return cls(data["host"], _int(data.get("pid")), _attempt(data.get("attempt")), _worker(data.get("ray")), _others(data.get("others")))

    @classmethod
    def of_environment(cls, env: Mapping[str, Any]) -> Provenance | None:
        """What a saved snapshot's environment says of where its cell ran (None: a snapshot that does not say).

        Snapshots come from outside too: a field of the wrong type is taken as not said, never trusted."""
        ray = env.get("ray")
        host = ray.get("host") if isinstance(ray, dict) else env.get("hostname")
        if not isinstance(host, str) or not host:
            return None
        attempt = _attempt(ray.get("attempt")) if isinstance(ray, dict) else 1
        return cls(host, _int(env.get("pid")), attempt, _worker(ray), _others(env.get("others_during_run")))


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _attempt(value: object) -> int:
    n = _int(value)
    return n if n is not None and n >= 1 else 1


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _worker(data: object) -> RayWorker | None:
    if not isinstance(data, dict):
        return None
    gpu_ids = data.get("gpu_ids")
    return RayWorker(str(data.get("node_id") or ""), str(data.get("worker_id") or ""), _int(data.get("pid")) or 0,
                     tuple(str(g) for g in gpu_ids) if isinstance(gpu_ids, list) else (), _int(data.get("cpus")),
                     _opt_str(data.get("placement")))


def _others(data: object) -> OthersLoad | None:
    if not isinstance(data, dict):
        return None

    def number(key: str) -> float | None:
        v = data.get(key)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    procs = data.get("gpu_processes")
    return OthersLoad(samples=_int(data.get("samples")) or 0, cpu_percent_mean=number("cpu_percent_mean"),
                      cpu_percent_max=number("cpu_percent_max"),
                      gpu_processes=[p for p in procs if isinstance(p, dict)] if isinstance(procs, list) else [],
                      gpu_mib=number("gpu_mib"))


@dataclass(frozen=True)
class CrashRecord:
    """Why a cell has no snapshot (``cells/ID.crash.json``): the row shows it as failed, or out of memory."""

    cell_id: str
    reason: str
    oom: bool = False
    returncode: int | None = None  # None: no process of the cell ended (it was refused, or Ray could not run it)
    seconds: float = 0.0
    provenance: Provenance | None = None  # where its process ran; None: it never started

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"cell_id": self.cell_id, "returncode": self.returncode, "reason": self.reason, "seconds": self.seconds,
                                "oom": self.oom}
        ray = None if self.provenance is None else self.provenance.ray_json()
        if ray is not None:  # a local record never said where it ran: the machine is the matrix's own
            data["ray"] = ray
        return data

    @classmethod
    def from_json(cls, cell_id: str, data: object) -> CrashRecord:
        if not isinstance(data, dict):
            return cls(cell_id, "a crash record that is not an object")
        seconds, ray = data.get("seconds"), data.get("ray")
        where = Provenance(str(ray.get("host") or ""), None, _attempt(ray.get("attempt")), _worker(ray)) if isinstance(ray, dict) else None
        return cls(cell_id, str(data.get("reason")), bool(data.get("oom")), _int(data.get("returncode")),
                   float(seconds) if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) else 0.0, where)


@dataclass(frozen=True)
class CellOutcome:
    """How one launch of a cell ended: the snapshot it saved, or the crash record that says why there is none."""

    cell_id: str
    snapshot: Path | None = None
    crash: CrashRecord | None = None
    provenance: Provenance | None = None  # None: the cell never ran (refused before it started, or Ray could not start it)

    def __post_init__(self) -> None:
        if (self.snapshot is None) == (self.crash is None):
            raise ValueError("a cell's outcome is its snapshot or its crash record, one of the two")

    def to_json(self) -> dict[str, Any]:
        return {"cell_id": self.cell_id, "snapshot": None if self.snapshot is None else str(self.snapshot),
                "crash": None if self.crash is None else self.crash.to_json(),
                "provenance": None if self.provenance is None else self.provenance.to_json()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CellOutcome:
        cid = str(data["cell_id"])
        crash = data.get("crash")
        return cls(cid, None if data.get("snapshot") is None else Path(str(data["snapshot"])),
                   None if crash is None else CrashRecord.from_json(cid, crash), Provenance.from_json(data.get("provenance")))


class Launcher(Protocol):
    """Runs one cell to its end, in a process of its own, somewhere; returns how it ended.

    ``progress`` hears when the cell is queued, when it starts (the text says where, if that is
    news) and each phase it enters. ``cancel`` returning True asks the cell to stop at its next
    batch boundary, keeping what it measured; a launcher with nothing to return then raises
    ``MatrixInterrupted``."""

    def launch(self, cell: Cell, progress: Progress, cancel: Callable[[], bool]) -> CellOutcome: ...


class ProcessLauncher:
    """Each cell in a process of its own on this machine. One at a time: two side by side would each
    measure the other's load, so the matrix's run loop waits for one launch before the next."""

    def __init__(self, folder: Path, warm: WarmParent | None = None) -> None:
        self.folder = folder
        self.warm = warm  # None: every cell starts cold

    def launch(self, cell: Cell, progress: Progress, cancel: Callable[[], bool]) -> CellOutcome:
        plan_file = plan_path(self.folder, cell.cell_id)
        progress("start", "")
        atomic_write_bytes(plan_file, cell.plan.to_json().encode("utf-8"))
        crash_path(self.folder, cell.cell_id).unlink(missing_ok=True)
        run = run_cell_process(plan_file, snapshot_path(self.folder, cell), lambda text: progress("phase", text), cancel, warm=self.warm,
                               name=cell.cell_id)
        return settle(self.folder, cell.cell_id, run)


@dataclass(frozen=True)
class ProcessRun:
    """A cell's process, ended: its exit status, its standard error, and where it ran."""

    returncode: int
    stderr: str
    seconds: float
    provenance: Provenance  # as the cell announced it; what its launcher knew if it ended before it could
    warm: bool = False  # forked by a warm parent (True) or started cold


def run_cell_process(plan_file: Path, out: Path, on_phase: Callable[[str], None], cancel: Callable[[], bool] | None = None, *,
                     env: Mapping[str, str] | None = None, place: Place | None = None, grace_s: float = 120.0,
                     warm: WarmParent | None = None, cold_why: str = "asked for", name: str | None = None) -> ProcessRun:
    """Run a cell's process to its end: ``PLAN`` in, its snapshot saved at ``out`` (by the cell, atomically).

    Its own session: a Ctrl-C reaches the launcher first, which then asks the cell to stop cleanly (as it
    does when ``cancel`` says so, or when anything else ends the wait); a cell that does not stop within
    ``grace_s`` is killed. ``env``: the process's environment (default: this one's); ``place``: where it
    runs, when that is not simply here (the first attempt, on this machine); ``warm``: the warm parent
    that forks it (``warm.py``), or None for a process started cold (``cold_why`` says why, in its snapshot).
    A cell the warm parent cannot fork starts cold, and its snapshot says why. ``name``: the cell's id, a warm
    child's process name (its command line is its parent's)."""
    place = place or Place()
    child = dict(os.environ if env is None else env)
    child.pop(PLACE_ENV, None)
    if place != Place():
        child[PLACE_ENV] = place.to_env()
    started = time.perf_counter()
    argv = [str(plan_file), str(out)]
    # Standard error goes to a file: a pipe read only at the end would stall a cell that writes much to it.
    with tempfile.TemporaryFile(mode="w+", encoding="utf-8") as err_file:
        proc: CellProcess | None = None
        why_cold = cold_why if warm is None else None
        if warm is not None:
            forked = warm.spawn(argv, child, err_file.fileno(), name)
            if isinstance(forked, str):
                why_cold = forked
            else:
                proc = forked
        if proc is None:
            child[START_ENV] = json.dumps({"warm": False, "why": why_cold})
            proc = subprocess.Popen([sys.executable, "-m", CELL_MODULE, *argv], stdout=subprocess.PIPE, stderr=err_file, text=True,
                                    env=child, start_new_session=True)
        if cancel is not None:
            # A stop asked for without a signal (the dashboard's q, or its SIGTERM) reaches the cell as a Ctrl-C
            # would: it stops at its next batch boundary and saves what it measured, rather than running to its end.
            threading.Thread(target=_stop_when_cancelled, args=(proc, cancel), name="embprof-cell-stop", daemon=True).start()
        try:
            assert proc.stdout is not None
            announced = read_cell_output(proc.stdout, on_phase)
            returncode = proc.wait()
        except BaseException:  # Ctrl-C here, or Ray cancelling the task that waits: the cell's process goes too
            _interrupt(proc)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
        finally:
            if proc.stdout is not None:
                proc.stdout.close()
        err_file.seek(0)
        stderr = err_file.read()
    provenance = announced or Provenance(socket.gethostname(), proc.pid, place.attempt, place.worker)
    return ProcessRun(returncode, stderr, time.perf_counter() - started, provenance, warm=why_cold is None)


class CellProcess(Protocol):
    """What a launcher needs of a cell's process: a ``subprocess.Popen``, or a warm parent's forked child."""

    pid: int

    @property
    def stdout(self) -> IO[str] | None: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...


def _interrupt(proc: CellProcess) -> None:
    try:
        proc.send_signal(signal.SIGINT)
    except ProcessLookupError:
        pass


def _stop_when_cancelled(proc: CellProcess, cancel: Callable[[], bool]) -> None:
    while proc.poll() is None:
        if cancel():
            _interrupt(proc)
            return
        time.sleep(0.2)


def read_cell_output(lines: Iterable[str], on_phase: Callable[[str], None]) -> Provenance | None:
    """A cell process's standard output: each phase it starts is one JSON line, and so is its provenance
    once its snapshot is saved (``cellproc``); the rest is not ours. Returns the provenance it announced."""
    announced = None
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if not isinstance(data, dict):
            continue
        if "provenance" in data:
            announced = Provenance.from_json(data["provenance"]) or announced
        else:
            on_phase(str(data.get("phase", "")))
    return announced


def settle(folder: Path, cell_id: str, run: ProcessRun) -> CellOutcome:
    """What a cell's ended process left in the matrix's folder: its snapshot, or else a crash record saying why not."""
    out = snapshot_path(folder, cell_id)
    if out.is_file():
        return CellOutcome(cell_id, snapshot=out, provenance=run.provenance)
    end = process_end(run.returncode, run.stderr)
    where = f" (on {run.provenance.host})" if run.provenance.worker is not None else ""  # a cluster has many hosts
    return record_crash(folder, CrashRecord(cell_id, end.reason + where, end.oom, run.returncode, run.seconds, run.provenance))


def record_crash(folder: Path, record: CrashRecord) -> CellOutcome:
    """Write a cell's crash record (the only writer of one); the outcome it makes."""
    atomic_write_bytes(crash_path(folder, record.cell_id), json.dumps(record.to_json()).encode("utf-8"))
    return CellOutcome(record.cell_id, crash=record, provenance=record.provenance)


def read_crash(folder: Path, cell_id: str) -> CrashRecord:
    """A cell's crash record; UserError if the file is damaged (the cell then counts as not run)."""
    return CrashRecord.from_json(cell_id, read_json_file(crash_path(folder, cell_id), "crash record", CRASH_RECORD_MAX_BYTES))


def tie_to_parent(sig: int, parent_pid: int) -> None:
    """In a child, as it starts: the kernel sends it ``sig`` when its parent dies (PR_SET_PDEATHSIG), and
    if the parent is already gone it goes now. Done by the child itself, not between fork and exec: the
    parents (a Ray worker, the dashboard) run threads, and code run there could deadlock."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:
        signal.raise_signal(sig)
