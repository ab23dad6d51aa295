"""The one entry point from a plan to a run: only here do plans become workloads, and the run's target
is built (by ``targets.make_target``, which a workload that needs a second target is handed too).

``prepare(plan)`` checks everything that needs the machine before anything loads (files exist,
the model or server is there, prompt names are known) and fails with one sentence (UserError);
``PreparedRun.runner(subscribers)`` gives the Runner that does the work on its thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .events import Subscriber
from .plan import (
    CellPlan,
    EncodePlan,
    LoadPlan,
    MtebPlan,
    RunPlan,
    SimilarityPlan,
    SpeedPlan,
    SweepPlan,
    TrainPlan,
)
from .runner import Runner
from .targets import Target, make_target
from .workloads import Workload, check_prompt_names


def make_workload(plan: Any) -> Workload:
    """The workload of a plan's workload part, not yet prepared."""
    inner: Workload
    if isinstance(plan, EncodePlan):
        from .workloads.encode import EncodeWorkload

        inner = EncodeWorkload(plan, make_target)
    elif isinstance(plan, SpeedPlan):
        from .workloads.speed import SpeedWorkload

        inner = SpeedWorkload(plan)
    elif isinstance(plan, SimilarityPlan):
        from .workloads.similarity import SimilarityWorkload

        return SimilarityWorkload(plan)
    elif isinstance(plan, SweepPlan):
        from .workloads.sweep import SweepWorkload

        return SweepWorkload(plan, make_target)
    elif isinstance(plan, LoadPlan):
        from .workloads.load import LoadWorkload

        return LoadWorkload(plan)
    elif isinstance(plan, MtebPlan):
        from .workloads.mteb_tasks import MtebWorkload

        return MtebWorkload(plan)
    elif isinstance(plan, TrainPlan):
        from .workloads.train import TrainWorkload

        return TrainWorkload(plan)
    elif isinstance(plan, CellPlan):
        from .workloads.cell import CellWorkload

        return CellWorkload(plan)
    else:
        raise TypeError(f"no workload for {type(plan).__name__}")
    if plan.vs is not None:
        from .workloads.versus import VersusWorkload

        return VersusWorkload(inner, None if plan.vs == "bundled" else plan.vs, plan.repeats if isinstance(plan, EncodePlan) else plan.loops,
                              make_target)
    return inner


@dataclass
class PreparedRun:
    plan: RunPlan
    target: Target
    workload: Workload

    def runner(self, subscribers: list[Subscriber], *, nvml: Any = "auto") -> Runner:
        return Runner(self.target, self.workload, plan=self.plan, subscribers=subscribers, nvml=nvml)


def prepare(plan: RunPlan) -> PreparedRun:
    """Everything a run needs, checked: bad input fails here, before anything is loaded or saved."""
    workload = make_workload(plan.workload)
    workload.prepare()
    target = make_target(plan.target)
    target.resolve()
    check_prompt_names(workload, target)
    return PreparedRun(plan, target, workload)
