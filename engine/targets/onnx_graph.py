"""The ONNX graphs the onnx and openvino backends run: exported from a sentence-transformers model,
optionally quantized to int8, and cached.

Only the model's first module (the ``Transformer``) becomes a graph; the modules after it (Pooling,
Dense, Normalize) stay sentence-transformers' own small torch modules, applied by the target.

sentence-transformers' own ``backend="onnx"`` needs optimum, which does not install beside
transformers 5; the graph is exported here with ``torch.onnx.export`` and cached outside the
repository (``$EMBPROF_CACHE_DIR``, else ``$XDG_CACHE_HOME/embprof``, else ``~/.cache/embprof``).
Every cached artifact is a folder built under a temporary name and renamed into place whole, so a
concurrent or interrupted export never leaves a half-written graph where a reader looks. An artifact
is keyed by what it is made from: the model's files by their bytes (``fingerprint``; their digests
kept in the cache's ``file-hashes.json``) and the exporting libraries' versions, never by the folder's
path or its files' times.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..files import cache_dir
from ..plan import LocalTarget
from ..versions import library_version
from ..text import first_line, one_line
from .base import model_folder
from .fingerprint import NOT_LOADED, FileHashes
from .local import SentenceTransformerTarget

__all__ = ["GraphInfo", "GraphSteps", "build_atomically", "cache_root", "check_extras", "ensure_graph", "graph_steps",
           "local_model_folder", "modules_config", "read_meta", "st_config"]

ONNX_OPSET = 17
# Bumped whenever what this module writes changes, so older cached artifacts are not reused.
FORMAT_VERSION = 2
GRAPH_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
META_FILE = "embprof_graph.json"
HASHES_FILE = "file-hashes.json"  # in the cache's root: the model files' digests, so the key does not hash gigabytes each load
EXTRA_HINT = "pip install 'embprof[backends]'"


@dataclass(frozen=True, slots=True)
class GraphInfo:
    """The graph a configuration runs, and what getting it cost in this call."""

    path: str  # model.onnx, or an OpenVINO IR's model.xml
    seconds: float  # exporting and quantizing in this call; 0.0 when everything was cached
    cached: bool  # nothing was exported or quantized in this call
    disk_bytes: int  # the graph file and its companions (external data, the IR's .bin)


def cache_root() -> Path:
    return cache_dir()


def _required_modules(spec: LocalTarget) -> tuple[str, ...]:
    if spec.backend == "openvino":
        return ("onnx", "openvino", "nncf") if spec.quantize == "int8" else ("onnx", "openvino")
    return ("onnx", "onnxruntime")


def check_extras(spec: LocalTarget) -> None:
    """Fail with one sentence, before anything loads, when the backend's packages are absent."""
    for name in _required_modules(spec):
        try:
            found = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            found = None
        if found is None:
            raise UserError(f"the {spec.backend} backend needs the optional packages: {EXTRA_HINT}")


# -- the model folder -----------------------------------------------------------------------------
def local_model_folder(st: SentenceTransformerTarget) -> Path:
    """The model's files on this disk: the folder, or the Hub snapshot (downloaded if it must be)."""
    spec = st.spec
    st.resolve()
    folder = model_folder(st.location)
    if folder is not None and (folder / "modules.json").is_file():
        return folder.resolve()
    from huggingface_hub import snapshot_download

    try:
        # Only what sentence-transformers itself would fetch: a repository's own onnx/ or openvino/
        # exports can be gigabytes this target never reads.
        return Path(snapshot_download(st.location, local_files_only=st.local_only, ignore_patterns=list(NOT_LOADED))).resolve()
    except Exception as exc:
        raise UserError(f"could not fetch model '{spec.display_name}': {first_line(exc)}") from exc


def modules_config(folder: Path) -> list[dict[str, Any]]:
    """The folder's modules.json: the Transformer first (the graph), then the modules the target applies after it."""
    path = folder / "modules.json"
    if not path.is_file():
        # A bare transformers folder: sentence-transformers adds mean pooling itself.
        return [{"path": "", "type": "sentence_transformers.models.Transformer"}]
    data = json.loads(path.read_text(encoding="utf-8"))
    if not data or not str(data[0].get("type", "")).endswith("Transformer"):
        raise UserError("the onnx and openvino backends export a model whose first module is a Transformer")
    return list(data)


def st_config(folder: Path) -> dict[str, Any]:
    """The folder's config_sentence_transformers.json (prompts, similarity function); empty when unreadable."""
    path = folder / "config_sentence_transformers.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# -- the cache -------------------------------------------------------------------------------------
