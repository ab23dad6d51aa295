"""A matrix's cells on a Ray cluster: the same cells, run the same way, their snapshots saved where a
local matrix saves them.

Each cell is one Ray task carrying its run plan. In the worker it runs exactly as a local cell does:
``python -m embprof.engine.cellproc PLAN SNAPSHOT`` in a process of its own (so a cell's import,
load and memory are its own, and a crash of the model takes that process, not the worker). The task
returns the snapshot's bytes, with where it ran (host, node, worker, process, attempt) added to its
environment; the driver writes it atomically where a local run would. A reference cell also returns
its embeddings, which reach the cells compared with it as a task argument, so no storage needs to be
shared.

* Resources: a CUDA cell asks for one GPU; a CPU cell for ``cpus`` CPUs, and its torch threads are
  set to the same number (Ray starts its workers with ``OMP_NUM_THREADS=1``: left alone, every CPU
  cell would silently run single-threaded).
* Faults: a worker or node that dies mid-cell gets the cell retried once, elsewhere if Ray so
  places it (``max_retries=1``); the snapshot records the attempt. A cell whose every attempt dies
  is recorded as failed, with why, and the others go on.
* Live: each task reports its start (host, attempt) and its phases to a small tracker actor, which
  the driver polls while it waits, so the command line and the Matrix view show each cell's state.
* Ctrl-C cancels the outstanding tasks (a running cell's process is stopped); finished cells are
  kept, and running the same matrix again submits only what is missing.

Ray is an optional extra (``pip install 'embprof[ray]'``); nothing here is imported without ``--ray``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import UserError
from .files import atomic_write_bytes
from .text import one_line

RAY_EXTRA = "pip install 'embprof[ray]'"


class ClusterLost(Exception):
    """The cluster stopped answering mid-matrix: the cells that finished are saved; ``str()`` says so in one sentence."""
POLL_S = 0.5
TAIL_BYTES = 4_000


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError(f"--ray needs Ray, which is not installed here: {RAY_EXTRA}") from None
    return ray


def connect(address: str) -> Any:
    """Join the cluster as Ray finds it: ``auto`` (or ``RAY_ADDRESS``) or an address; one sentence if it cannot."""
    ray = import_ray()
    _reachable(address)
    # Nothing of the driver's is shipped to the workers: they import embprof as installed there.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        with _quiet_stderr():
            ray.init(address=address, log_to_driver=False, logging_level="ERROR", configure_logging=False,
                     namespace="embprof")
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = "RAY_ADDRESS or a local cluster" if address == "auto" else f"'{one_line(address)}'"
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        raise UserError(f"no Ray cluster at {where}: {one_line(first)[:200]} (start one with `ray start --head`)") from None
    return ray


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Ray's core writes its start-up chatter (it probes the internet for its own address) straight to
    file descriptor 2, past Python: on the dashboard's screen that would be garbage. Set aside while it
    connects; a failure is still said, in one sentence, from the exception."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _reachable(address: str, timeout_s: float = 5.0) -> None:
    """An address given as host:port is tried first: Ray itself would keep retrying a head that is not
    there for minutes before it says so."""
    if address == "auto" or "://" in address:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise UserError(f"--ray takes auto or the head node's HOST:PORT, not '{one_line(address)}'")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as exc:
        reason = (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or exc.__class__.__name__).lower()
        raise UserError(f"no Ray cluster at '{one_line(address)}': {reason} (start one with `ray start --head`)") from None


# -- in the worker ----------------------------------------------------------------------------------------
def _tail(path: Path) -> str:
    try:
        data = path.read_bytes()[-TAIL_BYTES:]
    except OSError:
        return ""
    return data.decode("utf-8", "replace")


def run_cell_in_worker(plan: dict[str, Any], cell_id: str, reference: Any, cpus: int | None, tracker: Any) -> dict[str, Any]:
    """The Ray task's body: the cell's own process, as a local matrix runs it; its snapshot and facts back."""
    import ray

    from .matrix import read_phases

    ctx = ray.get_runtime_context()
    where = {"host": socket.gethostname(), "node_id": ctx.get_node_id(), "worker_id": ctx.get_worker_id(), "pid": os.getpid(),
             "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}
    attempt = int(ray.get(tracker.started.remote(cell_id, where["host"])))
    where["attempt"] = attempt
    with tempfile.TemporaryDirectory(prefix="embprof-ray-cell-") as tmp:
        work = Path(tmp)
        w = plan["workload"]
        if isinstance(reference, dict):  # the reference cell's result, resolved by Ray before this task started
            reference = reference.get("reference")
        if reference is not None:
            (work / "reference.npz").write_bytes(reference)
            w["reference"] = str(work / "reference.npz")
        elif w.get("reference"):
            w["reference"] = None  # its reference failed: the cell runs without agreement figures, and says so
        writes_reference = bool(w.get("write_reference"))
        if writes_reference:
            w["write_reference"] = str(work / "written.npz")
        plan_file, out = work / "plan.json", work / "snapshot.json"
        plan_file.write_text(json.dumps(plan), encoding="utf-8")
        env = dict(os.environ)
        if cpus is not None:
            env["OMP_NUM_THREADS"] = str(cpus)  # the threads the cell asked Ray for, not Ray's default of one
        else:
            env.pop("OMP_NUM_THREADS", None)
        with open(work / "stderr.txt", "w", encoding="utf-8") as err:
            proc = subprocess.Popen([sys.executable, "-m", "embprof.engine.cellproc", str(plan_file), str(out)],
                                    stdout=subprocess.PIPE, stderr=err, text=True, env=env, start_new_session=True,
                                    preexec_fn=_die_with_parent)
            try:
                assert proc.stdout is not None
                read_phases(proc.stdout, lambda text: tracker.phase.remote(cell_id, text))
                proc.wait()
            except BaseException:  # cancelled (ray.cancel raises KeyboardInterrupt here): the cell's process goes too
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                raise
        result: dict[str, Any] = {"returncode": proc.returncode, "where": where, "stderr": _tail(work / "stderr.txt"),
                                  "snapshot": None, "reference": None}
        if out.is_file():
            data = json.loads(out.read_text(encoding="utf-8"))
            data.setdefault("environment", {})["ray"] = {**where, "retried": attempt > 1, "cpus": cpus}
            result["snapshot"] = json.dumps(data, indent=1).encode("utf-8") + b"\n"
        if writes_reference and (work / "written.npz").is_file():
            result["reference"] = (work / "written.npz").read_bytes()
        return result


def _die_with_parent() -> None:
    """In the cell's process, before it runs: when the worker dies (a node lost, a worker killed), so does
    the cell, rather than going on unwatched and measuring beside its own retry."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class _Tracker:
    """One small actor: each task says when it starts (and which attempt that is) and each phase it enters."""

    def __init__(self) -> None:
        self.attempts: dict[str, int] = {}
        self.events: list[tuple[str, str, str]] = []

    def started(self, cell_id: str, host: str) -> int:
        self.attempts[cell_id] = self.attempts.get(cell_id, 0) + 1
        self.events.append(("start", cell_id, f"on {host}" + (f" (attempt {self.attempts[cell_id]}: retried)"
                                                              if self.attempts[cell_id] > 1 else "")))
        return self.attempts[cell_id]

    def phase(self, cell_id: str, text: str) -> None:
        self.events.append(("phase", cell_id, text))

    def take(self) -> list[tuple[str, str, str]]:
        out, self.events = self.events, []
        return out


