"""Encode lines as queries, documents, or with any named or raw prompt; time every call and batch."""

from __future__ import annotations

from importlib import resources
from typing import Any

import numpy as np

from ..context import RunContext
from ..errors import UserError
from ..events import Result
from ..files import read_lines
from ..plan import EncodePlan, LocalTarget
from ..results import Agreement, EncodeResult, TokenLengths
from ..stats import describe
from ..targets import Target, TargetFactory
from ..workload_facts import EncodeFacts


def sample_corpus() -> list[str]:
    """embprof's own sample: a few dozen lines of mixed length, English and Japanese."""
    text = resources.files("embprof.engine").joinpath("data/sample_corpus.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


class EncodeWorkload:
    name = "encode"

    def __init__(self, plan: EncodePlan, make_target: TargetFactory) -> None:
        self.plan = plan
        self.make_target = make_target  # --compare-model's local model
        self._lines: list[str] = []

    def prepare(self) -> None:
        p = self.plan
        if p.texts is not None:
            self._lines = [t for t in p.texts if t.strip()]
        else:
            self._lines = sample_corpus() if p.input is None else read_lines(p.input)

    @property
    def lines(self) -> list[str]:
        if not self._lines:
            self.prepare()
        return self._lines

    @property
    def batch_size(self) -> int:
        return self.plan.batch_size

    def prompt_names(self) -> list[str]:
        return [self.plan.prompt_name] if self.plan.prompt_name else []

    def facts(self) -> EncodeFacts:
        p = self.plan
        source = p.input if p.input is not None else "standard input" if p.texts is not None else "built-in sample corpus"
        return EncodeFacts(input=source, lines=len(self.lines))

    def run(self, ctx: RunContext, target: Target) -> None:
        p = self.plan
        lines = self.lines
        kw: dict[str, Any] = {"mode": p.mode, "prompt_name": p.prompt_name, "prompt": p.prompt, "batch_size": p.batch_size,
                              "group": "encode"}
        if p.compare_model is not None:  # given with a server only
            from ..targets.http import HttpTarget

            if isinstance(target, HttpTarget):
                # The model the server's vectors are held against is the one whose tokenizer its counts are held against.
                target.check_counts_with(p.compare_model)
        for i in range(p.warmups):
            with ctx.phase("warm-up", f"{i + 1}/{p.warmups}"):
                target.encode(ctx, lines, label=f"warm-up {i + 1}", warmup=True, **kw)
        times: list[float] = []
        tokens: list[int | None] = []
        dim: int | None = None
        for i in range(p.repeats):
            ctx.check_cancel()
            with ctx.phase("encode", f"repeat {i + 1}/{p.repeats}"):
                outcome = target.encode(ctx, lines, label=f"repeat {i + 1}", **kw)
            times.append(outcome.duration_ns / 1e9)
            tokens.append(outcome.tokens)
            dim = int(outcome.embeddings.shape[-1]) if outcome.embeddings.ndim == 2 else None
        used_prompt = target.last_prompt
        lengths = np.asarray(target.token_lengths(lines, used_prompt))
        limit = target.max_seq_length
        over = int((lengths > limit).sum()) if limit and lengths.size else 0
        if p.compare_model is not None:
            self._agreement(ctx, lines, outcome.embeddings, used_prompt)
        if lengths.size:  # a server without a tokenizer endpoint has no length statistics to give
            self._emit_tokens(ctx, lengths, limit, over, used_prompt)
        mean_t = float(np.mean(times))
        words = sum(len(line.split()) for line in lines)
        counted = [t for t in tokens if t is not None]
        ctx.emit(
            Result(
                t_ns=ctx.now(),
                result=EncodeResult(
                    lines=len(lines),
                    embedding_dim=dim,
                    mode=p.mode,
                    prompt_name=p.prompt_name,
                    prompt_used=used_prompt or "",
                    stats=describe(times),
                    items_per_s=len(lines) / mean_t if mean_t > 0 else None,
                    # Only when every call's tokens were counted: a partial count is not the total.
                    tokens_per_s=float(np.mean(counted)) / mean_t if counted and len(counted) == len(tokens) and mean_t > 0 else None,
                    words_per_s=words / mean_t if mean_t > 0 else None,
                ),
            )
        )

    def _emit_tokens(self, ctx: RunContext, lengths: np.ndarray, limit: int | None, over: int, used_prompt: str | None) -> None:
        counts, edges = np.histogram(lengths, bins=min(10, max(1, int(np.unique(lengths).size))))
        ctx.emit(
            Result(
                t_ns=ctx.now(),
                result=TokenLengths(
                    count=int(lengths.size),
                    min=int(lengths.min()),
                    mean=float(lengths.mean()),
                    p50=float(np.percentile(lengths, 50)),
                    p90=float(np.percentile(lengths, 90)),
                    max=int(lengths.max()),
                    histogram_counts=tuple(int(c) for c in counts),
                    histogram_edges=tuple(float(e) for e in edges),
                    max_seq_length=limit,
                    truncated=over,
                    truncated_percent=100.0 * over / lengths.size,
                    counted_with_prompt=used_prompt or "",
                ),
            )
        )

    def _agreement(self, ctx: RunContext, lines: list[str], served: np.ndarray, prompt: str | None) -> None:
        """The same texts, with the same prompt, embedded locally: the cosine between the two per text
        (an f16 GGUF agrees with torch to about 1e-3; quantised files less)."""
        model = self.plan.compare_model
        spec = LocalTarget(model=None if model == "bundled" else model, device="cpu")
        local = self.make_target(spec)
        local.load(ctx)
        try:
            with ctx.phase("compare", f"{len(lines)} texts locally"):
                # Marked as not counted: the local model's time is not the server's latency.
                mine = local.encode(ctx, lines, prompt=prompt or None, label="compare (local)", group="compare (local)",
                                    warmup=True).embeddings
        finally:
            local.close()
        a = served / np.linalg.norm(served, axis=1, keepdims=True)
        b = mine / np.linalg.norm(mine, axis=1, keepdims=True)
        if a.shape != b.shape:
            raise UserError(f"the server's embeddings have {a.shape[1]} dimensions, the compare model's {b.shape[1]}: not the same model")
        cos = np.sum(a * b, axis=1)
        worst = int(np.argmin(cos))
        ctx.emit(
            Result(
                t_ns=ctx.now(),
                result=Agreement(compare_model=spec.display_name, cosine=tuple(float(c) for c in cos), min=float(cos.min()),
                                 mean=float(cos.mean()), worst_text=lines[worst], prompt=prompt or ""),
            )
        )
