"""One row per matrix cell: what its snapshot measured, cost and quality side by side.

A row is built from a cell's saved snapshot (``row_of``), or its crash record, never from a live
process, so the table, the frontier, the export and the dashboard's Matrix view all read the same
figures. A figure the cell did not measure is None (shown "n/a"), with the reason beside it where one
is known.

Beside each cell's row is its record of inputs (``inputs/ID.json``): what the cell read, as digests of
its model's files, its tasks' data, its cost text and its plan. A matrix run again reuses a finished
cell only while those are unchanged (``why_not_reused``), and the row says why a cell was measured again.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from ..errors import UserError
from ..files import atomic_write_bytes, read_json_file
from ..plan import BUNDLED_MODEL_ID, LocalTarget, strip_credentials
from ..text import one_line
from .launch import Provenance, read_crash
from .paths import crash_path, snapshot_path
from .spec import Cell, graph_key, int8_mode

if TYPE_CHECKING:  # the digests' cache is imported when a matrix runs, not when its rows are read
    from ..targets.fingerprint import FileHashes

CellStatus = Literal["ok", "unstable", "oom", "failed", "incomplete", "pending", "running"]

# The cost axes the frontier is computed on: (field of MatrixRow, what the column says, unit).
COST_AXES: tuple[tuple[str, str, str], ...] = (
    ("p50_s", "p50 latency", "s"),
    ("peak_rss_bytes", "peak RSS", "bytes"),
    ("energy_j_per_1000", "energy per 1,000 texts", "J"),
)


class MatrixRow(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    cell_id: str
    label: str  # "all-MiniLM-L6-v2 · onnx · int8 per-channel · cpu · binary"
    order: int = 0  # the cell's place in the matrix's run order
    model: str  # as asked for (Hub id, folder or URL); the bundled model's id when none was given
    target_kind: Literal["local", "server"] = "local"
    backend: str  # torch, onnx, openvino, or the server's API (llama, openai)
    device: str | None = None  # as resolved (cpu, cuda:0); None for a server
    dtype: str | None = None  # torch weights' dtype; None for a server
    quantize: str = "none"  # weights: none or int8
    quantize_mode: str | None = None  # int8: per-channel or per-tensor
    truncate_dim: int | None = None  # None: the model's full dimension
    precision: str = "float32"  # output vectors as the scorer sees them: float32, int8, binary
    reference: bool = False  # the cell the others' agreement is measured against
    status: CellStatus = "pending"
    reason: str | None = None  # why a cell is not ok (failed, oom, unstable …)

    # -- cost -----------------------------------------------------------------------------------------
    import_s: float | None = None
    load_s: float | None = None
    export_s: float | None = None  # the ONNX export (and quantization) of this configuration; None: not exported
    export_cached: bool | None = None  # True: the export came from the cache (its time is that earlier run's)
    disk_bytes: int | None = None
    weights_bytes: int | None = None
    load_rss_delta_bytes: int | None = None  # RSS after the load phase minus RSS before it
    cost_workload: str | None = None  # what was timed: "speed text (43 paragraphs), batch 32"
    items: int | None = None  # texts per timed call
    calls: int | None = None  # timed calls the percentiles are over
    p50_s: float | None = None
    p95_s: float | None = None
    items_per_s: float | None = None  # items / p50
    peak_rss_bytes: int | None = None  # the kernel's high-water mark for the cell's process (VmHWM)
    peak_gpu_bytes: int | None = None  # NVML: this process's GPU memory, peak sampled
    torch_reserved_bytes: int | None = None  # torch.cuda.max_memory_reserved
    torch_allocated_bytes: int | None = None  # torch.cuda.max_memory_allocated
    energy_j_per_1000: float | None = None
    energy_source: str | None = None  # "nvml total energy" or "rapl package"
    energy_why: str | None = None  # why energy is n/a ("no energy counter")

    # -- quality ----------------------------------------------------------------------------------------
    nonfinite: int | None = None  # NaN or infinite values in the cell's embeddings
    scores: dict[str, float | None] = {}  # task -> mteb's main score (None: the task failed or was not scored)
    quality: float | None = None  # the mean of the main scores, when every task has one
    agreement_mean: float | None = None  # cosine per text against the reference cell, mean
    agreement_min: float | None = None
    agreement_why: str | None = None
    agrees_1e4: bool | None = None  # float32 onnx/openvino: every text's cosine with torch within 1e-4 of 1
    topk_overlap: float | None = None  # mean |top-k ∩ reference top-k| / k over the similarity queries
    top_k: int | None = None
    top1_correct: int | None = None  # queries whose expected document ranked first
    queries: int | None = None
    calibration: str | None = None  # int8 output: how the per-dimension ranges were chosen
    snapshot: str | None = None  # the cell's snapshot file, relative to the matrix folder
    beside: str | None = None  # other work on the machine during the cell (its costs may be inflated); None: none seen
    host: str | None = None  # where a cluster ran it (Ray); None: here
    start: Literal["warm", "cold"] | None = None  # forked from the warm parent, or a fresh interpreter; None: not recorded
    ran_again: str | None = None  # why it was measured again rather than reused: its inputs had changed since it last ran


class Frontier(BaseModel):
    """Which cells are Pareto-optimal for quality (higher is better) against each cost axis (lower
    is better). An axis on which fewer than one cell has both figures has no frontier: ``why`` says so."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    axis: str  # a COST_AXES field
    cells: tuple[str, ...] = ()  # cell ids on the frontier, cheapest first
    considered: tuple[str, ...] = ()  # cell ids with both figures
    why: str | None = None  # no frontier: why (e.g. "no energy counter on this machine")


