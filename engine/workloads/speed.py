"""The MTEB v1 SpeedTask protocol, which mteb 2.x dropped: one warm-up encode of ["encode this"],
then ``loops`` timed encodes of the 43 paragraphs of "The Ugly Duckling"."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..context import RunContext
from ..errors import UserError
from ..events import Result
from ..speedtext import SpeedText, resolve_speed_text
from ..stats import describe
from ..targets import Target


@dataclass
class SpeedWorkload:
    text_file: str | None = None
    loops: int = 7
    batch_size: int = 32
    name: str = "speed"
    _text: SpeedText | None = field(default=None, repr=False)

    def prepare(self) -> None:
        if self.loops < 1:
            raise UserError(f"--loops must be at least 1, not {self.loops}")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, not {self.batch_size}")
        self._text = resolve_speed_text(self.text_file)

    @property
    def text(self) -> SpeedText:
        if self._text is None:
            self.prepare()
        assert self._text is not None
        return self._text

    def prompt_names(self) -> list[str]:
        return []

    def settings(self) -> dict[str, Any]:
        t = self.text
        return {
            "name": self.name,
            "protocol": "MTEB v1 SpeedTask",
            "loops": self.loops,
            "batch_size": self.batch_size,
            "warmups": 1,
            "text_path": t.path,
            "text_source": t.source,
            "text_sha256": t.sha256,
            "text_is_canonical": t.canonical,
            "paragraphs": len(t.paragraphs),
            "words": t.words,
        }

    def run(self, ctx: RunContext, target: Target) -> None:
        ctx.emit(Result(t_ns=ctx.now(), name="speed", data=self.measure(ctx, target)))

    def measure(self, ctx: RunContext, target: Target) -> dict[str, Any]:
        paragraphs = self.text.paragraphs
        with ctx.phase("warm-up", '["encode this"]'):
            target.encode(ctx, ["encode this"], batch_size=self.batch_size, label="warm-up", warmup=True)
        timings: list[float] = []
        for i in range(self.loops):
            ctx.check_cancel()
            with ctx.phase("encode", f"loop {i + 1}/{self.loops}"):
                outcome = target.encode(ctx, paragraphs, batch_size=self.batch_size, label=f"loop {i + 1}")
            timings.append(outcome.duration_ns / 1e9)
        device = str(target.describe().get("device_resolved", "cpu"))
        task = "CPUSpeedTask" if device == "cpu" else "GPUSpeedTask"
        time_mean = float(np.mean(timings))
        return {
            "task_name": task,
            # mteb 1.x's own fields and formulas: population std, words / mean time.
            "time_mean": time_mean,
            "time_std": float(np.std(timings)),
            "timings": timings,
            "avg_words_per_sec": self.text.words / time_mean,
            "words": self.text.words,
            "stats": describe(timings),
        }
