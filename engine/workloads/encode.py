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
        over = int((lengths > limit).sum()) if limit else 0
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


def _histogram(lengths: np.ndarray, bins: int = 10) -> dict[str, list[float]]:
    counts, edges = np.histogram(lengths, bins=min(bins, max(1, int(np.unique(lengths).size))))
    return {"counts": [int(c) for c in counts], "edges": [float(e) for e in edges]}
