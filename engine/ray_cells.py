"""A matrix's cells on a Ray cluster: the same cells, run the same way, their snapshots saved where a
local matrix saves them.

The Ray driver is a process of its own (``python -m embprof.engine.ray_cells --drive``), started by
embprof's matrix runner and speaking to it in JSON lines over a pipe. Ray's core ends its driver's
process outright when the node it is attached to goes away, and writes to the process's file
descriptors as it pleases; kept apart, a lost cluster is one sentence from embprof (with the finished
cells kept), the dashboard's screen is never written over, and Ray's own messages go to
``ray-driver.log`` in the matrix's folder.

Each cell is one Ray task carrying its run plan. In the worker it runs exactly as a local cell does:
``python -m embprof.engine.cellproc PLAN SNAPSHOT`` in a process of its own (so a cell's import,
load and memory are its own, and a crash of the model takes that process, not the worker). The task
returns the snapshot's bytes, with where it ran (host, node, worker, process, attempt) added to its
environment; the driver writes it atomically where a local run would. A reference cell also returns
its embeddings, which reach the cells compared with it as a task argument, so no storage needs to be
shared.

* Resources: a CUDA cell asks for one GPU; a CPU cell for ``cpus`` CPUs, and its torch threads are
  set to the same number (Ray starts its workers with ``OMP_NUM_THREADS=1``: left alone, every CPU
  cell would silently run single-threaded). A cell pinned to a placement also asks for its custom
  resources or GPU type. A cell that no live node could ever take is failed at once, with why,
  instead of waiting in Ray's queue for ever.
* Order: references first, then the cells grouped by model (see ``submission_order``).
* Credentials: a cluster with token authentication is joined with the token Ray finds in the
  environment; it is never read here, and each cell's process starts without it.
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

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
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
    """Join the cluster as Ray finds it: ``auto`` (or ``RAY_ADDRESS``) or an address; one sentence if it cannot.

    A cluster with token authentication (``RAY_AUTH_MODE=token``) is joined with the token Ray itself
    finds (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or Ray's default file): embprof never reads it,
    and a cell's own process is started without it."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    _reachable(address)
    # Nothing of the driver's is shipped to the workers: they import embprof as installed there.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        ray.init(address=address, log_to_driver=False, logging_level="ERROR", configure_logging=False, namespace="embprof")
    except Exception as exc:  # Ray's own errors (AuthenticationError, ConnectionError …) have no common base
        where = "RAY_ADDRESS or a local cluster" if address == "auto" else f"'{one_line(address)}'"
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        if "authentication" in (exc.__class__.__name__ + first).lower():
            raise UserError(f"the Ray cluster at {where} asks for a token this driver does not have: set RAY_AUTH_MODE=token and "
                            "RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) as the cluster's nodes have them") from None
        raise UserError(f"no Ray cluster at {where}: {one_line(first)[:200]} (start one with `ray start --head`)") from None
    return ray


@dataclass(frozen=True)
class Cluster:
    """The cluster as it stood when the matrix began: the resources of each live node."""

    nodes: tuple[dict[str, float], ...]

    @property
    def has_gpu(self) -> bool:
        return any(n.get("GPU", 0) > 0 for n in self.nodes)

    def missing(self, needs: dict[str, float]) -> str | None:
        """Why no node can take a task that asks for ``needs`` (None: one can): Ray would keep it queued for ever."""
        if any(all(n.get(k, 0.0) >= v for k, v in needs.items()) for n in self.nodes):
            return None
        absent = [k for k, v in needs.items() if not any(n.get(k, 0.0) >= v for n in self.nodes)]
        def said(k: str) -> str:
            if k == "GPU":
                return "a GPU"
            if k == "CPU":
                return f"{needs[k]:g} CPUs"
            if k.startswith("accelerator_type:"):
                return f"a GPU of type {one_line(k.split(':', 1)[1])}"
            return f"the resource '{one_line(k)}' ({needs[k]:g})"
        what = " and ".join(said(k) for k in absent) if absent else "all of " + ", ".join(said(k) for k in needs) + " at once"
        return f"no node of the Ray cluster has {what}"


def _nodes(ray: Any) -> tuple[dict[str, float], ...]:
    """The live nodes' resources (which cells can run at all is decided from them)."""
    return tuple({str(k): float(v) for k, v in (n.get("Resources") or {}).items()} for n in ray.nodes() if n.get("Alive"))


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


def run_cell_in_worker(plan: dict[str, Any], cell_id: str, reference: bytes | None, cpus: int | None, tracker: Any) -> dict[str, Any]:
    """The Ray task's body: the cell's own process, as a local matrix runs it; its snapshot and facts back."""
    import ray

    from .matrix import read_phases

    ctx = ray.get_runtime_context()
    where = {"host": socket.gethostname(), "node_id": ctx.get_node_id(), "worker_id": ctx.get_worker_id(), "pid": os.getpid(),
             "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}
    attempt = int(ray.get(tracker.started.remote(cell_id, where["host"])))
    where["attempt"] = attempt
    # The cell's id in its folder's name: whoever looks at the node's processes can tell the cells apart.
    with tempfile.TemporaryDirectory(prefix=f"embprof-ray-{cell_id}-") as tmp:
        work = Path(tmp)
        w = plan["workload"]
        if reference is not None:  # the reference cell's vectors, from this run or an earlier one
            (work / "reference.npz").write_bytes(reference)
            w["reference"] = str(work / "reference.npz")
        elif w.get("reference"):
            w["reference"] = None  # its reference failed: the cell runs without agreement figures, and says so
        writes_reference = bool(w.get("write_reference"))
        if writes_reference:
            w["write_reference"] = str(work / "written.npz")
        # The cell's MTEB results are written here and sent back with its snapshot: the driver files them where
        # a local matrix would, so that no storage needs to be shared with the workers.
        w["results_dir"] = str(work / "results")
        plan_file, out = work / "plan.json", work / "snapshot.json"
        plan_file.write_text(json.dumps(plan), encoding="utf-8")
        # The cell's process needs nothing of the cluster's: its credentials stay with Ray.
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
        # When the worker dies (a node lost, a worker killed), so does the cell, rather than going on unwatched and
        # measuring beside its own retry: the cell's process ties itself to this one as it starts (cellproc.main).
        env[TIE_ENV] = str(os.getpid())
        if cpus is not None:
            env["OMP_NUM_THREADS"] = str(cpus)  # the threads the cell asked Ray for, not Ray's default of one
        else:
            env.pop("OMP_NUM_THREADS", None)
        with open(work / "stderr.txt", "w", encoding="utf-8") as err:
            proc = subprocess.Popen([sys.executable, "-m", "embprof.engine.cellproc", str(plan_file), str(out)],
                                    stdout=subprocess.PIPE, stderr=err, text=True, env=env, start_new_session=True)
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
                                  "snapshot": None, "reference": None, "results": {}}
        results = work / "results"
        if results.is_dir():
            result["results"] = {str(f.relative_to(results)): f.read_bytes() for f in sorted(results.rglob("*")) if f.is_file()}
        if out.is_file():
            data = json.loads(out.read_text(encoding="utf-8"))
            placement = (plan["workload"].get("placement") or {}).get("name")
            data.setdefault("environment", {})["ray"] = {**where, "retried": attempt > 1, "cpus": cpus, "placement": placement}
            result["snapshot"] = json.dumps(data, indent=1).encode("utf-8") + b"\n"
        if writes_reference and (work / "written.npz").is_file():
            result["reference"] = (work / "written.npz").read_bytes()
        return result


TIE_ENV = "EMBPROF_TIE_TO_PARENT"


def tie_to_parent(sig: int, parent_pid: int) -> None:
    """In a child, as it starts: the kernel sends it ``sig`` when its parent dies (PR_SET_PDEATHSIG), and
    if the parent is already gone it goes now. Done by the child itself, not between fork and exec: the
    parents (a Ray worker, the dashboard) run threads, and code run there could deadlock."""
    import signal

    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:
        signal.raise_signal(sig)


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
def needs_of(cell: Any, cpus: int) -> dict[str, float]:
    """What a cell asks Ray for: one GPU for a CUDA cell, ``cpus`` CPUs otherwise, and its placement's resources."""
    cuda = str(getattr(cell.plan.target, "device", "cpu")).startswith("cuda")
    needs: dict[str, float] = {"GPU": 1.0, "CPU": 1.0} if cuda else {"CPU": float(cpus)}
    placement = getattr(cell.plan.workload, "placement", None)
    if placement is not None:
        needs.update(placement.ray_needs())
    return needs


def submission_order(cells: list[Any]) -> list[Any]:
    """References first (the other cells of their model wait for their vectors), then the cells grouped by
    model: Ray packs one model's cells onto the nodes free at that moment, so a model's files are read
    on few hosts and from a warm cache there, instead of once on every host."""
    first_seen: dict[str, int] = {}
    for c in cells:
        first_seen.setdefault(c.model_key, len(first_seen))
    return sorted(cells, key=lambda c: (not c.reference, first_seen[c.model_key]))


def _absolute(plan: dict[str, Any]) -> dict[str, Any]:
    """The plan with the files it reads named from the root: a worker runs in a folder of Ray's, not the
    one embprof was started in (the files must be at the same place on every host)."""
    w, t = plan.get("workload") or {}, plan.get("target") or {}
    for key in ("data_dir", "input", "text", "results_dir"):
        if isinstance(w.get(key), str):
            w[key] = os.path.abspath(os.path.expanduser(w[key]))
    model = t.get("model")
    if isinstance(model, str) and os.path.exists(os.path.expanduser(model)):  # a local folder, not a Hub id
        t["model"] = os.path.abspath(os.path.expanduser(model))
    return plan


def _drive(ray: Any, cluster: Cluster, folder: Path, cells: list[Any], all_cells: list[Any], listener: Any,
           on_done: Callable[[Any], None], cpus: int) -> None:
    """Submit every cell, then save each snapshot as it comes back; ``on_done(cell)`` after each.

    A cell compared with a reference that runs in this matrix is submitted once that reference has
    finished, with its vectors as an argument (or without, if it failed: the cell then runs without
    agreement figures, as a local one does). Handing Ray the reference's task instead would make a
    failed reference fail every cell that waits for it."""
    from .matrix import MatrixEvent, crash_path, snapshot_path

    task = ray.remote(run_cell_in_worker)
    tracker = ray.remote(num_cpus=0)(_Tracker).remote()
    total = len(all_cells)
    index = {c.cell_id: all_cells.index(c) + 1 for c in cells}
    by_id = {c.cell_id: c for c in cells}
    pending: dict[Any, Any] = {}
    started: dict[str, float] = {}
    written_here = {c.plan.workload.write_reference for c in cells if getattr(c.plan.workload, "write_reference", None)}
    held: dict[str, list[Any]] = {}  # reference path -> the cells waiting for it

    def fail_at_once(c: Any, why: str) -> None:
        atomic_write_bytes(crash_path(folder, c.cell_id), json.dumps({"cell_id": c.cell_id, "returncode": None, "reason": why,
                                                                      "seconds": 0.0, "oom": False}).encode("utf-8"))
        on_done(c)

    def submit(c: Any, reference: bytes | None) -> None:
        w = c.plan.workload
        cuda = str(getattr(c.plan.target, "device", "cpu")).startswith("cuda")
        options: dict[str, Any] = {"max_retries": 1, "retry_exceptions": False, "num_cpus": needs_of(c, cpus)["CPU"]}
        if cuda:
            options["num_gpus"] = 1
        placement = getattr(w, "placement", None)
        if placement is not None and placement.resources:
            options["resources"] = dict(placement.resources)
        if placement is not None and placement.accelerator_type:
            options["accelerator_type"] = placement.accelerator_type
        ref = task.options(**options).remote(_absolute(c.plan.model_dump(mode="json")), c.cell_id, reference, None if cuda else cpus,
                                             tracker)
        pending[ref] = c
        listener(MatrixEvent("queued", c.cell_id, c.label, index[c.cell_id], total, "queued on the cluster"))

    def release(path: str, reference: bytes | None) -> None:
        for d in held.pop(path, []):
            submit(d, reference)

    try:  # from the first submission: whatever ends this (Ctrl-C, a fault) cancels what was submitted
        for c in submission_order(cells):
            w = c.plan.workload
            crash_path(folder, c.cell_id).unlink(missing_ok=True)
            device = str(getattr(c.plan.target, "device", "cpu"))
            why = (f"{device} names a GPU of one machine: on a Ray cluster give the device as cuda (Ray gives each CUDA cell a GPU "
                   "of its own, which it sees as cuda:0)" if device.startswith("cuda:") and device != "cuda:0" else
                   cluster.missing(needs_of(c, cpus)))
            if why is not None:  # queued, it would wait for ever: failed at once, with why, and the rest go on
                fail_at_once(c, why)
                if getattr(w, "write_reference", None):
                    written_here.discard(w.write_reference)
                    release(w.write_reference, None)
                continue
            path = getattr(w, "reference", None)
            if path and path in written_here:
                held.setdefault(path, []).append(c)
                listener(MatrixEvent("queued", c.cell_id, c.label, index[c.cell_id], total, "waits for its reference cell"))
                continue
            submit(c, Path(path).read_bytes() if path and Path(path).is_file() else None)
        while pending:
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
                vectors = _save(ray, ref, c, snapshot_path(folder, c), crash_path(folder, c.cell_id),
                                time.perf_counter() - started.get(c.cell_id, time.perf_counter()))
                on_done(c)
                if getattr(c.plan.workload, "write_reference", None):
                    release(c.plan.workload.write_reference, vectors)
    except ray.exceptions.RayError as exc:  # the head, the tracker or the connection went away, not one cell
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        raise ClusterLost(f"the Ray cluster stopped answering ({exc.__class__.__name__}: {one_line(first)[:160]}); the finished "
                          "cells are kept: run the same matrix again to go on") from None
    finally:  # Ctrl-C (KeyboardInterrupt) among them
        for ref in pending:  # what is still queued or running: cancelled, its cell's process stopped
            try:
                ray.cancel(ref)
            except Exception:
                pass


def _save(ray: Any, ref: Any, cell: Any, out: Path, crash: Path, seconds: float) -> bytes | None:
    """The cell's snapshot (or why it has none) saved; a reference cell's vectors returned."""
    try:
        result = ray.get(ref)
    except ray.exceptions.RayError as exc:
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        died = isinstance(exc, (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError))
        reason = (f"the cell's Ray worker died twice (retried once): {exc.__class__.__name__}: {one_line(first)[:200]}" if died else
                  f"Ray could not run the cell: {exc.__class__.__name__}: {one_line(first)[:200]}")
        atomic_write_bytes(crash, json.dumps({"cell_id": cell.cell_id, "returncode": None, "reason": reason, "seconds": seconds,
                                              "oom": False}).encode("utf-8"))
        return None
    for rel, data in (result.get("results") or {}).items():
        target = Path(cell.plan.workload.results_dir) / rel
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            continue  # a name that would leave the cell's results folder: not written
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, data)
    vectors = result.get("reference")
    if vectors is not None and getattr(cell.plan.workload, "write_reference", None):
        atomic_write_bytes(Path(cell.plan.workload.write_reference), vectors)
    if result.get("snapshot") is not None:
        atomic_write_bytes(out, result["snapshot"])
        return vectors
    rc = result.get("returncode")
    lines = str(result.get("stderr") or "").strip().splitlines()
    if isinstance(rc, int) and rc < 0:  # as a local cell says it
        import signal

        name = signal.Signals(-rc).name
        why = f"the cell's process was killed by {name}" + (" (the kernel's out-of-memory killer sends it)" if name == "SIGKILL" else "")
    else:
        why = lines[-1].removeprefix("embprof: error: ") if lines else f"the cell's process exited with status {rc}"
    host = result.get("where", {}).get("host", "")
    data = {"cell_id": cell.cell_id, "returncode": rc, "reason": f"{why} (on {host})" if host else why, "seconds": seconds,
            "oom": rc == -9, "ray": result.get("where")}  # where it ran, as a snapshot would say it
    atomic_write_bytes(crash, json.dumps(data).encode("utf-8"))
    return vectors


