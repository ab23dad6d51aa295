"""Encode lines as queries, documents, or with any named or raw prompt; time every call and batch."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

import numpy as np

from ..context import RunContext
from ..errors import UserError
from ..events import Result
from ..files import read_lines
from ..stats import describe
from ..targets import EncodeMode, Target


def sample_corpus() -> list[str]:
    """embprof's own sample: a few dozen lines of mixed length, English and Japanese."""
    text = resources.files("embprof.engine").joinpath("data/sample_corpus.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


@dataclass
class EncodeWorkload:
    input: str | None = None  # a file, "-" for standard input, None for the sample corpus
    mode: EncodeMode = "plain"
    prompt_name: str | None = None
    prompt: str | None = None
    batch_size: int = 32
    warmups: int = 1
    repeats: int = 3
    compare_model: str | None = None  # a local model: embed the same texts and report the cosine per text
    name: Literal["encode"] = "encode"
    _lines: list[str] = field(default_factory=list, repr=False)

    def prepare(self) -> None:
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, not {self.batch_size}")
        if self.repeats < 1:
            raise UserError(f"--repeats must be at least 1, not {self.repeats}")
        if self.warmups < 0:
            raise UserError(f"--warmups cannot be negative ({self.warmups})")
        if self.prompt is not None and self.prompt_name is not None:
            raise UserError("give either --prompt-name or --prompt, not both")
        self._lines = sample_corpus() if self.input is None else read_lines(self.input)

    @property
    def lines(self) -> list[str]:
        if not self._lines:
            self.prepare()
        return self._lines

    def prompt_names(self) -> list[str]:
        return [self.prompt_name] if self.prompt_name else []

    def settings(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "input": self.input if self.input is not None else "built-in sample corpus",
            "lines": len(self.lines),
            "mode": self.mode,
            "prompt_name": self.prompt_name,
            "prompt": self.prompt,
            "batch_size": self.batch_size,
            "warmups": self.warmups,
            "repeats": self.repeats,
            "compare_model": self.compare_model,
        }

    def run(self, ctx: RunContext, target: Target) -> None:
        lines = self.lines
        kw: dict[str, Any] = {
            "mode": self.mode,
            "prompt_name": self.prompt_name,
            "prompt": self.prompt,
            "batch_size": self.batch_size,
        }
        for i in range(self.warmups):
            with ctx.phase("warm-up", f"{i + 1}/{self.warmups}"):
                target.encode(ctx, lines, label=f"warm-up {i + 1}", warmup=True, **kw)
        times: list[float] = []
        tokens: list[int] = []
        for i in range(self.repeats):
            ctx.check_cancel()
            with ctx.phase("encode", f"repeat {i + 1}/{self.repeats}"):
                outcome = target.encode(ctx, lines, label=f"repeat {i + 1}", **kw)
            times.append(outcome.duration_ns / 1e9)
            tokens.append(outcome.tokens)
            dim = int(outcome.embeddings.shape[-1]) if outcome.embeddings.ndim else 0
        used_prompt = target.last_prompt
        lengths = np.asarray(target.token_lengths(lines, used_prompt))
        limit = target.max_seq_length
        over = int((lengths > limit).sum()) if limit and lengths.size else 0
        if self.compare_model is not None:
            self._agreement(ctx, target, lines, outcome.embeddings, used_prompt)
        if lengths.size:  # a server without a tokenizer endpoint has no length statistics to give
            self._emit_tokens(ctx, lengths, limit, over, used_prompt)
        mean_t = float(np.mean(times))
        words = sum(len(line.split()) for line in lines)
        ctx.emit(
            Result(
                t_ns=ctx.now(),
                name="encode",
                data={
                    "lines": len(lines),
                    "embedding_dim": dim,
                    "mode": self.mode,
                    "prompt_name": self.prompt_name,
                    "prompt_used": used_prompt or "",
                    "stats": describe(times),
                    "items_per_s": len(lines) / mean_t,
                    "tokens_per_s": float(np.mean(tokens)) / mean_t,
                    "words_per_s": words / mean_t,
                },
            )
        )

    def _emit_tokens(self, ctx: RunContext, lengths: np.ndarray, limit: int | None, over: int, used_prompt: str | None) -> None:
        ctx.emit(
            Result(
                t_ns=ctx.now(),
                name="tokens",
                data={
                    "count": int(lengths.size),
                    "min": int(lengths.min()),
                    "mean": float(lengths.mean()),
                    "p50": float(np.percentile(lengths, 50)),
                    "p90": float(np.percentile(lengths, 90)),
                    "max": int(lengths.max()),
                    "histogram": _histogram(lengths),
                    "max_seq_length": limit,
                    "truncated": over,
                    "truncated_percent": 100.0 * over / lengths.size,
                    "counted_with_prompt": used_prompt or "",
                },
            )
        )

    def _agreement(self, ctx: RunContext, target: Target, lines: list[str], served: np.ndarray, prompt: str | None) -> None:
        """The same texts, with the same prompt, embedded locally: the cosine between the two per text
        (an f16 GGUF agrees with torch to about 1e-3; quantised files less)."""
        from ..targets import SentenceTransformerTarget, TargetSpec

        local = SentenceTransformerTarget(TargetSpec(model=None if self.compare_model == "bundled" else self.compare_model, device="cpu"))
        local.load(ctx)
        try:
            with ctx.phase("compare", f"{len(lines)} texts locally"):
                # Marked as not counted: the local model's time is not the server's latency.
                mine = local.encode(ctx, lines, prompt=prompt or None, label="compare (local)", warmup=True).embeddings
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
                name="agreement",
                data={
                    "compare_model": local.spec.display_name,
                    "cosine": [float(c) for c in cos],
                    "min": float(cos.min()),
                    "mean": float(cos.mean()),
                    "worst_text": lines[worst],
                    "prompt": prompt or "",
                },
            )
        )


def _histogram(lengths: np.ndarray, bins: int = 10) -> dict[str, list[float]]:
    counts, edges = np.histogram(lengths, bins=min(bins, max(1, int(np.unique(lengths).size))))
    return {"counts": [int(c) for c in counts], "edges": [float(e) for e in edges]}
