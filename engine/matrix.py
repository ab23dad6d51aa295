"""A matrix of runs: models × backends × weights × output precision × dimensions × devices, and
servers, each cell measured for cost and quality in its own process, with the frontier over them.

The matrix is data (``MatrixSpec``, from the command line or a TOML/YAML file). ``expand`` turns it
into cells, each a ``RunPlan`` with a ``CellPlan`` workload, and says for every combination it drops
why; ``run_matrix`` runs the cells that have no snapshot yet, each in a fresh process (allocator
state and imports do not leak from one cell into the next), interleaved across models so that a
machine's drift does not favour one, and saves each cell's snapshot in the matrix's folder. The
table and the frontier are then computed from those snapshots alone (``rows``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_serializer, field_validator

from .errors import UserError
from .text import one_line
from .files import MAX_JSON_BYTES, atomic_write_bytes, ensure_writable_dir, expand_path, folder_lock, json_depth_exceeds, read_file_bytes, read_json_file
from .matrix_rows import MatrixRow
from .plan import (
    BUNDLED_MODEL_ID,
    CellPlan,
    LocalTarget,
    Placement,
    PRECISIONS,
    Recording,
    RunPlan,
    ServerTarget,
    strip_credentials,
)

MATRIX_VERSION: Literal[1] = 1
BACKENDS = ("torch", "onnx", "openvino")
QUANTIZE = ("none", "int8")


class ServerCell(BaseModel):
    """An embedding server in the matrix: a GGUF on llama-server, or any OpenAI-compatible server."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str
    api: Literal["llama", "openai"] = "llama"
    name: str | None = None  # how the table names it ("minilm q8_0"); default: the URL
    of: str | None = None  # the model it serves ("bundled", a Hub id or folder): its agreement is against that model's reference
    server_model: str | None = None
    api_key_env: str | None = None
    prompts_from: str | None = None

    @field_serializer("url")
    def _no_credentials(self, url: str) -> str:
        """The manifest and --print-spec never hold a URL's user:password@ (a plan's URL does not either)."""
        return strip_credentials(url)