# -- rows from a matrix's folder -------------------------------------------------------------------------------
BESIDE_CPU_PERCENT = 50.0  # others' mean CPU during a cell, in percent of one core, above which the cell is flagged


def beside_other_work(env: Mapping[str, Any]) -> str | None:
    """Why a cell's costs may be inflated by other work on its machine (``cellproc.others_during_run``); None if none was seen."""
    others = env.get("others_during_run")
    if not isinstance(others, dict):
        return None
    why = []
    cpu = others.get("cpu_percent_mean")
    if isinstance(cpu, (int, float)) and cpu > BESIDE_CPU_PERCENT:
        why.append(f"other processes used {cpu:.0f}% of a core on average")
    gpu = others.get("gpu_mib")
    if isinstance(gpu, (int, float)) and gpu > 0:
        n = len(others.get("gpu_processes") or [])
        why.append(f"{n} other process{'es' if n != 1 else ''} held {gpu:,.0f} MiB of GPU memory")
    return "; ".join(why) or None


def finished(row: MatrixRow, retry_failed: bool = False) -> bool:
    """A cell with a finished snapshot (or a recorded crash) is not run again; an interrupted one is."""
    return row.status in ("ok", "unstable") or (row.status in ("failed", "oom") and not retry_failed)


@dataclass(frozen=True)
class CellColumns:
    """The columns of a row that say which cell it is: from the cell's plan and the manifest, known
    before the cell runs, so a pending or crashed cell's row has them too."""

    cell_id: str
    label: str
    order: int
    reference: bool
    precision: str
    top_k: int
    model: str
    target_kind: Literal["local", "server"]
    backend: str
    device: str | None
    dtype: str | None
    quantize: str = "none"
    quantize_mode: str | None = None
    truncate_dim: int | None = None
    export_s: float | None = None
    export_cached: bool | None = None

    @classmethod
    def of(cls, cell: Cell, exports: Mapping[str, Any], order: int) -> CellColumns:
        t, cp = cell.target, cell.cell
        if not isinstance(t, LocalTarget):
            return cls(cell.cell_id, cell.label, order, cell.reference, cp.precision, cp.top_k, strip_credentials(t.url), "server", t.api,
                       None, None)
        key = graph_key(t)
        found = exports.get(key) if key is not None else None
        export = found if isinstance(found, dict) and "seconds" in found else None  # None: not exported, or its export failed
        return cls(cell.cell_id, cell.label, order, cell.reference, cp.precision, cp.top_k, t.model or BUNDLED_MODEL_ID, "local",
                   t.backend, t.device, t.dtype, t.quantize, int8_mode(t), t.truncate_dim,
                   None if export is None else export["seconds"], None if export is None else bool(export.get("cached")))

    def row(self, status: CellStatus, reason: str | None = None, measured: Measured | None = None) -> MatrixRow:
        return MatrixRow(**asdict(self), **(asdict(measured) if measured is not None else {}), status=status, reason=reason)


