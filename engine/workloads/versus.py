"""``--vs MODEL``: two targets on the same workload in one process, alternately, so that machine
drift cancels. Pairs run in ABBA order (A B, B A, A B, …): a slow drift adds as much to A as to B."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ..context import RunContext
from ..errors import UserError
from ..events import Result
from ..stats import describe
from ..sweepstats import paired_ratio
from ..targets import SentenceTransformerTarget, Target, TargetSpec
from .encode import EncodeWorkload
from .speed import SpeedWorkload


@dataclass
class VersusWorkload:
    inner: EncodeWorkload | SpeedWorkload
    other_model: str | None  # None: the bundled all-MiniLM-L6-v2
    pairs: int = 7

    @property
    def name(self) -> str:
        return f"{self.inner.name}-vs"

    def prepare(self) -> None:
        self.inner.prepare()
        if self.pairs < 2:
            raise UserError(f"--vs needs at least 2 pairs, not {self.pairs}")
        SentenceTransformerTarget(TargetSpec(model=self.other_model)).resolve()

    def prompt_names(self) -> list[str]:
        return self.inner.prompt_names()

    def settings(self) -> dict[str, Any]:
        return {**self.inner.settings(), "name": self.name, "vs_model": self.other_model or "bundled all-MiniLM-L6-v2",
                "pairs": self.pairs, "order": "ABBA"}

    def _texts(self) -> list[str]:
        if isinstance(self.inner, SpeedWorkload):
            return self.inner.text.paragraphs
        return self.inner.lines

    def run(self, ctx: RunContext, target: Target) -> None:
        other = SentenceTransformerTarget(replace(target.spec, model=self.other_model))
        other.load(ctx)
        try:
            self._alternate(ctx, target, other)
        finally:
            other.close()

    def _alternate(self, ctx: RunContext, a: Target, b: Target) -> None:
        texts = self._texts()
        kw: dict[str, Any] = {"batch_size": self.inner.batch_size}
        if isinstance(self.inner, EncodeWorkload):
            kw.update(mode=self.inner.mode, prompt_name=self.inner.prompt_name, prompt=self.inner.prompt)
            if self.inner.prompt_name and self.inner.prompt_name not in b.prompts:
                raise UserError(f"--vs model has no prompt named '{self.inner.prompt_name}' (its prompts: {', '.join(sorted(b.prompts)) or 'none'})")
        for tag, t in (("A", a), ("B", b)):
            with ctx.phase("warm-up", f"{tag}"):
                t.encode(ctx, texts, label=f"{tag} warm-up", warmup=True, **kw)
        times: dict[str, list[float]] = {"A": [], "B": []}
        for i in range(self.pairs):
            order = (("A", a), ("B", b)) if i % 2 == 0 else (("B", b), ("A", a))
            for tag, t in order:
                ctx.check_cancel()
                with ctx.phase("encode", f"{tag} {i + 1}/{self.pairs}"):
                    out = t.encode(ctx, texts, label=f"{tag} pair {i + 1}", **kw)
                times[tag].append(out.duration_ns / 1e9)
        ratio = paired_ratio(times["A"], times["B"])
        ctx.emit(
            Result(
                t_ns=ctx.now(),
                name="vs",
                data={
                    "a": a.describe(),
                    "b": b.describe(),
                    "texts": len(texts),
                    "a_stats": describe(times["A"]),
                    "b_stats": describe(times["B"]),
                    **ratio,
                },
            )
        )
