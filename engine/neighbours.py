"""Top-K neighbour accuracy of a labelled set of texts, and the before/after table of a training run.

For each text, its K nearest neighbours among the other texts (by cosine or Euclidean distance of
the embeddings); the share of them that carry the text's own label; the mean over the texts. It
answers "do texts of one kind sit together" without training anything on top of the embeddings,
which is why it shows what fine-tuning did to the space itself. Chance is the same share for
neighbours drawn at random, computed exactly from the label counts.

Only numpy here: the dashboard imports this module to fill its table, and must not pay for torch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .errors import UserError
from .results import EvalChange, MtebRun, MtebTask, NeighbourScore, TrainResult
from .text import one_line

Distance = Literal["cosine", "euclidean"]
BLOCK_ROWS = 1024  # rows of the distance matrix at a time: memory O(block × N), not N²
MAX_LABELS_KEPT = 1_000  # per-label shares kept in a snapshot
MAX_ITEMS = 200_000  # a neighbour search is O(N²): past this it is hours, not an evaluation


@dataclass(frozen=True)
class Labelled:
    """A labelled file, read and checked: its texts and their labels (as strings)."""

    name: str
    texts: tuple[str, ...]
    labels: tuple[str, ...]


def read_labelled(path: str) -> Labelled:
    """``{"text": …, "label": …}`` per line; one sentence on a bad file, naming the line."""
    from .files import json_lines

    shown = one_line(path)
    texts: list[str] = []
    labels: list[str] = []
    for number, row in json_lines(path, "labelled file", '{"text": …, "label": …}'):
        if "text" not in row or "label" not in row:
            raise UserError(f"labelled file '{shown}' line {number} has no \"text\" and \"label\": each line holds {{\"text\": …, \"label\": …}}")
        text, label = row["text"], row["label"]
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"labelled file '{shown}' line {number}: \"text\" must be a non-empty string")
        if isinstance(label, bool) or not isinstance(label, (str, int)):
            raise UserError(f"labelled file '{shown}' line {number}: \"label\" must be a string or a whole number")
        texts.append(text)
        labels.append(str(label))
    if len(texts) < 2:
        raise UserError(f"labelled file '{shown}' has {len(texts)} text{'s' if len(texts) != 1 else ''}: neighbours need at least 2")
    if len(texts) > MAX_ITEMS:
        raise UserError(f"labelled file '{shown}' has {len(texts):,} texts; the neighbour search takes at most {MAX_ITEMS:,} (take a sample)")
    if len(set(labels)) < 2:
        raise UserError(f"labelled file '{shown}' has one label only: every neighbour would share it")
    return Labelled(path, tuple(texts), tuple(labels))


def nearest(embeddings: np.ndarray, k: int, distance: Distance) -> np.ndarray:
    """Each row's ``k`` nearest other rows (indices, nearest first), itself excluded.

    Ties are broken by the lower index, so the answer does not depend on the block size."""
    x = np.asarray(embeddings, dtype=np.float64)
    n = x.shape[0]
    if not 1 <= k < n:
        raise UserError(f"--top-k must be between 1 and {n - 1} (the texts but one), not {k}")
    if distance == "cosine":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(norms > 0, norms, 1.0)
        squares = None
    else:
        squares = np.einsum("ij,ij->i", x, x)
    out = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, BLOCK_ROWS):
        block = x[start:start + BLOCK_ROWS]
        if squares is None:
            d = -(block @ x.T)  # smaller is nearer: minus the cosine
        else:
            d = squares[start:start + BLOCK_ROWS, None] - 2.0 * (block @ x.T) + squares[None, :]
        rows = np.arange(block.shape[0])
        d[rows, start + rows] = np.inf  # never one's own neighbour
        # lexsort by (distance, index): the k smallest, ties to the lower index
        part = np.argpartition(d, k, axis=1)[:, : k + 1]
        for i in range(block.shape[0]):
            cand = part[i]
            order = np.lexsort((cand, d[i, cand]))
            chosen = cand[order]
            # argpartition may leave an equal-distance candidate of lower index outside the k+1 kept: take it from the row.
            kth = d[i, chosen[k - 1]]
            if np.count_nonzero(d[i] <= kth) > k:
                tied = np.flatnonzero(d[i] <= kth)
                chosen = tied[np.lexsort((tied, d[i, tied]))]
            out[start + i] = chosen[:k]
    return out


def accuracy(embeddings: np.ndarray, labels: Sequence[str], k: int, distance: Distance) -> tuple[float, dict[str, float]]:
    """The mean share of each text's ``k`` nearest neighbours that share its label, and that mean per label."""
    idx = nearest(embeddings, k, distance)
    lab = np.asarray(labels)
    share = (lab[idx] == lab[:, None]).mean(axis=1)
    per: dict[str, list[float]] = {}
    for label, value in zip(labels, share.tolist()):
        per.setdefault(label, []).append(value)
    by_label = {label: float(np.mean(v)) for label, v in sorted(per.items())[:MAX_LABELS_KEPT]}
    return float(share.mean()), by_label


def chance(labels: Sequence[str]) -> float:
    """The expected share for neighbours drawn uniformly from the other texts."""
    n = len(labels)
    return sum(c * (c - 1) for c in Counter(labels).values()) / (n * (n - 1))


# -- a training run's evaluations, before and after ------------------------------------------------------
def metric_of(score: NeighbourScore) -> str:
    return f"top-{score.k} neighbour accuracy ({score.distance})"


def evaluation_changes(results: Mapping[str, Any]) -> list[EvalChange]:
    """The before/after table of a training run, from the results it has so far (live or saved):
    one row per evaluation, in the order they ran; a side not measured yet (or that failed) is None."""
    rows: dict[str, dict[str, Any]] = {}
    for result in results.values():
        if isinstance(result, MtebTask) and result.stage is not None:
            row = rows.setdefault(f"mteb:{result.task}", {"evaluation": result.task, "metric": result.main_score_name or "main score"})
            if result.main_score_name:
                row["metric"] = result.main_score_name
            row[result.stage] = result.main_score if result.status == "ok" else None
        elif isinstance(result, NeighbourScore) and result.stage is not None:
            row = rows.setdefault(f"neighbours:{result.name}", {"evaluation": f"neighbours {result.name}", "metric": metric_of(result),
                                                                "chance": result.chance})
            row[result.stage] = result.accuracy
    out = []
    for row in rows.values():
        before, after = row.get("before"), row.get("after")
        change = after - before if before is not None and after is not None else None
        out.append(EvalChange(evaluation=row["evaluation"], metric=row["metric"], before=before, after=after, change=change,
                              regressed=change < 0 if change is not None else None, chance=row.get("chance")))
    return out


def training_result(results: Mapping[str, Any]) -> TrainResult | None:
    found = results.get("train")
    return found if isinstance(found, TrainResult) else None


def planned_evaluations(results: Mapping[str, Any]) -> list[str]:
    """The MTEB tasks a training run said it would evaluate (before any score is in)."""
    run = results.get("mteb:before")
    return list(run.tasks) if isinstance(run, MtebRun) else []
