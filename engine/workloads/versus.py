"""``--vs MODEL``: two targets on the same workload in one process, alternately, so that machine
drift cancels. Pairs run in ABBA order (A B, B A, A B, …): a slow drift adds as much to A as to B."""

from __future__ import annotations

from typing import Any, Literal

from ..context import RunContext
from ..errors import UserError
from ..events import Result
from ..plan import LocalTarget
from ..results import VersusResult
from ..stats import describe
from ..sweepstats import paired_ratio
from ..targets import (
    SentenceTransformerTarget,
    Target,
    TargetFactory,
    check_prompt_name,
)
from ..workload_facts import VersusFacts
from .encode import EncodeWorkload
from .speed import SpeedWorkload


class VersusWorkload:
    def __init__(self, inner: EncodeWorkload | SpeedWorkload, other_model: str | None, pairs: int,
                 make_target: TargetFactory) -> None:
        self.inner = inner
        self.other_model = other_model  # None: the bundled all-MiniLM-L6-v2
        self.pairs = pairs
        self.make_target = make_target

    @property
    def name(self) -> str:
        return f"{self.inner.name}-vs"

    def prepare(self) -> None:
        self.inner.prepare()
        self.make_target(LocalTarget(model=self.other_model)).resolve()  # a bad name fails now, not after the first load

    def prompt_names(self) -> list[str]:
        return self.inner.prompt_names()

    def facts(self) -> VersusFacts:
        name: Literal["encode-vs", "speed-vs"] = "encode-vs" if isinstance(self.inner, EncodeWorkload) else "speed-vs"
        return VersusFacts(name=name, inner=self.inner.facts(), vs_model=self.other_model or "bundled all-MiniLM-L6-v2",
                           pairs=self.pairs)

    def _texts(self) -> list[str]:
        if isinstance(self.inner, SpeedWorkload):
            return self.inner.text.paragraphs
        return self.inner.lines

    def run(self, ctx: RunContext, target: Target) -> None:
        if not isinstance(target, SentenceTransformerTarget):
            raise UserError("--vs compares two local models")
        # The same settings (device, dtype …) as the run's target, another model: not loaded yet.
        other = self.make_target(target.spec.model_copy(update={"model": self.other_model}))
        other.resolve()
        other.load(ctx)
        try:
            self._alternate(ctx, target, other)
        finally:
            other.close()

    def _alternate(self, ctx: RunContext, a: Target, b: Target) -> None:
        texts = self._texts()
        kw: dict[str, Any] = {"batch_size": self.inner.batch_size}
        if isinstance(self.inner, EncodeWorkload):
            p = self.inner.plan
            kw.update(mode=p.mode, prompt_name=p.prompt_name, prompt=p.prompt)
            if p.prompt_name:
                check_prompt_name(p.prompt_name, b.prompts, "the --vs model's")
        for tag, t in (("A", a), ("B", b)):
            with ctx.phase("warm-up", f"{tag}"):
                t.encode(ctx, texts, label=f"{tag} warm-up", group=tag, warmup=True, **kw)
        times: dict[str, list[float]] = {"A": [], "B": []}
        for i in range(self.pairs):
            order = (("A", a), ("B", b)) if i % 2 == 0 else (("B", b), ("A", a))
            for tag, t in order:
                ctx.check_cancel()
                with ctx.phase("encode", f"{tag} {i + 1}/{self.pairs}"):
                    out = t.encode(ctx, texts, label=f"{tag} pair {i + 1}", group=tag, **kw)
                times[tag].append(out.duration_ns / 1e9)
        r = paired_ratio(times["A"], times["B"])
        ctx.emit(
            Result(
                t_ns=ctx.now(),
                result=VersusResult(
                    a=a.describe(),
                    b=b.describe(),
                    texts=len(texts),
                    a_stats=describe(times["A"]),
                    b_stats=describe(times["B"]),
                    ratios=tuple(r["ratios"]),
                    median_ratio=r["median_ratio"] if r["ratios"] else None,
                    ci95=tuple(r["ci95"]) if r["ci95"] else None,
                    p_value=r["p_value"],
                    beyond_noise=r["beyond_noise"],
                    test=r["test"],
                ),
            )
        )
