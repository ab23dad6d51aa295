"""What a matrix measures and the cells it expands into.

The matrix is data (``MatrixSpec``, from the command line or a TOML/YAML file): a base plan (``BasePlan``:
the ``CellPlan`` workload, the ``Recording`` and the local target's settings that are no axis) and the
axes, or chosen cells that each set some of them. ``expand`` turns it into cells, each a ``RunPlan``:
the base plan with that cell's axis values applied, in run order, and says for every combination it
drops why. A cell's id is a digest of what makes it a different measurement, so a matrix run again
finds the cells it already has.

Files and the command line may give the base plan's settings flat (``loops = 5``, ``cost_input``,
``sample_hz``, ``quantize_mode`` …), as matrices have always been written; each is the base plan's
field of that name (``cost_input``: the workload's ``input``), so no plan field is restated here.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from ..errors import UserError
from ..files import MAX_JSON_BYTES, decode_text, expand_path, json_depth_exceeds, parse_toml, parse_yaml, read_file_bytes, read_json_file, repeated_key
from ..plan import (
    BUNDLED_MODEL_ID,
    PRECISIONS,
    CellPlan,
    LocalTarget,
    Placement,
    Recording,
    RunPlan,
    ServerTarget,
    as_tuples,
    error_location,
    exact_version,
    field_refusal,
    given,
    strip_credentials,
)
from ..text import one_line

MATRIX_VERSION: Literal[1] = 1

# The axes: the plan field each sets in a cell (as a chosen cell and a file name it), and the matrix's
# list of its values. In this order every combination is made (the last varies fastest).
AXES: dict[str, str] = {"model": "models", "device": "devices", "dtype": "dtypes", "backend": "backends", "quantize": "quantize",
                        "truncate_dim": "truncate_dims", "precision": "precisions", "placement": "placements"}
# The base plan's settings a chosen cell may change besides the axes.
CELL_SETTINGS = ("quantize_mode",)
# What each cell's plan has of its own: its axis values, and its files in the matrix's folder.
_PER_CELL = frozenset(AXES) | {"kind", "name", "results_dir", "reference", "write_reference"}
_SECTIONS: dict[str, type[BaseModel]] = {"target": LocalTarget, "workload": CellPlan, "recording": Recording}
# The flat name of a base setting is its field's name, but for the workload's input: the cost workload's file.
_FLAT_RENAMED = {("workload", "input"): "cost_input"}
_FLAT: dict[str, tuple[str, str]] = {_FLAT_RENAMED.get((section, name), name): (section, name)
                                     for section, cls in _SECTIONS.items() for name in cls.model_fields if name not in _PER_CELL}
_FLAT_NAME = {where: flat for flat, where in _FLAT.items()}

_M = TypeVar("_M", bound=BaseModel)


def _applied(model: _M, update: dict[str, Any]) -> _M:
    """``model`` with ``update`` applied, and checked as the plan checks it (``model_copy`` alone runs no validator)."""
    return type(model).model_validate(dict(model.model_copy(update=update)))


class ServerCell(BaseModel):
    """An embedding server in the matrix: a GGUF on llama-server, or any OpenAI-compatible server."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)  # strict as the plan is: "yes" is no name, 8080 no URL

    url: str
    # llama by default, as before auto existed: a cell's id is made of its settings, and a matrix run again must find
    # the cells it measured. auto (asked on connect) is one setting away.
    api: Literal["auto", "llama", "openai", "tei", "ollama"] = "llama"
    name: str | None = None  # how the table names it ("minilm q8_0"); default: the URL
    of: str | None = None  # the model it serves ("bundled", a Hub id or folder): its agreement is against that model's reference
    server_model: str | None = None
    api_key_env: str | None = None
    prompts_from: str | None = None

    @field_serializer("url")
    def _no_credentials(self, url: str) -> str:
        """The manifest and --print-spec never hold a URL's user:password@ (a plan's URL does not either)."""
        return strip_credentials(url)

    def target(self) -> ServerTarget:
        """The server as a plan's target: its fields of the same names (the URL with its credentials, for the run)."""
        return ServerTarget.model_validate({k: v for k, v in dict(self).items() if k in ServerTarget.model_fields})


