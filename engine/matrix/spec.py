"""What a matrix measures and the cells it expands into.

The matrix is data (``MatrixSpec``, from the command line or a TOML/YAML file). ``expand`` turns it
into cells, each a ``RunPlan`` with a ``CellPlan`` workload, in run order, and says for every
combination it drops why. A cell's id is a digest of what makes it a different measurement, so a
matrix run again finds the cells it already has.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_serializer, field_validator

from ..errors import UserError
from ..files import MAX_JSON_BYTES, expand_path, json_depth_exceeds, read_file_bytes, read_json_file
from ..plan import (
    BUNDLED_MODEL_ID,
    PRECISIONS,
    CellPlan,
    LocalTarget,
    Placement,
    Recording,
    RunPlan,
    ServerTarget,
    strip_credentials,
)
from ..text import first_line, one_line

MATRIX_VERSION: Literal[1] = 1


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
        first = first_line(exc)
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
    from ..environment import gpus

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


def graph_key(target: LocalTarget) -> str | None:
    """The exported graph a cell loads: one per model, backend's file format and int8 setting."""
    if target.backend == "torch":
        return None
    return "|".join(x for x in (model_key(target.model), target.backend, target.quantize, int8_mode(target)) if x)