# -- in the driver -------------------------------------------------------------------------------------------
def run_cells(address: str, folder: Path, cells: list[Any], all_cells: list[Any], listener: Any, cancel: Callable[[], bool],
              on_done: Callable[[Any], None], cpus: int) -> None:
    """Submit every cell, then save each snapshot as it comes back; ``on_done(cell)`` after each."""
    from .matrix import MatrixEvent, MatrixInterrupted, crash_path, snapshot_path

    ray = connect(address)
    task = ray.remote(run_cell_in_worker)
    tracker = ray.remote(num_cpus=0)(_Tracker).remote()
    total = len(all_cells)
    index = {c.cell_id: all_cells.index(c) + 1 for c in cells}
    by_id = {c.cell_id: c for c in cells}
    writers: dict[str, Any] = {}  # reference path -> the reference cell's task
    pending: dict[Any, Any] = {}
    started: dict[str, float] = {}
    # References first: the cells compared with one get its result as an argument, and Ray starts them once it is in.
    for c in sorted(cells, key=lambda c: not c.reference):
        w = c.plan.workload
        cuda = str(getattr(c.plan.target, "device", "cpu")).startswith("cuda")
        options: dict[str, Any] = {"max_retries": 1, "retry_exceptions": False}
        options.update({"num_gpus": 1, "num_cpus": 1} if cuda else {"num_cpus": cpus})
        reference: Any = None
        if getattr(w, "reference", None):
            path = Path(w.reference)
            reference = writers.get(w.reference) or (path.read_bytes() if path.is_file() else None)
        ref = task.options(**options).remote(c.plan.model_dump(mode="json"), c.cell_id, reference, None if cuda else cpus, tracker)
        if getattr(w, "write_reference", None):
            writers[w.write_reference] = ref
        pending[ref] = c
        crash_path(folder, c.cell_id).unlink(missing_ok=True)
        listener(MatrixEvent("queued", c.cell_id, c.label, index[c.cell_id], total, "queued on the cluster"))
    try:
        while pending:
            if cancel():
                raise MatrixInterrupted()
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
            for kind, cid, text in ray.get(tracker.take.remote()):
                c = by_id.get(cid)
                if c is None:
                    continue
                if kind == "start":
                    started.setdefault(cid, time.perf_counter())
                listener(MatrixEvent(kind, cid, c.label, index[cid], total, text))  # type: ignore[arg-type]
            for ref in ready:
                c = pending.pop(ref)
                _save(ray, ref, c, folder, snapshot_path(folder, c), crash_path(folder, c.cell_id),
                      time.perf_counter() - started.get(c.cell_id, time.perf_counter()))
                on_done(c)
    except KeyboardInterrupt:
        raise MatrixInterrupted() from None
    except ray.exceptions.RayError as exc:  # the head, the tracker or the connection went away, not one cell
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        raise ClusterLost(f"the Ray cluster stopped answering ({exc.__class__.__name__}: {one_line(first)[:160]}); the finished "
                          "cells are kept: run the same matrix again to go on") from None
    finally:
        for ref in pending:  # what is still queued or running: cancelled, its cell's process stopped
            try:
                ray.cancel(ref)
            except Exception:
                pass