# -- the driver process ---------------------------------------------------------------------------------------
def _driver_main(address: str, folder: str, cpus: str, channel_fd: str, parent_pid: str) -> int:
    """``python -m embprof.engine.ray_cells --drive ADDRESS FOLDER CPUS FD PARENT``: connect, say what the
    cluster has, read which cells to run, run them; every message a JSON line on file descriptor FD."""
    import signal

    from .matrix import read_manifest

    channel = os.fdopen(int(channel_fd), "w", encoding="utf-8", buffering=1)

    def say(kind: str, **fields: Any) -> None:
        channel.write(json.dumps({"kind": kind, **fields}) + "\n")

    def stop(signum: int, frame: Any) -> None:
        # One stop is enough: a second signal must not cut short the cancelling of the cells' tasks.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        tie_to_parent(signal.SIGINT, int(parent_pid))  # embprof gone: stop as on Ctrl-C, cancelling the cells' tasks
        ray = connect(address)
        cluster = Cluster(_nodes(ray))
        say("cluster", nodes=list(cluster.nodes))
        line = sys.stdin.readline()
        if not line.strip():  # nothing to run after all (or embprof went away)
            return 0
        todo_ids = json.loads(line)["todo"]
        manifest = read_manifest(Path(folder))
        by_id = {c.cell_id: c for c in manifest.cells}
        todo = [by_id[cid] for cid in todo_ids]
        _drive(ray, cluster, Path(folder), todo, manifest.cells,
               lambda e: say(e.kind, cell=e.cell_id, text=e.text), lambda c: say("done", cell=c.cell_id), int(cpus))
        say("finished")
        return 0
    except KeyboardInterrupt:
        return 130
    except ClusterLost as exc:
        say("lost", text=str(exc))
        return 1
    except UserError as exc:
        say("error", text=str(exc))
        return 2
    except Exception as exc:  # Ray refusing a task's options, a full disk …: one sentence, not "the cluster was lost"
        import traceback

        traceback.print_exc()  # to ray-driver.log
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        say("error", text=f"the Ray driver failed: {exc.__class__.__name__}: {one_line(first)[:200]}")
        return 2


