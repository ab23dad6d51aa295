"""Targets: the thing being profiled. A sentence-transformers model in this process (``local``), the
same model exported to ONNX and run by ONNX Runtime or OpenVINO (``onnx``, its graphs in
``onnx_graph``), or an embedding server (``http``, speaking ``protocol``). ``base`` is what they all
are to a workload; ``factory`` builds the right one from a plan.

Here only the names most callers need; the concrete server and ONNX targets are imported from their
own modules, so that importing this package imports neither."""

from __future__ import annotations

from .base import (
    Capabilities,
    EncodeOutcome,
    Target,
    TargetFactory,
    bundled_model_dir,
    check_prompt_name,
    default_prompt_name,
    model_folder,
    prompts_added_at_load,
    resolve_prompt_text,
)
from .factory import make_target
from .local import SentenceTransformerTarget, declared_prompts_of

__all__ = [
    "Capabilities",
    "EncodeOutcome",
    "SentenceTransformerTarget",
    "Target",
    "TargetFactory",
    "bundled_model_dir",
    "check_prompt_name",
    "declared_prompts_of",
    "default_prompt_name",
    "make_target",
    "model_folder",
    "prompts_added_at_load",
    "resolve_prompt_text",
]