@dataclass(frozen=True)
class Measured:
    """The columns of a row read from the cell's snapshot (MatrixRow says what each means)."""

    snapshot: str
    beside: str | None = None
    host: str | None = None
    start: Literal["warm", "cold"] | None = None
    disk_bytes: int | None = None
    weights_bytes: int | None = None
    import_s: float | None = None
    load_s: float | None = None
    load_rss_delta_bytes: int | None = None
    peak_rss_bytes: int | None = None
    peak_gpu_bytes: int | None = None
    torch_reserved_bytes: int | None = None
    torch_allocated_bytes: int | None = None
    cost_workload: str | None = None
    items: int | None = None
    calls: int | None = None
    p50_s: float | None = None
    p95_s: float | None = None
    items_per_s: float | None = None
    energy_j_per_1000: float | None = None
    energy_source: str | None = None
    energy_why: str | None = None
    nonfinite: int | None = None
    agreement_mean: float | None = None
    agreement_min: float | None = None
    agreement_why: str | None = None
    agrees_1e4: bool | None = None
    topk_overlap: float | None = None
    top1_correct: int | None = None
    queries: int | None = None
    calibration: str | None = None
    scores: dict[str, float | None] = field(default_factory=dict)  # an unstable cell's are not shown: they score NaNs
    quality: float | None = None


def _mib_bytes(mib: float | None) -> int | None:
    return None if mib is None else int(mib * 2**20)


def row_of(folder: Path, cell: Cell, exports: Mapping[str, Any], order: int = 0) -> MatrixRow:
    """A cell's row, from its snapshot alone (or its crash record, or nothing yet: pending), with why it
    was measured again if its record of inputs says so."""
    row = _measured_row(folder, cell, exports, order)
    try:
        record = read_inputs(folder, cell.cell_id)
    except UserError:
        record = None  # a damaged record: the next run says so, and measures the cell again
    if record is None or record.ran_again is None or row.status == "pending":
        return row
    return row.model_copy(update={"ran_again": record.ran_again})


def _measured_row(folder: Path, cell: Cell, exports: Mapping[str, Any], order: int) -> MatrixRow:
    from ..results import CellResult, KernelCounters, MtebTask
    from ..snapshot import load_head

    columns = CellColumns.of(cell, exports, order)
    snap_file = snapshot_path(folder, cell)
    if not snap_file.is_file():
        if not crash_path(folder, cell.cell_id).is_file():
            return columns.row("pending")
        try:
            record = read_crash(folder, cell.cell_id)
        except UserError as exc:  # a damaged record: the cell counts as not run, and runs again
            return columns.row("incomplete", f"{exc}; runs again next time")
        return columns.row("oom" if record.oom else "failed", record.reason)
    try:
        snap = load_head(snap_file)  # a row reads the summary, never the events
    except UserError as exc:
        return columns.row("incomplete", f"{exc}; runs again next time")
    t, cp, s, facts = cell.target, cell.cell, snap.summary, snap.target
    if isinstance(t, LocalTarget):
        columns = replace(columns, device=facts.device_resolved or t.device)
    phases = {p.name: p for p in s.phases}
    load_phase = phases.get("load")
    load_rss_delta = None
    if load_phase is not None:
        peak, before = load_phase.peaks.get("rss_mib"), load_phase.rss_before_mib
        if peak is not None and before is not None:
            load_rss_delta = int((peak - before) * 2**20)
    rss = s.peaks.get("rss_mib" if isinstance(t, LocalTarget) else "server_rss_mib")
    gpu = s.peaks.get("gpu_process_mib")
    found_kc, found_res = s.results.get("kernel_counters"), s.results.get("cell")
    kc = found_kc if isinstance(found_kc, KernelCounters) else None
    res = found_res if isinstance(found_res, CellResult) else None
    unstable = res is not None and res.status == "unstable"
    scores: dict[str, float | None] = {}
    for name in cp.tasks:
        r = s.results.get(f"mteb:{name}")
        scores[name] = r.main_score if isinstance(r, MtebTask) and r.status == "ok" else None
    scored = not unstable and bool(scores) and all(v is not None for v in scores.values())
    where = Provenance.of_environment(snap.environment)
    start = snap.environment.get("cell_start")
    warm = start.get("warm") if isinstance(start, dict) else None
    measured = Measured(
        snapshot=str(snap_file.relative_to(folder)),
        beside=beside_other_work(snap.environment),
        # Where a cluster ran it; a cell run here says nothing (its host is the matrix's own).
        host=None if where is None or where.worker is None else where.host + (" (retried)" if where.attempt > 1 else ""),
        start=None if not isinstance(warm, bool) else "warm" if warm else "cold",
        disk_bytes=facts.disk_bytes, weights_bytes=facts.weights_bytes,
        # A warm cell's libraries were imported by its parent, once for every cell: not this cell's import time.
        import_s=phases["import"].duration_s if "import" in phases and warm is not True else None,
        load_s=None if load_phase is None else load_phase.duration_s,
        load_rss_delta_bytes=load_rss_delta,
        peak_rss_bytes=None if rss is None else _mib_bytes(rss.counter if rss.counter is not None else rss.sampled),
        peak_gpu_bytes=None if gpu is None else _mib_bytes(gpu.sampled),
        torch_reserved_bytes=None if kc is None else _mib_bytes(kc.torch_max_memory_reserved_mib),
        torch_allocated_bytes=None if kc is None else _mib_bytes(kc.torch_max_memory_allocated_mib),
        cost_workload=None if res is None else res.cost_workload,
        items=None if res is None else res.items,
        calls=None if res is None else res.stats.count,
        p50_s=None if res is None else res.stats.p50_s,
        p95_s=None if res is None else res.stats.p95_s,
        items_per_s=None if res is None else res.items_per_s,
        energy_j_per_1000=None if res is None else res.energy_j_per_1000,
        energy_source=None if res is None else res.energy_source,
        energy_why=None if res is None else res.energy_why,
        nonfinite=None if res is None else res.nonfinite,
        agreement_mean=None if res is None else res.agreement_mean,
        agreement_min=None if res is None else res.agreement_min,
        agreement_why=None if res is None else res.agreement_why,
        agrees_1e4=None if res is None else res.agrees_1e4,
        topk_overlap=None if res is None else res.topk_overlap,
        top1_correct=None if res is None else res.top1_correct,
        queries=None if res is None else res.queries,
        calibration=None if res is None else res.calibration,
        scores={} if unstable else scores,
        quality=sum(v for v in scores.values() if v is not None) / len(scores) if scored else None,
    )
    if unstable:
        return columns.row("unstable", f"{measured.nonfinite} NaN or infinite values: not scored", measured)
    if snap.status == "complete":
        return columns.row("ok", measured=measured)
    if snap.status == "incomplete":
        return columns.row("incomplete", "stopped before it finished; runs again next time", measured)
    err = s.errors[0] if s.errors else None
    oom = err is not None and err.error_kind == "oom"
    return columns.row("oom" if oom else "failed", (err.message if err is not None else "") or "failed", measured)


