"""Queries against documents: the score matrix, each query's ranking, and the margin between the
best document and the runner-up, with the prompts that were really used."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import numpy as np

from ..context import RunContext
from ..events import Result
from ..files import read_lines
from ..plan import SimilarityPlan
from ..results import SimilarityResult
from ..targets import Target
from ..workload_facts import SimilarityFacts


def builtin_example() -> dict[str, Any]:
    raw = resources.files("embprof.engine").joinpath("data/similarity_example.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(raw)
    return data


class SimilarityWorkload:
    name = "similarity"

    def __init__(self, plan: SimilarityPlan) -> None:
        self.plan = plan
        self.queries: list[str] = list(plan.queries)
        self._documents: list[str] = []
        self._expected: list[int | None] = []
        self._source = ""

    def prepare(self) -> None:
        if self.plan.docs:
            self._documents = read_lines(self.plan.docs)
            self._expected = [None] * len(self.queries)
            self._source = self.plan.docs
        else:
            example = builtin_example()
            self.queries = list(example["queries"])
            self._documents = list(example["documents"])
            self._expected = list(example["expected"])
            self._source = "built-in example"

    def prompt_names(self) -> list[str]:
        p = self.plan
        return [n for n in (p.prompt_name, p.query_prompt_name, p.doc_prompt_name) if n]

    def facts(self) -> SimilarityFacts:
        if not self._documents:
            self.prepare()
        return SimilarityFacts(source=self._source, queries=len(self.queries), documents=len(self._documents))

    def run(self, ctx: RunContext, target: Target) -> None:
        if not self._documents:
            self.prepare()
        p = self.plan
        q_name = p.query_prompt_name or p.prompt_name
        d_name = p.doc_prompt_name or p.prompt_name
        # Queries and documents are calls of different kinds (lengths, prompts): two groups, never pooled.
        with ctx.phase("encode", "queries"):
            q = target.encode(ctx, self.queries, mode="query", prompt_name=q_name, batch_size=p.batch_size, label="queries",
                              group="queries")
            q_prompt = target.last_prompt or ""
        with ctx.phase("encode", "documents"):
            d = target.encode(ctx, self._documents, mode="document", prompt_name=d_name, batch_size=p.batch_size,
                              label="documents", group="documents")
            d_prompt = target.last_prompt or ""
        scores = target.similarity(q.embeddings, d.embeddings)
        rankings = [tuple(int(i) for i in np.argsort(-row, kind="stable")) for row in scores]
        margins = tuple(float(row[rank[0]] - row[rank[1]]) if len(rank) > 1 else None for row, rank in zip(scores, rankings))
        correct = tuple(None if e is None else rank[0] == e for e, rank in zip(self._expected, rankings))
        ctx.emit(
            Result(
                t_ns=ctx.now(),
                result=SimilarityResult(
                    queries=tuple(self.queries),
                    documents=tuple(self._documents),
                    scores=tuple(tuple(float(v) for v in row) for row in scores),
                    rankings=tuple(rankings),
                    margins=margins,
                    expected=tuple(self._expected),
                    top1_correct=correct,
                    query_prompt_name=q_name or target.default_prompt_for("query"),
                    document_prompt_name=d_name or target.default_prompt_for("document"),
                    query_prompt=q_prompt,
                    document_prompt=d_prompt,
                    similarity_fn=str(target.describe().similarity_fn or "cosine"),
                ),
            )
        )
