"""A matrix's cells on a Ray cluster: the same cells, run the same way, their snapshots saved where a
local matrix saves them.

The Ray driver is a process of its own (``python -m embprof.engine.matrix.driver --drive``), started
by embprof's matrix runner (``RayRun``) and speaking to it in JSON lines over a pipe. Ray's core ends
its driver's process outright when the node it is attached to goes away, and writes to the process's
file descriptors as it pleases; kept apart, a lost cluster is one sentence from embprof (with the
finished cells kept), the dashboard's screen is never written over, and Ray's own messages go to
``ray-driver.log`` in the matrix's folder.

In the driver, ``RayLauncher`` is the matrix's ``Launcher`` for a cluster: each cell is one Ray task
carrying its run plan, launched from a thread of its own so that Ray, not the driver, decides how
many run at once. In the worker the task launches the cell exactly as a local matrix does
(``launch.run_cell_process``: ``python -m embprof.engine.matrix.cellproc PLAN SNAPSHOT`` in a process
of its own, so a cell's import, load and memory are its own, and a crash of the model takes that
process, not the worker), telling the cell which worker and attempt it is; the cell writes that into
its snapshot itself. The task returns the snapshot's bytes and the driver writes them, unchanged,
where a local run would, then reads the cell's end back as a local launch does (``launch.settle``).
A reference cell also returns its embeddings, which reach the cells compared with it as a task
argument, so no storage needs to be shared.

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
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..files import atomic_write_bytes
from ..plan import LocalTarget
from ..text import first_line, one_line
from .folder import ClusterLost, MatrixEvent, MatrixInterrupted, MatrixListener
from .launch import (
    TIE_ENV,
    CellOutcome,
    CrashRecord,
    Place,
    ProcessRun,
    Progress,
    RayWorker,
    record_crash,
    run_cell_process,
    settle,
)
from .paths import crash_path, snapshot_path
from .spec import Cell
from .warm import WarmParent

RAY_EXTRA = "pip install 'embprof[ray]'"
DRIVER_MODULE = "embprof.engine.matrix.driver"


POLL_S = 0.5
TAIL_BYTES = 4_000  # of a cell's standard error, sent back: its last line is the reason it failed

# Ray's messages give advice in the words of Ray's own command line ("setting `--address` flag"): embprof
# has no such flag. The address advice is said as embprof takes it; a sentence naming any other flag of
# Ray's is left out (Ray's message is in ray-driver.log whole). A `ray …` command quoted as one stays.
OWN_FLAGS = ("--ray", "--ray-cpus")
_ADDRESS_ADVICE = re.compile(r"by setting (?:the )?`?--address`?\s+flag(?:\s+or\s+(?:the\s+)?`?RAY_ADDRESS`?\s+environment variable)?",
                             re.IGNORECASE)
_RAY_COMMAND = re.compile(r"`ray [^`]*`")
_FLAG = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def ray_said(exc: BaseException | str, limit: int = 200) -> str:
    """What Ray said, as one of embprof's lines quotes it: its first line, escaped, with advice only in
    embprof's own flags, cut to ``limit`` characters."""
    text = one_line(first_line(exc) if isinstance(exc, BaseException) else exc)
    text = _ADDRESS_ADVICE.sub("with --ray ADDRESS or the RAY_ADDRESS environment variable", text)
    kept = [s for s in _SENTENCE_END.split(text)
            if all(flag in OWN_FLAGS for flag in _FLAG.findall(_RAY_COMMAND.sub("", s)))]
    said = " ".join(kept) or (exc.__class__.__name__ if isinstance(exc, BaseException) else "")
    return said if len(said) <= limit else said[: limit - 1] + "…"


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
        first = first_line(exc)
        if "authentication" in (exc.__class__.__name__ + first).lower():
            raise UserError(f"the Ray cluster at {where} asks for a token this driver does not have: set RAY_AUTH_MODE=token and "
                            "RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) as the cluster's nodes have them") from None
        raise UserError(f"no Ray cluster at {where}: {ray_said(exc)} (start one with `ray start --head`)") from None
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


def live_nodes(ray: Any) -> tuple[dict[str, float], ...]:
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
@dataclass(frozen=True)
class WorkerReturn:
    """What a cell's task sends back to the driver: how its process ended, and what it wrote, as bytes
    (no storage is shared with the workers)."""

    run: ProcessRun
    snapshot: bytes | None
    reference: bytes | None  # a reference cell's vectors
    results: dict[str, bytes]  # its MTEB results, by their path under its results folder


# The worker's warm parent (``warm.py``), kept from one task to the next: a Ray worker runs many cells in turn.
_WARM: list[WarmParent] = []


def _warm_parent(env: dict[str, str]) -> WarmParent:
    """This worker's warm parent for cells with ``env``: the one it has, or a new one. The environment (the threads
    a cell asked for among it) is what the parent's libraries read as they loaded: another needs another parent.
    The parent dies with this worker (``tie``), and its cells with it."""
    if _WARM and _WARM[0].serves(env):
        return _WARM[0]
    while _WARM:
        _WARM.pop().close()
    _WARM.append(WarmParent(env, tie=os.getpid()))
    return _WARM[0]