def _save(ray: Any, ref: Any, cell: Any, folder: Path, out: Path, crash: Path, seconds: float) -> None:
    try:
        result = ray.get(ref)
    except ray.exceptions.RayError as exc:  # the task failed twice: its worker (or node) died each time
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        reason = f"the cell's Ray worker died twice (retried once): {exc.__class__.__name__}: {first[:200]}"
        atomic_write_bytes(crash, json.dumps({"cell_id": cell.cell_id, "returncode": None, "reason": reason, "seconds": seconds,
                                              "oom": False}).encode("utf-8"))
        return
    if result.get("reference") is not None and getattr(cell.plan.workload, "write_reference", None):
        atomic_write_bytes(Path(cell.plan.workload.write_reference), result["reference"])
    if result.get("snapshot") is not None:
        atomic_write_bytes(out, result["snapshot"])
        return
    rc = result.get("returncode")
    lines = str(result.get("stderr") or "").strip().splitlines()
    why = lines[-1].removeprefix("embprof: error: ") if lines else f"the cell's process exited with status {rc}"
    host = result.get("where", {}).get("host", "")
    data = {"cell_id": cell.cell_id, "returncode": rc, "reason": f"{why} (on {host})" if host else why, "seconds": seconds,
            "oom": rc == -9}
    atomic_write_bytes(crash, json.dumps(data).encode("utf-8"))