class MatrixSpec(BaseModel):
    """What a matrix measures. Lists are the axes; every combination of the local axes is a cell."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    matrix_version: Literal[1] = MATRIX_VERSION
    models: tuple[str, ...] = ("bundled",)  # Hub ids or folders; "bundled": the bundled all-MiniLM-L6-v2
    devices: tuple[str, ...] = ("cpu",)
    dtypes: tuple[Literal["float32", "float16", "bfloat16"], ...] = ("float32",)
    backends: tuple[Literal["torch", "onnx", "openvino"], ...] = ("torch",)
    quantize: tuple[Literal["none", "int8"], ...] = ("none",)
    quantize_mode: Literal["per-channel", "per-tensor"] = "per-channel"
    truncate_dims: tuple[int | None, ...] = (None,)  # None: the model's full dimension ("full")
    precisions: tuple[Literal["float32", "int8", "binary"], ...] = ("float32",)
    servers: tuple[ServerCell, ...] = ()
    # Chosen cells instead of every combination: each names the settings it changes; the rest are
    # the first value of each axis ({"backend": "onnx", "quantize": "int8"}).
    cells: tuple[dict[str, Any], ...] = ()
    cost: Literal["speed", "encode"] = "speed"
    cost_input: str | None = None  # cost "encode": the file of lines
    text: str | None = None  # cost "speed": the_ugly_duckling.txt (default: $EMBPROF_SPEED_TEXT, the cache, a checked download)
    loops: int = 10
    batch_size: int = 32
    tasks: tuple[str, ...] = ("STS16", "JSTS")
    data_dir: str | None = None
    top_k: int = 3
    energy_min_window_s: float = 1.0
    sample_hz: float = 10.0
    trust_remote_code: bool = False
    # Hosts or GPU types of a Ray cluster: every combination runs once on each (an axis), or a chosen
    # cell names its own. Empty: a cell runs wherever there is room, as on one machine.
    placements: tuple[Placement, ...] = ()

    @field_validator("truncate_dims", mode="before")
    @classmethod
    def _full(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return tuple(None if v in (None, "full", "none", 0) else v for v in value)
        return value

    @field_validator("models", "devices", "dtypes", "backends", "quantize", "precisions", "truncate_dims", "tasks", mode="after")
    @classmethod
    def _no_repeats(cls, value: tuple[Any, ...]) -> tuple[Any, ...]:
        if len(set(value)) != len(value):
            raise ValueError("a value is given twice")
        return value

    def to_json(self) -> str:
        return self.model_dump_json(indent=1) + "\n"


def validate_spec(data: Any, where: str = "") -> MatrixSpec:
    try:
        spec = MatrixSpec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(x) for x in first.get("loc", ()))
        prefix = f"{where}: " if where else ""
        msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        raise UserError(f"{prefix}matrix field '{one_line(loc)}': {one_line(msg)}") from None
    allowed = {"model", "device", "dtype", "backend", "quantize", "quantize_mode", "truncate_dim", "precision", "placement"}
    names = [p.name for p in spec.placements]
    if len(set(names)) != len(names):
        raise UserError("matrix field 'placements': a placement's name is given twice")
    for chosen in spec.cells:
        if "placement" in chosen and chosen["placement"] not in names:
            raise UserError(f"a cell names placement '{one_line(chosen['placement'])}', which the matrix does not define"
                            + (f" (it defines {', '.join(names)})" if names else " (give it under [[placements]])"))
        unknown = sorted(set(chosen) - allowed)
        if unknown:
            raise UserError(f"a cell names '{unknown[0]}': a cell sets {', '.join(sorted(allowed))}")
        if chosen.get("precision", "float32") not in PRECISIONS:
            raise UserError(f"a cell's precision is float32, int8 or binary, not '{chosen['precision']}'")
        dim = chosen.get("truncate_dim")
        if dim is not None and (not isinstance(dim, int) or isinstance(dim, bool) or dim < 1):
            raise UserError(f"a cell's truncate_dim is a positive number of dimensions, not '{dim}'")
    if not spec.models and not spec.servers:
        raise UserError("the matrix has no model and no server: give --model or --server")
    if spec.models:  # an empty axis would silently make no cell of any model
        for axis, values in (("devices", spec.devices), ("dtypes", spec.dtypes), ("backends", spec.backends), ("quantize", spec.quantize),
                             ("truncate_dims", spec.truncate_dims), ("precisions", spec.precisions)):
            if not values:
                raise UserError(f"matrix field '{axis}' is empty: give at least one value (or leave it out for the default)")
    for d in spec.truncate_dims:
        if isinstance(d, bool) or (d is not None and d < 1):
            raise UserError(f"--truncate-dim takes full or a positive number of dimensions, not {one_line(d)}")
    # One cell's plan checks the rest (loops, batch, top-k, tasks …), once, before anything runs.
    CellPlan(cost=spec.cost, input=spec.cost_input, text=spec.text, loops=spec.loops, batch_size=spec.batch_size, tasks=spec.tasks,
             data_dir=spec.data_dir, top_k=spec.top_k, energy_min_window_s=spec.energy_min_window_s)
    Recording(sample_hz=spec.sample_hz)
    return spec


def load_spec(path: str) -> MatrixSpec:
    """A matrix from a TOML or YAML file (the same fields as ``--print-spec`` writes, axes as lists)."""
    p = expand_path(path, "matrix file")
    suffix = p.suffix.lower()
    if suffix == ".json":
        data: Any = read_json_file(path, "matrix file")
        path = one_line(path)
    else:
        try:
            raw = read_file_bytes(path, "matrix file", MAX_JSON_BYTES).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UserError(f"matrix file '{one_line(path)}' is not UTF-8 text (undecodable byte at offset {exc.start})") from None
        path = one_line(path)
    try:
        if suffix == ".toml":
            import tomllib

            data = tomllib.loads(raw)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(raw)  # safe_load: a YAML tag never constructs an object or runs anything
        elif suffix == ".json":
            pass
        else:
            raise UserError(f"matrix file '{path}' must end in .toml, .yaml, .yml or .json")
    except UserError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        raise UserError(f"matrix file '{path}' is not valid {suffix.lstrip('.').upper()}: {one_line(first)}") from None
    if json_depth_exceeds(data):
        raise UserError(f"matrix file '{path}' is nested too deeply to be a matrix")
    if not isinstance(data, dict):
        raise UserError(f"matrix file '{path}' does not hold a matrix (a table of fields)")
    # Files name the axes in the singular or the plural, as the command line's options do.
    singular = {"cell": "cells", "model": "models", "device": "devices", "dtype": "dtypes", "backend": "backends", "precision": "precisions",
                "truncate_dim": "truncate_dims", "server": "servers", "task": "tasks", "placement": "placements"}
    data = {singular.get(k.replace("-", "_"), k.replace("-", "_")): v for k, v in data.items()}
    for key in ("models", "devices", "dtypes", "backends", "quantize", "precisions", "truncate_dims", "tasks"):
        if isinstance(data.get(key), (str, int)):
            data[key] = [data[key]]
    if isinstance(data.get("servers"), (str, dict)):
        data["servers"] = [data["servers"]]
    if isinstance(data.get("placements"), dict):
        data["placements"] = [data["placements"]]
    if isinstance(data.get("servers"), list):
        data["servers"] = [{"url": s} if isinstance(s, str) else s for s in data["servers"]]
    return validate_spec(data, f"matrix file '{path}'")


# -- cells ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    cell_id: str
    label: str
    model_key: str  # cells of one model share a reference and warm files
    plan: RunPlan
    reference: bool = False
    added: str | None = None  # why the matrix added this cell (a reference no combination gave)

    @property
    def target(self) -> LocalTarget | ServerTarget:
        return self.plan.target

    @property
    def cell(self) -> CellPlan:
        assert isinstance(self.plan.workload, CellPlan)
        return self.plan.workload


@dataclass(frozen=True)
class Dropped:
    label: str
    reason: str


@dataclass
class Expansion:
    cells: list[Cell] = field(default_factory=list)  # in run order
    dropped: list[Dropped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _model_arg(model: str) -> str | None:
    return None if model == "bundled" else model


def model_key(model: str | None) -> str:
    name = model or BUNDLED_MODEL_ID
    short = Path(name.rstrip("/")).name or name
    digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:6]
    return f"{_slug(short)}-{digest}"


def _slug(text: str) -> str:
    out = "".join(c if c.isalnum() or c in "-_." else "-" for c in text)
    return out.strip("-")[:40] or "model"


def short_model(model: str | None) -> str:
    name = model or BUNDLED_MODEL_ID
    return Path(name.rstrip("/")).name or name


def int8_mode(target: LocalTarget) -> str | None:
    """The int8 weight scales that apply: ONNX Runtime's choice; OpenVINO's NNCF has only per-channel."""
    return target.quantize_mode if target.quantize == "int8" and target.backend == "onnx" else None


def _label(model: str | None, backend: str, weights: list[str], device: str, dim: int | None, precision: str) -> str:
    parts = [short_model(model), backend, *weights, device]
    if dim is not None:
        parts.append(f"dim {dim}")
    if precision != "float32":
        parts.append(f"{precision} vectors")
    return " · ".join(parts)


def label_of(target: LocalTarget | ServerTarget, precision: str, server_name: str | None = None,
             placement: Placement | None = None) -> str:
    if placement is not None:
        return label_of(target, precision, server_name) + f" @ {placement.name}"
    if isinstance(target, ServerTarget):
        parts = [server_name or strip_credentials(target.url), target.api] + ([f"{precision} vectors"] if precision != "float32" else [])
        return " · ".join(parts)
    mode = int8_mode(target)
    weights = target.dtype if target.quantize == "none" else (f"int8 {mode}" if mode else "int8 weights")
    return _label(target.model, target.backend, [weights], target.device, target.truncate_dim, precision)


def _cell_id(target: LocalTarget | ServerTarget, precision: str, spec: MatrixSpec, placement: Placement | None = None) -> str:
    # What makes a cell a different measurement; the folder's paths do not.
    ident: dict[str, Any] = {"target": target.model_dump(mode="json"), "precision": precision, "cost": spec.cost, "cost_input": spec.cost_input,
                             "text": spec.text, "loops": spec.loops, "batch": spec.batch_size, "tasks": list(spec.tasks),
                             "data_dir": spec.data_dir, "top_k": spec.top_k}
    if placement is not None:  # only when pinned, so that the cells of every matrix made before keep their ids
        ident["placement"] = placement.model_dump(mode="json")
    return hashlib.sha1(json.dumps(ident, sort_keys=True).encode("utf-8")).hexdigest()[:12]


def _machine_refusal(target: LocalTarget, have_cuda: bool, where: str = "this machine") -> str | None:
    """What this machine cannot run, known before any cell starts (no torch import: NVML and the extras' presence)."""
    import importlib.util
    import platform

    if target.backend in ("onnx", "openvino"):
        module = "onnxruntime" if target.backend == "onnx" else "openvino"
        if importlib.util.find_spec(module) is None or importlib.util.find_spec("onnx") is None:
            return f"the {target.backend} backend needs the optional packages: pip install 'embprof[backends]'"
    base = target.device.split(":", 1)[0]
    if base == "cuda" and not have_cuda:
        return f"{target.device}: no NVIDIA GPU on {where}"
    if base == "mps" and platform.system() != "Darwin":
        return "mps: Apple's GPU exists only on macOS"
    return None


def _have_cuda() -> bool:
    from .environment import gpus

    try:
        return bool(gpus())
    except Exception:
        return False


def expand(spec: MatrixSpec, folder: Path, have_cuda: bool | None = None, where: str = "this machine") -> Expansion:
    """The cells of a matrix in run order, and every combination dropped with its reason.

    ``have_cuda``: whether CUDA cells can run at all; None: this machine's NVIDIA GPUs say (a Ray
    cluster's driver passes whether any node of the cluster has a GPU)."""
    out = Expansion()
    if have_cuda is None:
        have_cuda = _have_cuda() if any(d.startswith("cuda") for d in spec.devices) else False
    placements = {p.name: p for p in spec.placements}
    by_model: dict[str, list[Cell]] = {}
    references: dict[str, Cell] = {}
    seen: set[str] = set()

    combos: list[tuple[str | None, str, str, str, str, int | None, str, str, str | None]] = []

    def add(target: LocalTarget | ServerTarget, precision: str, key: str, *, reference: bool = False,
            server_name: str | None = None, added: str | None = None, placement: Placement | None = None) -> None:
        cid = _cell_id(target, precision, spec, placement)
        if cid in seen:
            return
        seen.add(cid)
        # A model's cells compare with its reference's vectors; a server serving no named model has none.
        ref_path = str(folder / "references" / f"{key}.npz") if reference or key in references else None
        cp = CellPlan(cost=spec.cost, input=spec.cost_input, text=spec.text, loops=spec.loops, batch_size=spec.batch_size,
                      tasks=spec.tasks, data_dir=spec.data_dir, results_dir=str(folder / "results" / cid),
                      precision=precision,  # type: ignore[arg-type]
                      reference=None if reference else ref_path, write_reference=ref_path if reference else None,
                      top_k=spec.top_k, energy_min_window_s=spec.energy_min_window_s, placement=placement)
        plan = RunPlan(target=target, workload=cp, recording=Recording(sample_hz=spec.sample_hz))
        cell = Cell(cid, label_of(target, precision, server_name, placement), key, plan, reference=reference, added=added)
        if reference:
            references[key] = cell
        else:
            by_model.setdefault(key, []).append(cell)

    def reference_target(model: str | None) -> LocalTarget:
        device = next((d for d in spec.devices if d.split(":")[0] == "cpu"), None) or next(
            (d for d in spec.devices if d.startswith("cuda") and have_cuda), "cpu")
        return LocalTarget(model=model, device=device, dtype="float32", backend="torch", trust_remote_code=spec.trust_remote_code)

    def ensure_reference(model: str | None, why: str) -> None:
        key = model_key(model)
        if key in references:
            return
        target = reference_target(model)
        # Pinned matrices pin their references too, to the first placement: the cells run nowhere else.
        first = spec.placements[0] if spec.placements else None
        asked = any(c[0] == model and c[1] == target.device and c[2:7] == ("float32", "torch", "none", None, "float32")
                    and c[8] == (first.name if first else None) for c in combos)
        add(target, "float32", key, reference=True, added=None if asked else why, placement=first)

    if spec.cells:
        for chosen in spec.cells:
            m = chosen.get("model", spec.models[0] if spec.models else "bundled")
            combos.append((_model_arg(str(m)), str(chosen.get("device", spec.devices[0])), str(chosen.get("dtype", spec.dtypes[0])),
                           str(chosen.get("backend", spec.backends[0])), str(chosen.get("quantize", spec.quantize[0])),
                           chosen.get("truncate_dim", spec.truncate_dims[0]), str(chosen.get("precision", spec.precisions[0])),
                           str(chosen.get("quantize_mode", spec.quantize_mode)),
                           chosen.get("placement", spec.placements[0].name if spec.placements else None)))
    else:
        place_names: list[str | None] = [p.name for p in spec.placements] or [None]
        for model_name, device, dtype_, backend_, quant_, dim_, precision_, place in itertools.product(
                spec.models, spec.devices, spec.dtypes, spec.backends, spec.quantize, spec.truncate_dims, spec.precisions, place_names):
            combos.append((_model_arg(model_name), device, dtype_, backend_, quant_, dim_, precision_, spec.quantize_mode, place))
    for model, device, dtype, backend, quant, dim, precision, mode, place in combos:
        key = model_key(model)
        ensure_reference(model, "added: the float32 torch reference that the other cells' agreement is measured against")
        probe = {"model": model, "device": device, "dtype": dtype, "backend": backend, "quantize": quant, "truncate_dim": dim}
        try:
            target = LocalTarget(quantize_mode=mode, trust_remote_code=spec.trust_remote_code, **probe)  # type: ignore[arg-type]
        except UserError as exc:
            out.dropped.append(Dropped(_probe_label(probe, precision), str(exc)))
            continue
        except ValidationError as exc:  # a value the target does not take at all (--cell backend=tensorflow)
            first = exc.errors()[0]
            field_name = ".".join(str(x) for x in first.get("loc", ()))
            out.dropped.append(Dropped(_probe_label(probe, precision),
                                       f"{one_line(field_name)} {one_line(first.get('input'))!s}: {one_line(first.get('msg', 'invalid'))}"))
            continue
        placement = placements[place] if place is not None else None
        why = _machine_refusal(target, have_cuda, where)
        if why:
            out.dropped.append(Dropped(label_of(target, precision, placement=placement), why))
            continue
        add(target, precision, key, placement=placement)
    for server in spec.servers:
        try:
            server_target = ServerTarget(url=server.url, api=server.api, server_model=server.server_model, api_key_env=server.api_key_env,
                                  prompts_from=server.prompts_from)
        except UserError as exc:
            out.dropped.append(Dropped(server.name or strip_credentials(server.url), str(exc)))
            continue
        if server.of is not None:
            model = _model_arg(server.of)
            ensure_reference(model, f"added: the reference for {server.name or strip_credentials(server.url)}, which serves {short_model(model)}")
            key = model_key(model)
        else:
            key = "server-" + hashlib.sha1(strip_credentials(server.url).encode()).hexdigest()[:6]
        for server_precision in spec.precisions:  # a server is where it is: placements pin local cells only
            add(server_target, server_precision, key, server_name=server.name)
    # References first: every other cell of their model needs their vectors. Then one cell of each
    # model in turn, so drift over the run is spread across models instead of landing on the last.
    out.cells.extend(references.values())
    groups = list(by_model.values())
    for round_ in itertools.zip_longest(*groups):
        out.cells.extend(c for c in round_ if c is not None)
    for c in out.cells:
        if c.added:
            out.notes.append(f"{c.label}: {c.added}")
    return out


def _probe_label(probe: dict[str, Any], precision: str) -> str:
    """A combination that is no target (it was refused): its dtype and its int8 weights both said."""
    weights = [probe["dtype"]] + ([f"{probe['quantize']} weights"] if probe["quantize"] != "none" else [])
    return _label(probe["model"], probe["backend"], weights, probe["device"], probe["truncate_dim"], precision)


# -- the matrix's folder -----------------------------------------------------------------------------------
def snapshot_path(folder: Path, cell: Cell | str) -> Path:
    cid = cell if isinstance(cell, str) else cell.cell_id
    return folder / "cells" / f"{cid}.json"


def crash_path(folder: Path, cid: str) -> Path:
    return folder / "cells" / f"{cid}.crash.json"


def write_manifest(folder: Path, spec: MatrixSpec, exp: Expansion, exports: dict[str, Any]) -> None:
    data = {
        "matrix_version": MATRIX_VERSION,
        "spec": json.loads(spec.model_dump_json()),
        "cells": [{"cell_id": c.cell_id, "label": c.label, "model_key": c.model_key, "reference": c.reference, "added": c.added,
                   "plan": json.loads(c.plan.model_dump_json())} for c in exp.cells],
        "dropped": [{"label": d.label, "reason": d.reason} for d in exp.dropped],
        "notes": exp.notes,
        "exports": exports,
    }
    atomic_write_bytes(folder / "matrix.json", (json.dumps(data, indent=1) + "\n").encode("utf-8"))


@dataclass
class Manifest:
    spec: MatrixSpec
    cells: list[Cell]
    dropped: list[Dropped]
    notes: list[str]
    exports: dict[str, Any]
    rows: list[MatrixRow] = field(default_factory=list)  # as a run left them (run_matrix); empty when read from the file


def read_manifest(folder: Path) -> Manifest:
    path = folder / "matrix.json"
    if not path.is_file():
        raise UserError(f"'{one_line(folder)}' is not a matrix folder (no matrix.json in it)")
    data = read_json_file(path, "matrix manifest")
    try:
        spec = MatrixSpec.model_validate(data["spec"])
        cells = [Cell(c["cell_id"], c["label"], c["model_key"], RunPlan.model_validate(c["plan"]), c.get("reference", False), c.get("added"))
                 for c in data["cells"]]
    except (ValueError, KeyError, TypeError, ValidationError) as exc:
        raise UserError(f"'{one_line(path)}' is not a matrix manifest this embprof reads ({exc.__class__.__name__})") from None
    return Manifest(spec, cells, [Dropped(**d) for d in data.get("dropped", [])], list(data.get("notes", [])), dict(data.get("exports", {})))


def finished(row: MatrixRow, retry_failed: bool = False) -> bool:
    """A cell with a finished snapshot (or a recorded crash) is not run again; an interrupted one is."""
    return row.status in ("ok", "unstable") or (row.status in ("failed", "oom") and not retry_failed)


# -- running ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MatrixEvent:
    """What the matrix runner reports as it goes: a cell starts, shows a phase, ends; an export."""

    kind: Literal["listed", "queued", "start", "phase", "end", "skip", "export", "note"]
    cell_id: str = ""
    label: str = ""
    index: int = 0
    total: int = 0
    text: str = ""
    row: MatrixRow | None = None
    cells: tuple[tuple[str, str, bool], ...] = ()  # "listed": every cell (id, label, reference) in run order


MatrixListener = Callable[[MatrixEvent], None]


class MatrixInterrupted(Exception):
    """Ctrl-C: the cell that was running saved what it had; the finished cells are kept."""


def graph_key(target: LocalTarget) -> str | None:
    """The exported graph a cell loads: one per model, backend's file format and int8 setting."""
    if target.backend == "torch":
        return None
    return "|".join(x for x in (model_key(target.model), target.backend, target.quantize, int8_mode(target)) if x)


def _python() -> list[str]:
    return [sys.executable, "-m", "embprof.engine.cellproc"]


def prewarm(cells: list[Cell]) -> None:
    """Read each local model's files once before the cells run, so every cell of a model loads from
    the same warm page cache (the first cell would otherwise pay the disk alone)."""
    from .targets import SentenceTransformerTarget, model_folder

    done: set[str] = set()
    for cell in cells:
        t = cell.target
        if not isinstance(t, LocalTarget) or cell.model_key in done:
            continue
        done.add(cell.model_key)
        try:
            st = SentenceTransformerTarget(t)
            st.resolve()
            folder = model_folder(st.location)
        except UserError:
            folder = None
        if folder is not None:
            for f in sorted(folder.rglob("*")):
                if f.is_file():
                    with open(f, "rb") as fh:
                        while fh.read(1 << 23):
                            pass


def run_matrix(spec: MatrixSpec, folder: Path, listener: MatrixListener, *, retry_failed: bool = False,
               cancel: Callable[[], bool] = lambda: False, ray_address: str | None = None, ray_cpus: int = 1) -> Manifest:
    """Run every cell that has no finished snapshot; returns the manifest. Raises MatrixInterrupted on Ctrl-C.

    One matrix run at a time per folder: two would run the same cells side by side, each measuring the
    other's load, and race on the manifest."""
    ensure_writable_dir(folder, "matrix folder")
    with folder_lock(folder, "matrix folder"):
        return _run_matrix(spec, folder, listener, retry_failed=retry_failed, cancel=cancel, ray_address=ray_address,
                           ray_cpus=ray_cpus)


def _run_matrix(spec: MatrixSpec, folder: Path, listener: MatrixListener, *, retry_failed: bool,
                cancel: Callable[[], bool], ray_address: str | None = None, ray_cpus: int = 1) -> Manifest:
    (folder / "cells").mkdir(exist_ok=True)
    check_placements(spec, ray_address)
    ray_run = None
    if ray_address is not None:
        from .ray_cells import RayRun

        ray_run = RayRun(ray_address, folder, ray_cpus)
        try:
            cluster = ray_run.survey(cancel)  # before expanding: the cluster's GPUs decide which CUDA cells can run, not this machine's
        except BaseException:
            ray_run.close()
            raise
    try:
        return _run_cells(spec, folder, listener, retry_failed=retry_failed, cancel=cancel, ray_run=ray_run,
                          have_cuda=None if ray_run is None else cluster.has_gpu)
    finally:
        if ray_run is not None:
            ray_run.close()


def _run_cells(spec: MatrixSpec, folder: Path, listener: MatrixListener, *, retry_failed: bool, cancel: Callable[[], bool],
               ray_run: Any, have_cuda: bool | None) -> Manifest:
    exp = expand(spec, folder) if ray_run is None else expand(spec, folder, have_cuda=have_cuda, where="any node of the Ray cluster")
    # The cells as they will run (on a cluster its GPUs, not this machine's, decided which exist).
    listener(MatrixEvent("listed", cells=tuple((c.cell_id, c.label, c.reference) for c in exp.cells)))
    previous = read_manifest(folder).exports if (folder / "matrix.json").is_file() else {}
    exports: dict[str, Any] = dict(previous)
    write_manifest(folder, spec, exp, exports)
    for d in exp.dropped:
        listener(MatrixEvent("note", label=d.label, text=f"dropped: {d.reason}"))
    for n in exp.notes:
        listener(MatrixEvent("note", text=n))
    # Each cell's snapshot is read once here: it says both whether the cell runs and, if not, its row.
    table = {c.cell_id: row_of(folder, c, exports, i) for i, c in enumerate(exp.cells)}
    todo = [c for c in exp.cells if not finished(table[c.cell_id], retry_failed)]
    if todo:
        check_inputs(todo[0])
    total = len(exp.cells)
    for i, c in enumerate(exp.cells):
        if c not in todo:
            listener(MatrixEvent("skip", c.cell_id, c.label, i + 1, total, "finished in an earlier run", table[c.cell_id]))
    manifest = Manifest(spec, exp.cells, exp.dropped, exp.notes, exports)
    if not todo:
        manifest.rows = list(table.values())
        return manifest
    if ray_run is not None:
        # On a cluster each cell runs where Ray places it: an exported graph a worker lacks is built in the
        # cell's own process, in an "export" phase of its own (still apart from its load time).
        def done(c: Cell) -> None:
            i = exp.cells.index(c)
            table[c.cell_id] = row_of(folder, c, exports, i)
            listener(MatrixEvent("end", c.cell_id, c.label, i + 1, total, row=table[c.cell_id]))

        ray_run.run(todo, exp.cells, listener, cancel, done)
        manifest.rows = list(table.values())
        return manifest
    try:
        prewarm(todo)
        for c in todo:  # the graphs first, each once, in its own process: export time is not load time
            if cancel():
                raise MatrixInterrupted()
            key = graph_key(c.target) if isinstance(c.target, LocalTarget) else None
            if key is None or key in exports:
                continue
            listener(MatrixEvent("export", c.cell_id, c.label, text=f"exporting {key}"))
            exports[key] = _export(c)
            if "error" in exports[key]:
                listener(MatrixEvent("note", c.cell_id, c.label, text=f"export failed: {exports[key]['error']}"))
            write_manifest(folder, spec, exp, exports)
        for c in todo:
            if cancel():
                raise MatrixInterrupted()
            i = exp.cells.index(c)
            listener(MatrixEvent("start", c.cell_id, c.label, i + 1, total))
            _run_cell(folder, c, _phase_reporter(listener, c, i + 1, total), cancel)
            table[c.cell_id] = row_of(folder, c, exports, i)
            listener(MatrixEvent("end", c.cell_id, c.label, i + 1, total, row=table[c.cell_id]))
        if cancel():  # the stop came during the last cell, which it cut short: the matrix did not finish
            raise MatrixInterrupted()
    except KeyboardInterrupt:
        raise MatrixInterrupted() from None
    manifest.rows = list(table.values())
    return manifest


def check_placements(spec: MatrixSpec, ray_address: str | None) -> None:
    """A pinned cell has nowhere to run on one machine: refused before anything starts, not run unpinned."""
    if ray_address is None and spec.placements:
        raise UserError(f"the matrix pins cells to placements ({', '.join(one_line(p.name) for p in spec.placements)}), which only a "
                        "Ray cluster can honour: run it with --ray")


def _phase_reporter(listener: MatrixListener, cell: Cell, index: int, total: int) -> Callable[[str], None]:
    def report(text: str) -> None:
        listener(MatrixEvent("phase", cell.cell_id, cell.label, index, total, text))

    return report


def check_inputs(cell: Cell) -> None:
    """What every cell reads (the cost text, the tasks' data) is checked once, here, before any cell
    starts: bad input is one sentence, not a column of failed cells."""
    from .execute import make_workload

    make_workload(cell.cell.model_copy(update={"reference": None, "write_reference": None})).prepare()


def _export(cell: Cell) -> dict[str, Any]:
    proc = subprocess.run([*_python(), "--export", cell.target.model_dump_json()], capture_output=True, text=True)
    if proc.returncode != 0:
        lines = (proc.stderr or "").strip().splitlines()
        return {"error": lines[-1] if lines else f"exit status {proc.returncode}"}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _stop_when_cancelled(proc: subprocess.Popen[str], cancel: Callable[[], bool]) -> None:
    while proc.poll() is None:
        if cancel():
            try:
                proc.send_signal(signal.SIGINT)
            except ProcessLookupError:
                pass
            return
        time.sleep(0.2)


def read_phases(lines: Iterable[str], on_phase: Callable[[str], None]) -> None:
    """A cell process's standard output: each phase it starts is one JSON line (``cellproc``); the rest is not ours."""
    for line in lines:
        line = line.strip()
        if line.startswith("{"):
            try:
                on_phase(str(json.loads(line).get("phase", "")))
            except ValueError:
                pass


def _run_cell(folder: Path, cell: Cell, on_phase: Callable[[str], None], cancel: Callable[[], bool] = lambda: False) -> None:
    plan_file = folder / "cells" / f"{cell.cell_id}.plan.json"
    atomic_write_bytes(plan_file, cell.plan.to_json().encode("utf-8"))
    out = snapshot_path(folder, cell)
    crash_path(folder, cell.cell_id).unlink(missing_ok=True)
    started = time.perf_counter()
    # Its own session: a Ctrl-C reaches the matrix first, which then asks the cell to stop cleanly.
    # Standard error goes to a file: a pipe read only at the end would stall a cell that writes much to it.
    with tempfile.TemporaryFile(mode="w+", encoding="utf-8") as err_file:
        proc = subprocess.Popen([*_python(), str(plan_file), str(out)], stdout=subprocess.PIPE, stderr=err_file, text=True,
                                start_new_session=True)
        # A stop asked for without a signal (the dashboard's q, or its SIGTERM) reaches the cell as a Ctrl-C
        # would: it stops at its next batch boundary and saves what it measured, rather than running to its end.
        watcher = threading.Thread(target=_stop_when_cancelled, args=(proc, cancel), name="embprof-cell-stop", daemon=True)
        watcher.start()
        try:
            assert proc.stdout is not None
            read_phases(proc.stdout, on_phase)
            proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
        err_file.seek(0)
        stderr = err_file.read()
    if not out.is_file():
        rc = proc.returncode
        if rc < 0:
            name = signal.Signals(-rc).name
            why = f"the cell's process was killed by {name}" + (" (the kernel's out-of-memory killer sends it)" if name == "SIGKILL" else "")
        else:
            lines = stderr.strip().splitlines()
            why = lines[-1].removeprefix("embprof: error: ") if lines else f"the cell's process exited with status {rc}"
        data = {"cell_id": cell.cell_id, "returncode": rc, "reason": why, "seconds": time.perf_counter() - started,
                "oom": rc == -signal.SIGKILL}
        atomic_write_bytes(crash_path(folder, cell.cell_id), json.dumps(data).encode("utf-8"))


# -- rows ---------------------------------------------------------------------------------------------------
BESIDE_CPU_PERCENT = 50.0  # others' mean CPU during a cell, in percent of one core, above which the cell is flagged


def beside_other_work(env: dict[str, Any]) -> str | None:
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
def rows(folder: Path) -> tuple[Manifest, list[MatrixRow]]:
    m = read_manifest(folder)
    return m, [row_of(folder, c, m.exports, i) for i, c in enumerate(m.cells)]


def row_of(folder: Path, cell: Cell, exports: dict[str, Any], order: int = 0) -> MatrixRow:
    """A cell's row, from its snapshot alone (or its crash record, or nothing yet: pending)."""
    from .results import CellResult, KernelCounters, MtebTask, TargetFacts
    from .snapshot import load

    t, cp = cell.target, cell.cell
    base: dict[str, Any] = {"cell_id": cell.cell_id, "label": cell.label, "order": order, "reference": cell.reference,
                            "precision": cp.precision, "top_k": cp.top_k}
    if isinstance(t, LocalTarget):
        base.update(model=t.model or BUNDLED_MODEL_ID, target_kind="local", backend=t.backend, device=t.device, dtype=t.dtype,
                    quantize=t.quantize, quantize_mode=int8_mode(t),
                    truncate_dim=t.truncate_dim)
        key = graph_key(t)
        if key is not None and key in exports and "seconds" in exports[key]:
            base.update(export_s=exports[key]["seconds"], export_cached=bool(exports[key].get("cached")))
    else:
        base.update(model=strip_credentials(t.url), target_kind="server", backend=t.api, device=None, dtype=None)
    snap_file = snapshot_path(folder, cell)
    crash = crash_path(folder, cell.cell_id)
    if not snap_file.is_file():
        if crash.is_file():
            try:
                data = read_json_file(crash, "crash record", 1024 * 1024)
            except UserError as exc:  # a damaged record: the cell counts as not run, and runs again
                return MatrixRow(**base, status="incomplete", reason=f"{exc}; runs again next time")
            if not isinstance(data, dict):
                data = {"reason": "a crash record that is not an object"}
            return MatrixRow(**base, status="oom" if data.get("oom") else "failed", reason=str(data.get("reason")))
        return MatrixRow(**base, status="pending")
    try:
        snap = load(snap_file)
    except UserError as exc:
        return MatrixRow(**base, status="incomplete", reason=f"{exc}; runs again next time")
    base["snapshot"] = str(snap_file.relative_to(folder))
    s = snap.summary
    facts: TargetFacts = snap.target
    if isinstance(t, LocalTarget):
        base["device"] = facts.device_resolved or t.device
    base["beside"] = beside_other_work(snap.environment)
    ray = snap.environment.get("ray")
    if isinstance(ray, dict) and ray.get("host"):
        base["host"] = str(ray["host"]) + (" (retried)" if ray.get("retried") else "")
    base.update(disk_bytes=facts.disk_bytes, weights_bytes=facts.weights_bytes)
    phases = {p.name: p for p in s.phases}
    if "import" in phases:
        base["import_s"] = phases["import"].duration_s
    if "load" in phases:
        load_phase = phases["load"]
        base["load_s"] = load_phase.duration_s
        peak, before = load_phase.peaks.get("rss_mib"), load_phase.rss_before_mib
        if peak is not None and before is not None:
            base["load_rss_delta_bytes"] = int((peak - before) * 2**20)
    peaks = s.peaks
    mem_field = "rss_mib" if isinstance(t, LocalTarget) else "server_rss_mib"
    pk = peaks.get(mem_field)
    if pk is not None:
        value = pk.counter if pk.counter is not None else pk.sampled
        base["peak_rss_bytes"] = int(value * 2**20) if value is not None else None
    gpu = peaks.get("gpu_process_mib")
    if gpu is not None and gpu.sampled is not None:
        base["peak_gpu_bytes"] = int(gpu.sampled * 2**20)
    kc = s.results.get("kernel_counters")
    if isinstance(kc, KernelCounters):
        if kc.torch_max_memory_reserved_mib is not None:
            base["torch_reserved_bytes"] = int(kc.torch_max_memory_reserved_mib * 2**20)
        if kc.torch_max_memory_allocated_mib is not None:
            base["torch_allocated_bytes"] = int(kc.torch_max_memory_allocated_mib * 2**20)
    res = s.results.get("cell")
    unstable = False
    if isinstance(res, CellResult):
        unstable = res.status == "unstable"
        base.update(cost_workload=res.cost_workload, items=res.items, calls=res.stats.count, p50_s=res.stats.p50_s,
                    p95_s=res.stats.p95_s, items_per_s=res.items_per_s, energy_j_per_1000=res.energy_j_per_1000,
                    energy_source=res.energy_source, energy_why=res.energy_why, nonfinite=res.nonfinite,
                    agreement_mean=res.agreement_mean, agreement_min=res.agreement_min, agreement_why=res.agreement_why,
                    agrees_1e4=res.agrees_1e4, topk_overlap=res.topk_overlap, top1_correct=res.top1_correct, queries=res.queries,
                    calibration=res.calibration)
    scores: dict[str, float | None] = {}
    for name in cp.tasks:
        r = s.results.get(f"mteb:{name}")
        scores[name] = r.main_score if isinstance(r, MtebTask) and r.status == "ok" else None
    if not unstable:
        base["scores"] = scores
        if scores and all(v is not None for v in scores.values()):
            base["quality"] = sum(v for v in scores.values() if v is not None) / len(scores)
    if unstable:
        return MatrixRow(**base, status="unstable", reason=f"{base.get('nonfinite')} NaN or infinite values: not scored")
    if snap.status == "complete":
        return MatrixRow(**base, status="ok")
    if snap.status == "incomplete":
        return MatrixRow(**base, status="incomplete", reason="stopped before it finished; runs again next time")
    err = s.errors[0] if s.errors else {}
    kind = err.get("error_kind")
    return MatrixRow(**base, status="oom" if kind == "oom" else "failed", reason=str(err.get("message") or "failed"))