# -- what a cell's measurement depended on ---------------------------------------------------------------------
# A finished cell is reused only while what it read is what it read then: its model's files, its tasks' data,
# its cost text and its plan, each kept as a digest in the cell's record of inputs (``inputs/ID.json``), written
# as the cell ends. A cell with no such record (a folder from before these records) cannot be checked, and is
# measured again; so is one whose inputs cannot be fingerprinted now (a Hub model not in the local cache).
INPUTS_VERSION: Literal[1] = 1
INPUTS_MAX_BYTES = 1024 * 1024
HASHES_NAME = "file-hashes.json"  # beside the records: the files' digests by their stat, so unchanged weights are not hashed again
# The inputs, in the order a reason names them: (field of CellInputs, what a reason calls it).
INPUT_NAMES: tuple[tuple[str, str], ...] = (("model", "model files"), ("tasks", "task data"), ("cost_text", "cost text"), ("plan", "plan"))
NO_RECORD = "recorded before fingerprints: what it ran on cannot be checked"


def inputs_path(folder: Path, cid: str) -> Path:
    return folder / "inputs" / f"{cid}.json"


def hashes_path(folder: Path) -> Path:
    return folder / "inputs" / HASHES_NAME


@dataclass(frozen=True)
class Fingerprint:
    """One input as a digest; None when it cannot be checked, and ``why`` says why."""

    digest: str | None
    why: str | None = None

    def to_json(self) -> dict[str, str | None]:
        return {"digest": self.digest, "why": self.why}

    @classmethod
    def from_json(cls, data: object) -> Fingerprint:
        if not isinstance(data, dict) or not isinstance(data.get("digest"), (str, type(None))):
            raise ValueError("not a fingerprint")
        why = data.get("why")
        return cls(data["digest"], why if isinstance(why, str) else None)