_EOF = object()


class RayRun:
    """embprof's side of a matrix on Ray: the driver process started, its messages read.

    ``survey()`` first (the cluster's resources decide which cells exist), then ``run()``, then
    ``close()``. A driver process that ends without saying it finished is a lost cluster; Ctrl-C (or
    the dashboard's stop) stops it with SIGINT, and it cancels what is outstanding before it exits.
    No wait here is unbounded: each looks at ``cancel`` and at whether the driver is still there."""

    WAIT_S = 30.0  # for the driver to exit once told to (it cancels its tasks first)

    def __init__(self, address: str, folder: Path, cpus: int, log_path: Path | None = None) -> None:
        import queue
        import threading

        import_ray()  # the extra's absence is one sentence, here, not a failure in the driver process
        named = os.environ.get("RAY_ADDRESS", "") if address == "auto" else address
        if address != "auto" or (":" in named and named.rpartition(":")[2].isdigit() and "://" not in named):
            _reachable(named)  # RAY_ADDRESS too: a stale one would otherwise have Ray retry for minutes
        self.folder = folder
        self.log_path = log_path or folder / "ray-driver.log"
        read_fd, write_fd = os.pipe()
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": os.environ.get("RAY_USAGE_STATS_ENABLED", "0")}
        with open(self.log_path, "ab") as log:
            # Its own session: the terminal's Ctrl-C reaches embprof, which stops the driver once, in order.
            self.proc = subprocess.Popen([sys.executable, "-m", "embprof.engine.ray_cells", "--drive", address, str(folder), str(cpus),
                                          str(write_fd), str(os.getpid())], stdin=subprocess.PIPE, stdout=log, stderr=log,
                                         pass_fds=(write_fd,), env=env, start_new_session=True)
        os.close(write_fd)
        self.messages: queue.Queue[Any] = queue.Queue()

        def read() -> None:
            try:
                with os.fdopen(read_fd, "r", encoding="utf-8") as channel:
                    for line in channel:
                        try:
                            self.messages.put(json.loads(line))
                        except ValueError:
                            continue
            finally:
                self.messages.put(_EOF)

        threading.Thread(target=read, name="embprof-ray-driver", daemon=True).start()

    def _next(self, timeout: float) -> Any:
        import queue

        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            return None

    def _wait(self) -> int:
        try:
            return self.proc.wait(timeout=self.WAIT_S)
        except subprocess.TimeoutExpired:  # stuck (Ray shutting down against a head that is gone): its tasks end with its job
            self.proc.kill()
            return self.proc.wait()

    def _ended(self) -> str:
        rc = self._wait()
        return (f"Ray's driver process ended with status {rc}" if rc >= 0 else f"Ray's driver process was killed by signal {-rc}") + \
            f"; Ray's messages are in {self.log_path}"

    def survey(self, cancel: Callable[[], bool] = lambda: False) -> Cluster:
        """What the cluster has; one sentence (UserError) if it cannot be joined; MatrixInterrupted on a stop."""
        from .matrix import MatrixInterrupted

        while True:
            if cancel():
                self.stop()
                raise MatrixInterrupted()
            msg = self._next(POLL_S)
            if msg is None:
                continue
            if isinstance(msg, dict) and msg.get("kind") == "cluster":
                return Cluster(tuple({str(k): float(v) for k, v in n.items()} for n in msg["nodes"]))
            if isinstance(msg, dict) and msg.get("kind") == "error":
                self._wait()
                raise UserError(str(msg.get("text")))
            if msg is _EOF:
                raise UserError(f"could not join the Ray cluster: {self._ended()}")

    def close(self) -> None:
        """The driver process leaves the cluster (told by the end of its input; then, if need be, as on Ctrl-C)."""
        if self.proc.poll() is not None:
            return
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.stop()

    def run(self, cells: list[Any], all_cells: list[Any], listener: Any, cancel: Callable[[], bool], on_done: Callable[[Any], None]) -> None:
        from .matrix import MatrixEvent, MatrixInterrupted

        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps({"todo": [c.cell_id for c in cells]}).encode("utf-8") + b"\n")
            self.proc.stdin.close()
        except OSError:
            pass  # it has already ended: said below, from its exit
        by_id = {c.cell_id: c for c in all_cells}
        index = {c.cell_id: i + 1 for i, c in enumerate(all_cells)}
        total = len(all_cells)
        try:
            while True:
                if cancel():
                    raise MatrixInterrupted()
                msg = self._next(POLL_S)
                if msg is None:
                    continue
                if msg is _EOF:
                    raise ClusterLost(f"the Ray cluster stopped answering ({self._ended()}); the finished cells are kept: "
                                      "run the same matrix again to go on")
                kind, cid = msg.get("kind"), str(msg.get("cell", ""))
                c = by_id.get(cid)
                if kind in ("queued", "start", "phase") and c is not None:
                    listener(MatrixEvent(kind, cid, c.label, index[cid], total, str(msg.get("text", ""))))
                elif kind == "done" and c is not None:
                    on_done(c)
                elif kind == "finished":
                    self._wait()
                    return
                elif kind == "lost":
                    self._wait()
                    raise ClusterLost(str(msg.get("text")))
                elif kind == "error":
                    self._wait()
                    raise UserError(str(msg.get("text")))
        except (KeyboardInterrupt, MatrixInterrupted):
            self.stop()
            raise MatrixInterrupted() from None

    def stop(self) -> None:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self._wait()


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "--drive":
        sys.exit(_driver_main(*sys.argv[2:]))
    sys.stderr.write("usage: python -m embprof.engine.ray_cells --drive ADDRESS FOLDER CPUS FD PARENT (started by embprof matrix --ray)\n")
    sys.exit(2)