class BasePlan(BaseModel):
    """What every cell of a matrix shares: the cell workload, the recording, and the local target's
    settings that are no axis. A cell's plan is this with the cell's axis values applied; what each
    cell sets (the axes, its files in the matrix's folder) is left at the plan's default here and
    is not written out."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    target: LocalTarget = Field(default_factory=LocalTarget)
    workload: CellPlan = Field(default_factory=CellPlan)
    recording: Recording = Field(default_factory=Recording)

    @model_validator(mode="after")
    def _shared_only(self) -> BasePlan:
        for section in ("target", "workload"):
            part: BaseModel = getattr(self, section)
            default = type(part)()
            for name in sorted(_PER_CELL & set(type(part).model_fields)):
                if getattr(part, name) != getattr(default, name):
                    whose = f"an axis of the matrix ({AXES[name]})" if name in AXES else "a file in the matrix's folder"
                    raise ValueError(f"{section}.{name} is each cell's own, {whose}, not a setting of the base plan")
        return self

    @field_serializer("target", "workload")
    def _without_per_cell(self, part: BaseModel, info: SerializationInfo) -> dict[str, Any]:
        return part.model_dump(mode=info.mode, exclude=set(_PER_CELL))


def _nest(data: Any) -> Any:
    """The base plan's settings given flat (``loops``, ``cost_input``, ``sample_hz`` …: files, the command
    line, manifests written before the base plan) moved into it, each over what ``base`` says."""
    if not isinstance(data, dict) or not any(k in _FLAT for k in data):
        return data
    base = data.get("base", {})
    if not isinstance(base, (dict, BasePlan)):
        return data  # not a base plan at all: said as such by its validation
    out = {k: v for k, v in data.items() if k not in _FLAT}
    nested: dict[str, Any] = dict(base)
    for flat, (section, name) in _FLAT.items():
        if flat in data:
            part = nested.get(section, {})
            part = dict(part) if isinstance(part, (dict, BaseModel)) else {}
            nested[section] = {**part, name: data[flat]}
    out["base"] = nested
    return out


class MatrixSpec(BaseModel):
    """What a matrix measures: a base plan, and the axes; every combination of the local axes is a cell."""

    # Strict, as the plan is: a value of the declared type only (true is no dimension, "3" no count); the
    # arrays of TOML, YAML and JSON are taken as the tuples the matrix holds.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    matrix_version: Literal[1] = MATRIX_VERSION
    base: BasePlan = Field(default_factory=BasePlan)
    models: tuple[str, ...] = ("bundled",)  # Hub ids or folders; "bundled": the bundled all-MiniLM-L6-v2
    devices: tuple[str, ...] = ("cpu",)
    dtypes: tuple[Literal["float32", "float16", "bfloat16"], ...] = ("float32",)
    backends: tuple[Literal["torch", "onnx", "openvino"], ...] = ("torch",)
    quantize: tuple[Literal["none", "int8"], ...] = ("none",)
    truncate_dims: tuple[int | None, ...] = (None,)  # None: the model's full dimension ("full")
    precisions: tuple[Literal["float32", "int8", "binary"], ...] = ("float32",)
    servers: tuple[ServerCell, ...] = ()
    # Chosen cells instead of every combination: each names the settings it changes; the rest are
    # the first value of each axis, and the base plan's ({"backend": "onnx", "quantize": "int8"}).
    cells: tuple[dict[str, Any], ...] = ()
    # Hosts or GPU types of a Ray cluster: every combination runs once on each (an axis), or a chosen
    # cell names its own. Empty: a cell runs wherever there is room, as on one machine.
    placements: tuple[Placement, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _flat_settings(cls, data: Any) -> Any:
        return as_tuples(_nest(data))

    @field_validator("matrix_version", mode="before")
    @classmethod
    def _version_is_a_whole_number(cls, value: Any) -> Any:
        return exact_version(value, MATRIX_VERSION)

    @field_validator("truncate_dims", mode="before")
    @classmethod
    def _full(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            # By type, not by equality: false == 0 in Python, and false is not "full".
            return tuple(None if v is None or (type(v) is str and v in ("full", "none")) or (type(v) is int and v == 0) else v
                         for v in value)
        return value

    @field_validator("models", "devices", "dtypes", "backends", "quantize", "precisions", "truncate_dims", mode="after")
    @classmethod
    def _no_repeats(cls, value: tuple[Any, ...]) -> tuple[Any, ...]:
        if len(set(value)) != len(value):
            raise ValueError("a value is given twice")
        return value

    def to_json(self) -> str:
        return self.model_dump_json(indent=1) + "\n"


def _field_name(loc: tuple[Any, ...], data: Any) -> str:
    """Where a refused value is, as the input named it: a base setting given flat by its flat name."""
    if len(loc) >= 3 and loc[0] == "base" and isinstance(data, dict):
        flat = _FLAT_NAME.get((str(loc[1]), str(loc[2])))
        if flat is not None and flat in data:
            loc = (flat, *loc[3:])
    return ".".join(str(x) for x in loc)


def validate_spec(data: Any, where: str = "") -> MatrixSpec:
    """A matrix from its fields (flat or with a base plan); bad input is one sentence (UserError).

    The base plan's own checks (loops, batch, top-k, the cost workload …) run as it is read, once,
    before anything runs."""
    prefix = f"{where}: " if where else ""
    nested = _nest(data)
    workload = nested.get("base", {}).get("workload", {}) if isinstance(nested, dict) and isinstance(nested.get("base"), dict) else {}
    tasks = workload.get("tasks") if isinstance(workload, dict) else None
    # Names only: a task that is no text is refused by its type below (and a YAML alias may share one list a
    # billion times over, which no dump of it would finish).
    task_names = [t for t in tasks if type(t) is str] if isinstance(tasks, (list, tuple)) else []
    if len(set(task_names)) != len(task_names):
        raise UserError(f"{prefix}matrix field 'tasks': a value is given twice")
    try:
        spec = MatrixSpec.model_validate(nested)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = _field_name(error_location(first), data)
        raise UserError(f"{prefix}matrix field '{one_line(loc)}': {field_refusal(first)}") from None
    allowed = {*AXES, *CELL_SETTINGS}
    names = [p.name for p in spec.placements]
    if len(set(names)) != len(names):
        raise UserError("matrix field 'placements': a placement's name is given twice")
    seen: dict[str, int] = {}
    for i, chosen in enumerate(spec.cells):
        unknown = sorted(set(chosen) - allowed)
        if unknown:
            raise UserError(f"a cell names '{unknown[0]}': a cell sets {', '.join(sorted(allowed))}")
        for key, value in chosen.items():
            # A cell's values are typed as the axes' are: a name is text, a dimension a whole number (None: full).
            if key == "truncate_dim":
                if value is not None and (type(value) is not int or value < 1):
                    raise UserError(f"{prefix}matrix field 'cells.{i}.truncate_dim': a cell's truncate_dim is a positive number of "
                                    f"dimensions, not {given(value)}")
            elif type(value) is not str:
                raise UserError(f"{prefix}matrix field 'cells.{i}.{one_line(key)}': Input should be a valid string, not {given(value)}")
        if "placement" in chosen and chosen["placement"] not in names:
            raise UserError(f"a cell names placement '{one_line(chosen['placement'])}', which the matrix does not define"
                            + (f" (it defines {', '.join(names)})" if names else " (give it under [[placements]])"))
        if chosen.get("precision", "float32") not in PRECISIONS:
            raise UserError(f"a cell's precision is float32, int8 or binary, not '{one_line(chosen['precision'])}'")
        # Two cells alike would be one cell measured once (its id is the same): said, as a value given twice on an axis is.
        same = seen.setdefault(json.dumps(chosen, sort_keys=True), i)
        if same != i:
            raise UserError(f"{prefix}matrix field 'cells': a value is given twice (cells {same + 1} and {i + 1} are the same)")
    if not spec.models and not spec.servers:
        raise UserError("the matrix has no model and no server: give --model or --server")
    if spec.models:  # an empty axis would silently make no cell of any model
        for axis in ("devices", "dtypes", "backends", "quantize", "truncate_dims", "precisions"):
            if not getattr(spec, axis):
                raise UserError(f"matrix field '{axis}' is empty: give at least one value (or leave it out for the default)")
    for d in spec.truncate_dims:
        if isinstance(d, bool) or (d is not None and d < 1):
            raise UserError(f"--truncate-dim takes full or a positive number of dimensions, not {one_line(d)}")
    return spec


def load_spec(path: str) -> MatrixSpec:
    """A matrix from a TOML, YAML or JSON file: the axes as lists, and the base plan's settings flat
    (``loops = 5``) or nested under ``base`` as ``--print-spec`` writes them."""
    p = expand_path(path, "matrix file")
    suffix = p.suffix.lower()
    if suffix == ".json":
        data: Any = read_json_file(path, "matrix file")  # a key given twice is refused there, as in a plan file
        path = one_line(path)
    else:
        # decode_text: a byte-order mark is accepted here as in every file embprof reads.
        raw = decode_text(read_file_bytes(path, "matrix file", MAX_JSON_BYTES), f"matrix file '{one_line(path)}'")
        path = one_line(path)
        if suffix == ".toml":
            data = parse_toml(raw, f"matrix file '{path}'")
        elif suffix in (".yaml", ".yml"):
            data = parse_yaml(raw, f"matrix file '{path}'")  # safe: a YAML tag never constructs an object or runs anything
        else:
            raise UserError(f"matrix file '{path}' must end in .toml, .yaml, .yml or .json")
    if json_depth_exceeds(data):
        raise UserError(f"matrix file '{path}' is nested too deeply to be a matrix")
    if not isinstance(data, dict):
        raise UserError(f"matrix file '{path}' does not hold a matrix (a table of fields)")
    # Files name the axes in the singular or the plural, as the command line's options do.
    singular = {"cell": "cells", "model": "models", "device": "devices", "dtype": "dtypes", "backend": "backends", "precision": "precisions",
                "truncate_dim": "truncate_dims", "server": "servers", "task": "tasks", "placement": "placements"}
    spelled: dict[str, str] = {}
    named: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")  # a YAML key may be a number: an unknown field, said as such below
        name = singular.get(name, name)
        if name in named:  # "model" and "models", "cost-input" and "cost_input": one key in two spellings
            raise repeated_key(f"matrix file '{path}'", name, f"as '{one_line(spelled[name])}' and '{one_line(key)}'")
        spelled[name], named[name] = str(key), value
    data = named
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
        # The API once it is said (auto is found on connect, and the snapshot says what was found).
        api = [target.api] if target.api != "auto" else []
        parts = [server_name or strip_credentials(target.url), *api] + ([f"{precision} vectors"] if precision != "float32" else [])
        return " · ".join(parts)
    mode = int8_mode(target)
    weights = target.dtype if target.quantize == "none" else (f"int8 {mode}" if mode else "int8 weights")
    return _label(target.model, target.backend, [weights], target.device, target.truncate_dim, precision)


# What a cell's workload measures, under the names its id has always given them; a workload field that is
# not here counts once it differs from its default (a pinned placement), so that the cells of every
# matrix made before keep their ids.
_ID_NAMES = {"cost": "cost", "input": "cost_input", "text": "text", "loops": "loops", "batch_size": "batch", "tasks": "tasks",
             "data_dir": "data_dir", "top_k": "top_k", "precision": "precision"}
# Not what a cell measures: its files in the matrix's folder, and how its energy is windowed.
_NOT_MEASURED = frozenset({"name", "results_dir", "reference", "write_reference", "energy_min_window_s"})


def _cell_id(target: LocalTarget | ServerTarget, workload: CellPlan) -> str:
    """What makes a cell a different measurement: its target and its workload; the folder's paths do not,
    nor how it is recorded."""
    ident: dict[str, Any] = {"target": target.model_dump(mode="json")}
    default = CellPlan().model_dump(mode="json")
    for name, value in workload.model_dump(mode="json", exclude=set(_NOT_MEASURED)).items():
        if name in _ID_NAMES or value != default.get(name):
            ident[_ID_NAMES.get(name, name)] = value
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
    from ..environment import gpus

    try:
        return bool(gpus())
    except Exception:
        return False


def _choices(spec: MatrixSpec) -> list[dict[str, Any]]:
    """Each cell the axes (every combination) or the chosen cells ask for: the plan fields it sets, by
    name (a placement by its name; None: the bundled model, no placement)."""
    values: dict[str, list[Any]] = {axis: list(getattr(spec, plural)) for axis, plural in AXES.items()}
    values["model"] = [_model_arg(m) for m in spec.models]
    values["placement"] = [p.name for p in spec.placements] or [None]
    if not spec.cells:
        return [dict(zip(values, combo)) for combo in itertools.product(*values.values())]
    firsts = {axis: vs[0] if vs else None for axis, vs in values.items()}  # no model: the bundled one
    out = []
    for chosen in spec.cells:
        choice = {**firsts, **chosen}
        if "model" in chosen:
            choice["model"] = _model_arg(str(chosen["model"]))
        for name in ("device", "dtype", "backend", "quantize", "precision", *CELL_SETTINGS):
            if name in chosen:
                choice[name] = str(chosen[name])
        out.append(choice)
    return out


def expand(spec: MatrixSpec, folder: Path, have_cuda: bool | None = None, where: str = "this machine") -> Expansion:
    """The cells of a matrix in run order, and every combination dropped with its reason.

    Each cell's plan is the spec's base plan with the cell's axis values applied. ``have_cuda``: whether
    CUDA cells can run at all; None: this machine's NVIDIA GPUs say (a Ray cluster's driver passes
    whether any node of the cluster has a GPU)."""
    out = Expansion()
    base = spec.base
    choices = _choices(spec)
    if have_cuda is None:
        have_cuda = _have_cuda() if any(str(c["device"]).startswith("cuda") for c in choices) else False
    placements = {p.name: p for p in spec.placements}
    by_model: dict[str, list[Cell]] = {}
    references: dict[str, Cell] = {}
    seen: set[str] = set()

    def add(target: LocalTarget | ServerTarget, precision: str, key: str, *, reference: bool = False,
            server_name: str | None = None, added: str | None = None, placement: Placement | None = None) -> None:
        workload = _applied(base.workload, {"precision": precision, "placement": placement})
        cid = _cell_id(target, workload)
        if cid in seen:
            return
        seen.add(cid)
        # A model's cells compare with its reference's vectors; a server serving no named model has none.
        ref_path = str(folder / "references" / f"{key}.npz") if reference or key in references else None
        workload = _applied(workload, {"results_dir": str(folder / "results" / cid), "reference": None if reference else ref_path,
                                       "write_reference": ref_path if reference else None})
        plan = RunPlan(target=target, workload=workload, recording=base.recording)
        cell = Cell(cid, label_of(target, precision, server_name, placement), key, plan, reference=reference, added=added)
        if reference:
            references[key] = cell
        else:
            by_model.setdefault(key, []).append(cell)

    # The reference: the model's float32 torch target on the first CPU (else GPU) device, every other
    # setting a cell sets at the plan's default (int8's weight scales too: it has no int8 weights).
    reference_reset = {name: f.default for name, f in LocalTarget.model_fields.items() if name in _PER_CELL or name in CELL_SETTINGS}

    def reference_target(model: str | None) -> LocalTarget:
        device = next((d for d in spec.devices if d.split(":")[0] == "cpu"), None) or next(
            (d for d in spec.devices if d.startswith("cuda") and have_cuda), "cpu")
        return _applied(base.target, {**reference_reset, "model": model, "device": device})

    def ensure_reference(model: str | None, why: str) -> None:
        key = model_key(model)
        if key in references:
            return
        target = reference_target(model)
        # Pinned matrices pin their references too, to the first placement: the cells run nowhere else.
        first = spec.placements[0] if spec.placements else None
        asked = any(all(c[name] == getattr(target, name) for name in AXES if name in LocalTarget.model_fields)
                    and c["precision"] == "float32" and c["placement"] == (first.name if first else None) for c in choices)
        add(target, "float32", key, reference=True, added=None if asked else why, placement=first)

    for choice in choices:
        model, precision = choice["model"], str(choice["precision"])
        key = model_key(model)
        ensure_reference(model, "added: the float32 torch reference that the other cells' agreement is measured against")
        try:
            target = _applied(base.target, {k: v for k, v in choice.items() if k in LocalTarget.model_fields})
        except UserError as exc:
            out.dropped.append(Dropped(_probe_label(choice, precision), str(exc)))
            continue
        except ValidationError as exc:  # a value the target does not take at all (--cell backend=tensorflow)
            first = exc.errors()[0]
            field_name = ".".join(str(x) for x in first.get("loc", ()))
            out.dropped.append(Dropped(_probe_label(choice, precision),
                                       f"{one_line(field_name)} {one_line(first.get('input'))!s}: {one_line(first.get('msg', 'invalid'))}"))
            continue
        placement = placements[choice["placement"]] if choice["placement"] is not None else None
        why = _machine_refusal(target, have_cuda, where)
        if why:
            out.dropped.append(Dropped(label_of(target, precision, placement=placement), why))
            continue
        add(target, precision, key, placement=placement)
    for server in spec.servers:
        try:
            server_target = server.target()
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


def graph_key(target: LocalTarget) -> str | None:
    """The exported graph a cell loads: one per model, backend's file format and int8 setting."""
    if target.backend == "torch":
        return None
    return "|".join(x for x in (model_key(target.model), target.backend, target.quantize, int8_mode(target)) if x)

