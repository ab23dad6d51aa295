"""Workloads: what the runner asks a target to do. Each is built from its part of a run plan
(``execute.make_workload``), checks what needs the machine in ``prepare()`` (files, task data),
before any model is loaded, and does its work in ``run()`` on the runner thread."""

from __future__ import annotations

from typing import Protocol

from ..context import RunContext
from ..targets import Target, check_prompt_name
from ..workload_facts import WorkloadFacts


class Workload(Protocol):
    @property
    def name(self) -> str: ...

    def prepare(self) -> None: ...
    def facts(self) -> WorkloadFacts: ...
    def run(self, ctx: RunContext, target: Target) -> None: ...
    def prompt_names(self) -> list[str]: ...


def check_prompt_names(workload: Workload, target: Target) -> None:
    """Refuse an unknown prompt name before the model is loaded, when the model folder says its prompts."""
    declared = target.declared_prompts()
    if declared is None:
        return  # not knowable before loading; the target refuses it then
    for name in workload.prompt_names():
        check_prompt_name(name, declared)