def _versions(*names: str) -> list[str]:
    return [f"{name}={library_version(name) or 'absent'}" for name in names]


def _export_key(folder: Path) -> str:
    """The export's key: what the graph is made from, by content. The model's files' bytes (what
    sentence-transformers loads of them: its weights, configuration, tokenizer and any remote code),
    and the exporter's versions; not the folder's path (the same model copied elsewhere is the same
    graph) nor its files' times (a file rewritten in place with its size and mtime put back is not)."""
    hashes = FileHashes(cache_root() / HASHES_FILE)
    files = hashes.tree(folder, NOT_LOADED)
    hashes.save()
    parts = [f"format={FORMAT_VERSION}", f"opset={ONNX_OPSET}", *_versions("torch", "transformers", "sentence-transformers"),
             f"files={files.digest}"]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def _derived_key(base: str, *what: str) -> str:
    return hashlib.sha256("\n".join((base, *what)).encode()).hexdigest()[:24]


def _artifact_ready(folder: Path, graph_name: str) -> bool:
    return (folder / graph_name).is_file() and (folder / META_FILE).is_file()


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file() and f.name != META_FILE)


def build_atomically(final: Path, build: Callable[[Path], None]) -> None:
    """Run ``build(tmp_folder)`` and rename the folder into place whole.

    A rename onto an existing folder fails: then another process won the race, and its identical
    artifact is kept. The temporary folder is removed on every exit, so an error leaves nothing."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def read_meta(folder: Path) -> dict[str, Any]:
    """What the export wrote beside a graph: its inputs, the tokenizer's padding side, sizes and counts."""
    data = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def _onnx_weights(path: Path) -> tuple[int, int]:
    """(bytes, elements) of a graph's initializers, read without loading external data."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path), load_external_data=False)
    nbytes = elements = 0
    for init in model.graph.initializer:
        count = int(np.prod(init.dims)) if len(init.dims) else 1
        elements += count
        nbytes += count * np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize
    return nbytes, elements


def _export(folder: Path, spec: LocalTarget, out: Path) -> None:
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu", trust_remote_code=spec.trust_remote_code)
    transformer: Any = model[0]
    tokenizer = transformer.tokenizer
    sample = tokenizer(
        ["an exported graph must keep its batch and sequence axes free", "short"],
        padding=True, truncation=True, return_tensors="pt",
    )
    names = [n for n in GRAPH_INPUTS if n in sample]

    class TokenEmbeddings(torch.nn.Module):
        """The Transformer module's own forward, so the graph computes what sentence-transformers does."""

        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *tensors: Any) -> Any:
            return self.inner(dict(zip(names, tensors)))["token_embeddings"]

    wrapper = TokenEmbeddings(transformer).eval()
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["token_embeddings"] = {0: "batch", 1: "sequence"}
    with warnings.catch_warnings(), torch.no_grad():
        # The legacy TorchScript exporter: one trace, no onnxscript rewriting, and it keeps both
        # axes dynamic; its tracer warnings are about branches on shapes that do not change results.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, tuple(sample[n] for n in names), str(out / "model.onnx"),
            input_names=names, output_names=["token_embeddings"], dynamic_axes=axes,
            opset_version=ONNX_OPSET, dynamo=False,
        )
    nbytes, elements = _onnx_weights(out / "model.onnx")
    meta = {
        "inputs": names,
        "padding_side": str(getattr(tokenizer, "padding_side", "right")),
        "max_seq_length": transformer.max_seq_length,
        "do_lower_case": bool(getattr(transformer, "do_lower_case", False)),
        "hidden_size": int(transformer.get_embedding_dimension()),
        "weights_bytes": nbytes,
        "parameters": elements,
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")


def _export_as_keyed(folder: Path, spec: LocalTarget, out: Path, key: str) -> None:
    """The export, refused if the model's files changed while it read them: the graph would be filed
    under the key of files it was not made from."""
    _export(folder, spec, out)
    if _export_key(folder) != key:
        raise UserError(f"the files of model '{one_line(spec.display_name)}' changed while it was exported: run it again")


def _quantize_ort(source: Path, mode: str, out: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # quant_pre_process is skipped: its symbolic shape inference fails on this exporter's BERT graphs,
    # and without it (ONNX shape inference + optimisation only) MiniLM's agreement is identical.
    big = sum(f.stat().st_size for f in source.parent.iterdir() if f.is_file()) > 1_800_000_000
    root = logging.getLogger()
    quiet = _DropPreprocessAdvice()
    # quantize_dynamic advises pre-processing on the root logger, into the middle of embprof's output.
    root.addFilter(quiet)
    try:
        quantize_dynamic(
            str(source), str(out / "model.onnx"), weight_type=QuantType.QInt8,
            per_channel=(mode == "per-channel"), use_external_data_format=big,
        )
    finally:
        root.removeFilter(quiet)
    meta = read_meta(source.parent)
    # The model's parameters are the float graph's; the int8 graph's extra scales and zero points are not parameters.
    meta["weights_bytes"] = _onnx_weights(out / "model.onnx")[0]
    (out / META_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")


class _DropPreprocessAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def _quantize_openvino(source: Path, out: Path) -> None:
    import nncf
    import openvino as ov

    core = ov.Core()
    level = nncf.nncf_logger.level
    nncf.set_log_level(logging.WARNING)  # its bit-width table is for notebooks, not a profiler's output
    try:
        # nncf's default weight compression is INT8_ASYM (per output channel, asymmetric): OpenVINO
        # has no per-tensor choice to mirror ONNX Runtime's quantize_mode.
        compressed = nncf.compress_weights(core.read_model(str(source)), mode=nncf.CompressWeightsMode.INT8_ASYM)
    finally:
        nncf.set_log_level(level)
    ov.save_model(compressed, str(out / "model.xml"), compress_to_fp16=False)
    meta = read_meta(source.parent)
    meta["weights_bytes"] = _openvino_weights(compressed)[0]
    (out / META_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")


def _openvino_weights(model: Any) -> tuple[int, int]:
    nbytes = elements = 0
    for op in model.get_ops():
        if op.get_type_name() == "Constant":
            shape = op.get_output_partial_shape(0).to_shape()
            count = int(np.prod(list(shape))) if len(shape) else 1
            elements += count
            nbytes += (count * op.get_output_element_type(0).bitwidth + 7) // 8
    return nbytes, elements


# One artifact of a configuration: its folder in the cache, its graph file's name, and what builds the folder.
Step = tuple[Path, str, Callable[[Path], None]]


@dataclass(frozen=True)
class GraphSteps:
    """The artifacts one configuration needs, in build order (the export, then any quantized graph)."""

    spec: LocalTarget
    steps: tuple[Step, ...]

    @property
    def ready(self) -> bool:
        """Every artifact is in the cache already: nothing to export or quantize."""
        return all(_artifact_ready(directory, name) for directory, name, _ in self.steps)

    def ensure(self) -> GraphInfo:
        """Build what the cache lacks, in order; the last artifact is the graph that runs."""
        seconds = 0.0
        built = False
        for directory, name, builder in self.steps:
            if _artifact_ready(directory, name):
                continue
            t0 = time.perf_counter()
            try:
                build_atomically(directory, builder)
            except UserError:
                raise
            except Exception as exc:
                raise UserError(f"could not export '{self.spec.display_name}' to ONNX: {first_line(exc)}") from exc
            seconds += time.perf_counter() - t0
            built = True
        directory, name, _ = self.steps[-1]
        return GraphInfo(path=str(directory / name), seconds=seconds, cached=not built, disk_bytes=_folder_bytes(directory))


def graph_steps(spec: LocalTarget, folder: Path) -> GraphSteps:
    """The artifacts this configuration needs, keyed by the model's files: worked out once a load, since
    the keys walk the whole folder."""
    base = _export_key(folder)
    root = cache_root()
    export_dir = root / "onnx" / base
    steps: list[Step] = [
        (export_dir, "model.onnx", lambda out: _export_as_keyed(folder, spec, out, base)),
    ]
    source = export_dir / "model.onnx"
    if spec.quantize == "int8" and spec.backend == "onnx":
        key = _derived_key(base, "ort-int8", spec.quantize_mode, *_versions("onnxruntime", "onnx"))
        steps.append((root / "onnx" / key, "model.onnx", lambda out: _quantize_ort(source, spec.quantize_mode, out)))
    elif spec.quantize == "int8" and spec.backend == "openvino":
        key = _derived_key(base, "ov-int8-asym", *_versions("openvino", "nncf"))
        steps.append((root / "openvino" / key, "model.xml", lambda out: _quantize_openvino(source, out)))
    return GraphSteps(spec, tuple(steps))


def ensure_graph(spec: LocalTarget) -> GraphInfo:
    """The graph this configuration runs, exported (and quantized) unless the cache has it.

    The matrix runner calls this once per configuration before its cells, so that the export's
    minutes are reported apart from each cell's load time."""
    if spec.backend not in ("onnx", "openvino"):
        raise ValueError(f"ensure_graph is for the onnx and openvino backends, not {spec.backend}")
    check_extras(spec)
    return graph_steps(spec, local_model_folder(SentenceTransformerTarget(spec))).ensure()
