"""Queries against documents: the score matrix, each query's ranking, and the margin between the
best document and the runner-up, with the prompts that were really used."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np

from ..context import RunContext
from ..errors import UserError
from ..events import Result
from ..files import read_lines
from ..targets import Target


def builtin_example() -> dict[str, Any]:
    raw = resources.files("embprof.engine").joinpath("data/similarity_example.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(raw)
    return data


@dataclass
class SimilarityWorkload:
    queries: list[str] = field(default_factory=list)
    docs_file: str | None = None
    prompt_name: str | None = None  # both sides; overrides the model's query/document prompts
    query_prompt_name: str | None = None
    doc_prompt_name: str | None = None
    batch_size: int = 32
    name: str = "similarity"
    _documents: list[str] = field(default_factory=list, repr=False)
    _expected: list[int | None] = field(default_factory=list, repr=False)
    _source: str = ""

    def prepare(self) -> None:
        if bool(self.queries) != bool(self.docs_file):
            raise UserError("give both --query and --docs, or neither for the built-in example")
        if self.docs_file:
            self._documents = read_lines(self.docs_file)
            self._expected = [None] * len(self.queries)
            self._source = self.docs_file
        else:
            example = builtin_example()
            self.queries = list(example["queries"])
            self._documents = list(example["documents"])
            self._expected = list(example["expected"])
            self._source = "built-in example"
        if any(not q.strip() for q in self.queries):
            raise UserError("a --query is empty")

    def prompt_names(self) -> list[str]:
        return [n for n in (self.prompt_name, self.query_prompt_name, self.doc_prompt_name) if n]

    def settings(self) -> dict[str, Any]:
        if not self._documents:
            self.prepare()
        return {
            "name": self.name,
            "source": self._source,
            "queries": len(self.queries),
            "documents": len(self._documents),
            "prompt_name": self.prompt_name,
            "query_prompt_name": self.query_prompt_name,
            "doc_prompt_name": self.doc_prompt_name,
            "batch_size": self.batch_size,
        }

    def run(self, ctx: RunContext, target: Target) -> None:
        if not self._documents:
            self.prepare()
        q_name = self.query_prompt_name or self.prompt_name
        d_name = self.doc_prompt_name or self.prompt_name
        with ctx.phase("encode", "queries"):
            q = target.encode(
                ctx, self.queries, mode="query", prompt_name=q_name, batch_size=self.batch_size, label="queries"
            )
            q_prompt = target.last_prompt or ""
        with ctx.phase("encode", "documents"):
            d = target.encode(
                ctx, self._documents, mode="document", prompt_name=d_name, batch_size=self.batch_size, label="documents"
            )
            d_prompt = target.last_prompt or ""
        scores = target.similarity(q.embeddings, d.embeddings)
        rankings = [[int(i) for i in np.argsort(-row, kind="stable")] for row in scores]
        margins = [
            float(row[rank[0]] - row[rank[1]]) if len(rank) > 1 else None for row, rank in zip(scores, rankings)
        ]
        correct = [None if e is None else rank[0] == e for e, rank in zip(self._expected, rankings)]
        ctx.emit(
            Result(
                t_ns=ctx.now(),
                name="similarity",
                data={
                    "queries": self.queries,
                    "documents": self._documents,
                    "scores": [[float(v) for v in row] for row in scores],
                    "rankings": rankings,
                    "margins": margins,
                    "expected": self._expected,
                    "top1_correct": correct,
                    "query_prompt_name": q_name or target.default_prompt_for("query"),
                    "document_prompt_name": d_name or target.default_prompt_for("document"),
                    "query_prompt": q_prompt,
                    "document_prompt": d_prompt,
                    "similarity_fn": str(target.describe().get("similarity_fn", "")),
                },
            )
        )
