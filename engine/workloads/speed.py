"""The MTEB v1 SpeedTask protocol, which mteb 2.x dropped: one warm-up encode of ["encode this"],
then ``loops`` timed encodes of the 43 paragraphs of "The Ugly Duckling"."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..context import RunContext
from ..events import Result
from ..plan import SpeedPlan
from ..results import SpeedResult
from ..speedtext import SpeedText, resolve_speed_text
from ..stats import describe
from ..targets import Target
from ..workload_facts import SpeedFacts


class SpeedWorkload:
    name = "speed"

    def __init__(self, plan: SpeedPlan) -> None:
        self.plan = plan
        self._text: SpeedText | None = None

    @property
    def batch_size(self) -> int:
        return self.plan.batch_size

    def prepare(self) -> None:
        self._text = resolve_speed_text(self.plan.text)

    @property
    def text(self) -> SpeedText:
        if self._text is None:
            self.prepare()
        assert self._text is not None
        return self._text

    def prompt_names(self) -> list[str]:
        return []

    def facts(self) -> SpeedFacts:
        t = self.text
        return SpeedFacts(text_path=t.path, text_source=t.source, text_sha256=t.sha256, text_is_canonical=t.canonical,
                          paragraphs=len(t.paragraphs), words=t.words)

    def run(self, ctx: RunContext, target: Target) -> None:
        ctx.emit(Result(t_ns=ctx.now(), result=self.measure(ctx, target)))

    def measure(self, ctx: RunContext, target: Target) -> SpeedResult:
        timings, _last = timed_loops(ctx, target, self.text.paragraphs, self.plan.loops, self.plan.batch_size)
        task, why = speed_task_name(target)
        time_mean = float(np.mean(timings))
        return SpeedResult(
            task_name=task,
            task_name_why=why,
            # mteb 1.x's own fields and formulas: population std, words / mean time.
            time_mean=time_mean,
            time_std=float(np.std(timings)),
            timings=tuple(timings),
            avg_words_per_sec=self.text.words / time_mean,
            words=self.text.words,
            stats=describe(timings),
        )


def timed_loops(ctx: RunContext, target: Target, texts: Sequence[str], loops: int, batch: int, *, phase: str = "encode",
                group: str = "loop") -> tuple[list[float], np.ndarray]:
    """The protocol's timing: one warm-up encode of ["encode this"], then ``loops`` timed encodes of
    ``texts``, each its own phase. Seconds per call, and the last call's embeddings."""
    with ctx.phase("warm-up", '["encode this"]'):
        target.encode(ctx, ["encode this"], batch_size=batch, label="warm-up", group="warm-up", warmup=True)
    timings: list[float] = []
    last: np.ndarray | None = None
    for i in range(loops):
        ctx.check_cancel()
        with ctx.phase(phase, f"loop {i + 1}/{loops}"):
            outcome = target.encode(ctx, texts, batch_size=batch, label=f"loop {i + 1}", group=group)
        timings.append(outcome.duration_ns / 1e9)
        last = outcome.embeddings
    assert last is not None  # loops >= 1, checked by the plans
    return timings, np.asarray(last)


def speed_task_name(target: Target) -> tuple[str | None, str]:
    """mteb 1.x's CPUSpeedTask or GPUSpeedTask, as the device says; neither for a server or mps."""
    if not target.capabilities.local_device:
        return None, "a server: where it computes is its own business, so it is neither CPUSpeedTask nor GPUSpeedTask"
    device = target.device or ""
    if device == "cpu":
        return "CPUSpeedTask", ""
    if device.startswith("cuda"):
        return "GPUSpeedTask", ""
    return None, f"device {device}: mteb's SpeedTasks name only cpu and cuda"