@dataclass(frozen=True)
class CellInputs:
    """What a cell reads, fingerprinted (see ``fingerprint_inputs``)."""

    model: Fingerprint
    tasks: Fingerprint
    cost_text: Fingerprint
    plan: Fingerprint

    def changed_from(self, before: CellInputs) -> tuple[str, ...]:
        """The inputs (INPUT_NAMES' fields) whose digest differs from ``before``'s, where both could be taken."""
        return tuple(key for key, _ in INPUT_NAMES
                     if getattr(before, key).digest is not None and getattr(before, key).digest != getattr(self, key).digest)


@dataclass(frozen=True)
class InputsRecord:
    """A cell's record of inputs: what it read, as it ended; what changed while it ran (its figures then
    belong to no one state of its files); and why this run measured it again, if it did."""

    inputs: CellInputs
    changed_while_running: tuple[str, ...] = ()
    ran_again: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"inputs_version": INPUTS_VERSION, **{key: getattr(self.inputs, key).to_json() for key, _ in INPUT_NAMES},
                "changed_while_running": list(self.changed_while_running), "ran_again": self.ran_again}


def write_inputs(folder: Path, cid: str, record: InputsRecord) -> None:
    atomic_write_bytes(inputs_path(folder, cid), (json.dumps(record.to_json(), indent=1) + "\n").encode("utf-8"))


def read_inputs(folder: Path, cid: str) -> InputsRecord | None:
    """A cell's record of inputs; None if it has none; UserError if the file is damaged."""
    path = inputs_path(folder, cid)
    if not path.is_file():
        return None
    data = read_json_file(path, "cell's record of inputs", INPUTS_MAX_BYTES)
    try:
        if not isinstance(data, dict) or data.get("inputs_version") != INPUTS_VERSION:
            raise ValueError("not a record this embprof reads")
        inputs = CellInputs(**{key: Fingerprint.from_json(data.get(key)) for key, _ in INPUT_NAMES})
        changed = data.get("changed_while_running") or []
        ran_again = data.get("ran_again")
        return InputsRecord(inputs, tuple(str(c) for c in changed if c in dict(INPUT_NAMES)) if isinstance(changed, list) else (),
                            ran_again if isinstance(ran_again, str) else None)
    except ValueError as exc:
        raise UserError(f"the record of inputs '{one_line(path)}' is damaged ({exc})") from None


def why_not_reused(record: InputsRecord | None, now: CellInputs) -> str | None:
    """Why a finished cell must be measured again, in one sentence; None: what it read is unchanged."""
    if record is None:
        return NO_RECORD
    names = dict(INPUT_NAMES)
    reasons: list[str] = []
    if record.changed_while_running:
        reasons.append(f"its {' and '.join(names[k] for k in record.changed_while_running)} changed while it ran")
    for key, what in INPUT_NAMES:
        was, found = getattr(record.inputs, key), getattr(now, key)
        if key in record.changed_while_running:
            continue
        if found.digest is None:
            reasons.append(f"its {what} cannot be checked ({found.why or 'unreadable'})")
        elif was.digest is None:
            reasons.append(f"its {what} could not be checked when it ran ({was.why or 'unreadable'})")
        elif was.digest != found.digest:
            reasons.append(f"its {what} changed since it ran")
    return "; ".join(reasons) or None


def _sha256(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode("utf-8", "surrogateescape")).hexdigest()


def _folder_may_hold(task: str, name: str) -> bool:
    """Whether a folder of this name under --data-dir may be the task's (``mteb_data.folder_candidates``:
    the name, lowered, stripped to letters and digits, or that less the task type's suffix). Read
    without importing mteb for the task's type: a folder taken for a task it is not only costs a rerun."""
    plain = re.sub(r"[^0-9a-z]", "", task.lower())
    return name in (task, task.lower()) or (re.fullmatch(r"[0-9a-z]+", name) is not None and plain.startswith(name))


