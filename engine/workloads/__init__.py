"""Workloads: what the runner asks a target to do. Each validates its inputs in ``prepare()``,
before any model is loaded, and does its work in ``run()`` on the runner thread."""

from __future__ import annotations

from typing import Any, Protocol

from ..context import RunContext
from ..errors import UserError
from ..targets import Target


class Workload(Protocol):
    name: str

    def prepare(self) -> None: ...
    def settings(self) -> dict[str, Any]: ...
    def run(self, ctx: RunContext, target: Target) -> None: ...
    def prompt_names(self) -> list[str]: ...


def check_prompt_names(workload: Workload, target: Target) -> None:
    """Refuse an unknown prompt name before the model is loaded, when the model folder says its prompts."""
    declared = target.declared_prompts()
    if declared is None:
        return  # not knowable before loading; the target refuses it then
    for name in workload.prompt_names():
        if name not in declared:
            known = ", ".join(sorted(declared)) or "none"
            raise UserError(f"unknown prompt name '{name}': this model's prompts are {known}")


WORKLOADS = ("speed", "encode", "similarity")
