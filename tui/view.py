"""What the dashboard holds of one run: the engine's fold plus bounded buffers for the charts.

Every figure (peaks, per-phase peaks, latency per kind of call, throughput) comes from the engine's
``RunState``, the same fold the snapshot's summary is computed by, so the screen and the file cannot
disagree. The view adds only what a chart draws (the recent batches, calls, resource samples and training steps,
bounded: a day-long run keeps the app's own memory flat) and per-kind version counters, so a panel
redraws only when what it draws changed.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from embprof.engine.events import (
    BatchTimed,
    EncodeTimed,
    Event,
    PhaseEnded,
    PhaseStarted,
    RequestTimed,
    ResourceSample,
    TrainStep,
)
from embprof.engine.fold import RunState
from embprof.engine.plan import RunPlan

MAX_BATCHES = 5_000
MAX_CALLS = 5_000
MAX_SAMPLES = 3_600  # six minutes at 10 Hz on screen; the fold and the snapshot keep the whole run
MAX_STEPS_KEPT = 5_000  # a training run's latest steps on the charts; the fold's figures cover every step
PROGRESS = re.compile(r"(\d+)/(\d+)")
STATE_OF_STATUS = {"complete": "done", "incomplete": "stopped", "failed": "failed"}
KINDS = ("timing", "samples", "results", "phases", "training")


@dataclass(frozen=True, slots=True)
class TimedPoint:
    """One batch or one encode call, as a chart draws it."""

    t_s: float
    seconds: float
    warmup: bool
    group: str


@dataclass(eq=False)
class RunView:
    key: str
    source: Literal["live", "snapshot"] = "live"
    plan: RunPlan | None = None  # what "run again" runs; None for a migrated snapshot that lacks one
    plan_note: str = ""  # why there is no plan, when there is none
    snapshot_path: str | None = None
    run: RunState = field(default_factory=RunState)
    batches: deque[TimedPoint] = field(default_factory=lambda: deque(maxlen=MAX_BATCHES))
    calls: deque[TimedPoint] = field(default_factory=lambda: deque(maxlen=MAX_CALLS))
    samples: deque[ResourceSample] = field(default_factory=lambda: deque(maxlen=MAX_SAMPLES))
    steps: deque[TrainStep] = field(default_factory=lambda: deque(maxlen=MAX_STEPS_KEPT))
    # Per kind of data: a sample every 100 ms must not rebuild the latency charts.
    versions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    gpu_seen: bool = False  # a sample came with NVML's device figures

    def apply_all(self, events: list[Event]) -> None:
        for e in events:
            self.apply(e)

    def apply(self, e: Event) -> None:
        self.run.apply(e)
        if isinstance(e, ResourceSample):
            self.samples.append(e)
            self.versions["samples"] += 1
            if e.gpu_total_mib is not None:
                self.gpu_seen = True
        elif isinstance(e, BatchTimed):
            self.batches.append(TimedPoint(e.t_ns / 1e9, e.duration_ns / 1e9, e.warmup, e.group))
            self.versions["timing"] += 1
        elif isinstance(e, EncodeTimed):
            self.calls.append(TimedPoint(e.t_ns / 1e9, e.duration_ns / 1e9, e.warmup, e.group))
            self.versions["timing"] += 1
        elif isinstance(e, RequestTimed):
            self.versions["timing"] += 1
        elif isinstance(e, TrainStep):
            self.steps.append(e)
            self.versions["training"] += 1
        elif isinstance(e, (PhaseStarted, PhaseEnded)):
            self.versions["phases"] += 1
        else:
            self.versions["results"] += 1

    def saved(self, path: str) -> None:
        self.snapshot_path = path
        self.versions["results"] += 1

    # -- read by the panels --------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.run.status is not None

    @property
    def running(self) -> bool:
        return self.run.status is None and self.source == "live"

    @property
    def state(self) -> str:
        """starting, loading, warming up, running, done, stopped or failed."""
        if self.run.status is not None:
            return STATE_OF_STATUS[self.run.status]
        if not self.run.phases:
            return "starting"
        name = self.run.phases[-1].name
        return "loading" if name in ("import", "load") else "warming up" if name == "warm-up" else "running"

    @property
    def state_text(self) -> str:
        state = self.state
        if state == "running":
            m = PROGRESS.search(self.run.phases[-1].detail)
            if m:
                return f"running {m.group(1)}/{m.group(2)}"
        return state

    @property
    def has_gpu(self) -> bool:
        # Kept as a flag: the Memory panel asks on every redraw, and without a GPU a scan finds nothing.
        return self.gpu_seen

    @property
    def elapsed_s(self) -> float:
        return self.run.duration_s if self.run.duration_s is not None else self.run.last_t_s

    @property
    def workload_name(self) -> str:
        return self.run.workload.name if self.run.workload is not None else ""

    @property
    def training(self) -> bool:
        """A training run: it has steps, or its workload (as run, or as planned before the run has said) is train."""
        if self.run.training is not None or self.workload_name == "train":
            return True
        return self.run.workload is None and self.plan is not None and self.plan.workload.name == "train"

    @property
    def model_name(self) -> str:
        return self.run.target.model_name if self.run.target is not None else ""