class Fingerprints:
    """The inputs of a matrix's cells, each worked out once per pass (cells share a model, tasks and a text).

    The files' digests come from ``hashes`` (kept in the matrix's folder), so a model's weights are read
    again only once they have changed."""

    def __init__(self, folder: Path, hashes: FileHashes) -> None:
        self.folder = folder
        self.hashes = hashes
        self._models: dict[str | None, Fingerprint] = {}
        self._tasks: dict[tuple[tuple[str, ...], str | None], Fingerprint] = {}
        self._texts: dict[tuple[str, str | None, str | None], Fingerprint] = {}

    def of(self, cell: Cell) -> CellInputs:
        t, cp = cell.target, cell.cell
        if isinstance(t, LocalTarget):
            if t.model not in self._models:
                self._models[t.model] = self._model(t.model)
            model = self._models[t.model]
        else:
            # A server's model files are the server's own: what is asked of it (URL, model name) is in the plan.
            model = Fingerprint(_sha256("served by", strip_credentials(t.url)))
        tasks_key = (cp.tasks, cp.data_dir)
        if tasks_key not in self._tasks:
            self._tasks[tasks_key] = self._task_data(cp.tasks, cp.data_dir)
        text_key = (cp.cost, cp.text, cp.input)
        if text_key not in self._texts:
            self._texts[text_key] = self._cost_text(cp.cost, cp.text, cp.input)
        return CellInputs(model, self._tasks[tasks_key], self._texts[text_key], self._plan(cell))

    def _model(self, name: str | None) -> Fingerprint:
        """The files sentence-transformers loads: the folder's, or the Hub snapshot's in this machine's cache."""
        from ..files import expand_path
        from ..targets import bundled_model_dir, model_folder
        from ..targets.fingerprint import NOT_LOADED

        folder: Path | None
        if name is None:
            folder = Path(bundled_model_dir())
        else:
            try:
                path: Path | None = expand_path(name, "model folder")
            except UserError:
                path = None
            folder = path if path is not None and path.is_dir() else model_folder(name)
        if folder is None:
            return Fingerprint(None, f"'{one_line(name)}' is not a folder here, nor in this machine's Hugging Face cache")
        try:
            return Fingerprint(self.hashes.tree(folder, NOT_LOADED).digest)
        except OSError as exc:
            return Fingerprint(None, f"its files cannot be read: {one_line(exc.strerror or exc)}")

    def _task_data(self, tasks: tuple[str, ...], data_dir: str | None) -> Fingerprint:
        """Each task's local folders under --data-dir by their files; a task read from the Hub by the mteb that pins
        its dataset's revision; a speed task by its text."""
        from ..files import expand_path
        from ..mteb_data import SPEED_TASKS
        from ..speedtext import resolve_speed_text
        from ..versions import library_version

        parts: list[str] = []
        folders: list[Path] = []
        if data_dir is not None:
            try:
                root = expand_path(data_dir, "data folder")
                folders = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
            except (UserError, OSError):
                return Fingerprint(None, f"the data folder '{one_line(data_dir)}' cannot be read")
        try:
            for task in tasks:
                if task in SPEED_TASKS:
                    parts.append(f"{task}: speed text {resolve_speed_text(None).sha256}")
                    continue
                mine = [d for d in folders if _folder_may_hold(task, d.name)]
                parts.extend(f"{task}: {d.name} {self.hashes.tree(d).digest}" for d in mine)
                if not mine:
                    parts.append(f"{task}: the Hub's data, as mteb {library_version('mteb')} pins it")
        except UserError as exc:
            return Fingerprint(None, str(exc))
        except OSError as exc:
            return Fingerprint(None, f"its files cannot be read: {one_line(exc.strerror or exc)}")
        return Fingerprint(_sha256(*parts))

    def _cost_text(self, cost: str, text: str | None, lines: str | None) -> Fingerprint:
        from ..files import expand_path
        from ..speedtext import resolve_speed_text

        try:
            if cost == "speed":
                return Fingerprint(resolve_speed_text(text).sha256)
            assert lines is not None  # the plan's own check: cost "encode" names its file
            return Fingerprint(self.hashes.digest(expand_path(lines, "cost input")))
        except UserError as exc:
            return Fingerprint(None, str(exc))
        except OSError as exc:
            return Fingerprint(None, f"'{one_line(lines)}' cannot be read: {one_line(exc.strerror or exc)}")

    def _plan(self, cell: Cell) -> Fingerprint:
        """The plan's canonical JSON, its files in the matrix's folder named from the folder: a folder moved or
        named another way is the same plan."""
        data = json.loads(cell.plan.model_dump_json())
        workload = data.get("workload", {})
        for key in ("results_dir", "reference", "write_reference"):
            value = workload.get(key)
            if isinstance(value, str):
                try:
                    workload[key] = Path(value).relative_to(self.folder).as_posix()
                except ValueError:
                    pass
        return Fingerprint(_sha256(json.dumps(data, sort_keys=True)))