def run_cell_in_worker(plan: dict[str, Any], cell_id: str, reference: bytes | None, cpus: int | None, tracker: Any,
                       cold: bool = False) -> WorkerReturn:
    """The Ray task's body: the cell's own process, launched as a local matrix launches it."""
    import ray

    ctx = ray.get_runtime_context()
    host = socket.gethostname()
    attempt = int(ray.get(tracker.started.remote(cell_id, host)))
    placement = (plan["workload"].get("placement") or {}).get("name")
    # What only Ray can tell: the cell's process is handed it and writes it into its snapshot itself.
    place = Place(attempt, RayWorker(ctx.get_node_id(), ctx.get_worker_id(), os.getpid(), tuple(str(g) for g in ray.get_gpu_ids()),
                                     cpus, placement))
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
        # Cancelled (ray.cancel raises KeyboardInterrupt here), the cell's process is stopped and goes too.
        run = run_cell_process(plan_file, out, lambda text: tracker.phase.remote(cell_id, text), env=env, place=place, grace_s=30.0,
                               warm=None if cold else _warm_parent(env), name=cell_id)
        results = work / "results"
        files = {str(f.relative_to(results)): f.read_bytes() for f in sorted(results.rglob("*")) if f.is_file()} if results.is_dir() else {}
        written = work / "written.npz"
        return WorkerReturn(replace(run, stderr=run.stderr[-TAIL_BYTES:]), out.read_bytes() if out.is_file() else None,
                            written.read_bytes() if writes_reference and written.is_file() else None, files)


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
def needs_of(cell: Cell, cpus: int) -> dict[str, float]:
    """What a cell asks Ray for: one GPU for a CUDA cell, ``cpus`` CPUs otherwise, and its placement's resources."""
    cuda = _device(cell).startswith("cuda")
    needs: dict[str, float] = {"GPU": 1.0, "CPU": 1.0} if cuda else {"CPU": float(cpus)}
    placement = cell.cell.placement
    if placement is not None:
        needs.update(placement.ray_needs())
    return needs


def submission_order(cells: list[Cell]) -> list[Cell]:
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


