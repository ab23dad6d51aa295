"""From a plan's target part to a target: the one place that knows which class serves which plan.

It sits above the three kinds of target and below everything that needs one: the run's entry point
builds the run's target here, and hands ``make_target`` to a workload that needs a second one."""

from __future__ import annotations

from ..plan import LocalTarget, ServerTarget
from .base import Target


def make_target(plan: LocalTarget | ServerTarget) -> Target:
    """A target of the plan's kind, not yet resolved or loaded."""
    # Each kind is imported only when asked for: a server run never imports the ONNX cache, and a
    # local one never imports the HTTP client.
    if isinstance(plan, ServerTarget):
        from .http import HttpTarget

        return HttpTarget(plan)
    if plan.backend != "torch":
        from .onnx import OnnxTarget

        return OnnxTarget(plan)
    from .local import SentenceTransformerTarget

    return SentenceTransformerTarget(plan)