class RayLauncher:
    """The matrix's launcher on a Ray cluster, in the driver process: ``launch`` submits one cell as a Ray
    task and waits for its end. The driver launches every cell at once, each from a thread of its own;
    Ray places them. A task's start and phases reach the tracker actor, which ``pump`` (the driver's
    main thread) reads and hands to each cell's ``progress``."""

    def __init__(self, ray: Any, cluster: Cluster, folder: Path, cpus: int, cold: bool = False) -> None:
        self._ray, self._cluster, self._folder, self._cpus, self._cold = ray, cluster, folder, cpus, cold
        self._task = ray.remote(run_cell_in_worker)
        self._tracker = ray.remote(num_cpus=0)(_Tracker).remote()
        self._lock = threading.Lock()
        self._progress: dict[str, Progress] = {}
        self._started: dict[str, float] = {}
        # Reference files a reference cell of this run did not write: its cells run without them, not with
        # whatever an earlier run left there.
        self._withheld: set[str] = set()

    def refusal(self, cell: Cell) -> str | None:
        """Why no node can ever run the cell (None: one can)."""
        device = _device(cell)
        if device.startswith("cuda:") and device != "cuda:0":
            return (f"{device} names a GPU of one machine: on a Ray cluster give the device as cuda (Ray gives each CUDA cell a GPU "
                    "of its own, which it sees as cuda:0)")
        return self._cluster.missing(needs_of(cell, self._cpus))

    def launch(self, cell: Cell, progress: Progress, cancel: Callable[[], bool]) -> CellOutcome:
        crash_path(self._folder, cell.cell_id).unlink(missing_ok=True)
        why = self.refusal(cell)
        if why is not None:  # queued, it would wait for ever: failed at once, with why, and the rest go on
            self._ended(cell, wrote_reference=False)
            return record_crash(self._folder, CrashRecord(cell.cell_id, why))
        with self._lock:
            self._progress[cell.cell_id] = progress
        progress("queued", "queued on the cluster")  # before it is submitted: its start must not be said before this
        cuda = _device(cell).startswith("cuda")
        ref = self._task.options(**self._options(cell)).remote(_absolute(cell.plan.model_dump(mode="json")), cell.cell_id,
                                                               self._reference(cell), None if cuda else self._cpus, self._tracker,
                                                               self._cold)
        # Ray failing here is the cluster's fault, not the cell's: it ends the driver (the cluster lost), not just this cell.
        while not self._ray.wait([ref], timeout=POLL_S)[0]:
            if cancel():
                self._ray.cancel(ref)  # the task's process is stopped; what it measured goes with its folder
                raise MatrixInterrupted()
        try:
            back: WorkerReturn = self._ray.get(ref)
        except self._ray.exceptions.RayError as exc:  # the cell's task, not the cluster: it died on every attempt, or could not run
            self._ended(cell, wrote_reference=False)
            died = isinstance(exc, (self._ray.exceptions.WorkerCrashedError, self._ray.exceptions.NodeDiedError))
            reason = (f"the cell's Ray worker died twice (retried once): {exc.__class__.__name__}: {ray_said(exc)}" if died else
                      f"Ray could not run the cell: {exc.__class__.__name__}: {ray_said(exc)}")
            with self._lock:
                started = self._started.get(cell.cell_id)
            return record_crash(self._folder, CrashRecord(cell.cell_id, reason,
                                                          seconds=0.0 if started is None else time.perf_counter() - started))
        return self._file(cell, back)

    def pump(self) -> None:
        """The tasks' news since the last call, to each cell's ``progress``."""
        for kind, cid, text in self._ray.get(self._tracker.take.remote()):
            with self._lock:
                progress = self._progress.get(cid)
                if kind == "start":
                    self._started.setdefault(cid, time.perf_counter())
            if progress is not None:
                progress("start" if kind == "start" else "phase", text)

    def _options(self, cell: Cell) -> dict[str, Any]:
        options: dict[str, Any] = {"max_retries": 1, "retry_exceptions": False, "num_cpus": needs_of(cell, self._cpus)["CPU"]}
        if _device(cell).startswith("cuda"):
            options["num_gpus"] = 1
        placement = cell.cell.placement
        if placement is not None and placement.resources:
            options["resources"] = dict(placement.resources)
        if placement is not None and placement.accelerator_type:
            options["accelerator_type"] = placement.accelerator_type
        return options

    def _reference(self, cell: Cell) -> bytes | None:
        """The vectors the cell is compared with: from this run's reference cell (the driver starts the cell
        once that has ended) or an earlier run's; None when its reference failed."""
        path = cell.cell.reference
        if not path:
            return None
        with self._lock:
            if path in self._withheld:
                return None
        file = Path(path)
        return file.read_bytes() if file.is_file() else None

    def _ended(self, cell: Cell, wrote_reference: bool) -> None:
        written = cell.cell.write_reference
        if written and not wrote_reference:
            with self._lock:
                self._withheld.add(written)

    def _file(self, cell: Cell, back: WorkerReturn) -> CellOutcome:
        """What the task sent back, filed where a local launch would have left it; then read back as a local one is."""
        cp = cell.cell
        for rel, data in back.results.items():
            if ".." in Path(rel).parts or Path(rel).is_absolute():
                continue  # a name that would leave the cell's results folder: not written
            target = Path(cp.results_dir) / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(target, data)
        if back.reference is not None and cp.write_reference:
            atomic_write_bytes(Path(cp.write_reference), back.reference)
        self._ended(cell, wrote_reference=back.reference is not None)
        if back.snapshot is not None:
            atomic_write_bytes(snapshot_path(self._folder, cell), back.snapshot)
        return settle(self._folder, cell.cell_id, back.run)


def _device(cell: Cell) -> str:
    return cell.target.device if isinstance(cell.target, LocalTarget) else "cpu"


_EOF = object()


class RayRun:
    """embprof's side of a matrix on Ray: the driver process started, its messages read.

    ``survey()`` first (the cluster's resources decide which cells exist), then ``run()``, then
    ``close()``. A driver process that ends without saying it finished is a lost cluster; Ctrl-C (or
    the dashboard's stop) stops it with SIGINT, and it cancels what is outstanding before it exits.
    No wait here is unbounded: each looks at ``cancel`` and at whether the driver is still there."""

    WAIT_S = 30.0  # for the driver to exit once told to (it cancels its tasks first)

    def __init__(self, address: str, folder: Path, cpus: int, log_path: Path | None = None, cold: bool = False) -> None:
        import queue

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
            self.proc = subprocess.Popen([sys.executable, "-m", DRIVER_MODULE, "--drive", address, str(folder), str(cpus),
                                          str(write_fd), str(os.getpid()), "cold" if cold else "warm"], stdin=subprocess.PIPE, stdout=log, stderr=log,
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
                raise UserError(one_line(msg.get("text")))
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

    def run(self, cells: list[Cell], all_cells: list[Cell], listener: MatrixListener, cancel: Callable[[], bool],
            on_done: Callable[[CellOutcome], None]) -> None:
        """Have the driver launch ``cells``; their news to ``listener``, each one's outcome to ``on_done`` as it ends."""
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
                    on_done(CellOutcome.from_json(msg["outcome"]))
                elif kind == "finished":
                    self._wait()
                    return
                elif kind == "lost":
                    self._wait()
                    raise ClusterLost(one_line(msg.get("text")))
                elif kind == "error":
                    self._wait()
                    raise UserError(one_line(msg.get("text")))
        except (KeyboardInterrupt, MatrixInterrupted):
            self.stop()
            raise MatrixInterrupted() from None

    def stop(self) -> None:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self._wait()
