"""One matrix cell: the cost of a stated encode and the quality of the same target's vectors.

In order, in the cell's own process:

1. cost: one warm-up, then ``loops`` timed encodes of the stated text (the speed protocol's 43
   paragraphs at batch 32 unless the matrix says otherwise); the percentiles are over those calls;
2. energy, where a counter exists: the same encode repeated for at least the minimum window, with
   the idle baseline subtracted (``engine.energy``); otherwise the reason is recorded;
3. the guard: NaN or infinite values make the cell unstable, and it is not scored;
4. agreement with the reference cell: cosine per text on the cost text, and the overlap of each
   query's top-k documents on the similarity example; the reference cell writes its vectors;
5. quality: the mteb tasks through embprof's mteb path, on the vectors the cell's output
   precision gives (sentence-transformers' ``quantize_embeddings``).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..context import RunContext
from ..errors import UserError
from ..events import Note, Result
from ..files import atomic_write_bytes, read_lines
from ..plan import CellPlan, MtebPlan
from ..results import CellResult
from ..speedtext import SpeedText, resolve_speed_text
from ..stats import describe
from ..targets import Target
from ..text import one_line
from ..workload_facts import CellFacts
from .mteb_tasks import MtebWorkload
from .similarity import builtin_example
from .speed import timed_loops


class Precision:
    """The output precision a cell's vectors are stored in, as the scorer sees them.

    int8: sentence-transformers' ``quantize_embeddings`` with per-dimension ranges from a
    calibration set (the cell's own float vectors of the cost text: every score sees the same
    ranges, and values outside them are clipped by sentence-transformers). binary: its sign bits,
    given to the scorer as ±1 so that cosine is 1 − 2·Hamming/d, the ranking a Hamming index gives.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.ranges: np.ndarray | None = None
        self.calibration: str | None = None

    def calibrate(self, float_vectors: np.ndarray, what: str) -> None:
        if self.name == "int8":
            self.ranges = np.vstack([float_vectors.min(axis=0), float_vectors.max(axis=0)]).astype(np.float32)
            self.calibration = f"per-dimension min and max over the cell's float vectors of {what}"

    def stored(self, vectors: Any) -> np.ndarray:
        """The vectors as stored (int8 values, or ±1 for binary), as float32 for a scorer."""
        v = np.asarray(vectors, dtype=np.float32)
        if self.name == "float32":
            return v
        from sentence_transformers.util.quantization import quantize_embeddings

        if self.name == "int8":
            q = quantize_embeddings(v, precision="int8", ranges=self.ranges)
            return np.asarray(q, dtype=np.float32)
        packed = quantize_embeddings(v, precision="ubinary")
        bits = np.unpackbits(np.asarray(packed, dtype=np.uint8), axis=-1)[:, : v.shape[1]]
        return bits.astype(np.float32) * 2.0 - 1.0

    def in_float_space(self, vectors: np.ndarray) -> np.ndarray:
        """The stored vectors mapped back to the float space, to compare with the reference:
        int8 dequantized with its ranges; binary as ±1 (its best direction up to scale)."""
        stored = self.stored(vectors)
        if self.name == "int8" and self.ranges is not None:
            starts = self.ranges[0]
            steps = (self.ranges[1] - starts) / 255
            steps = np.where(steps == 0, 1, steps)
            restored: np.ndarray = ((stored + 128.0) + 0.5) * steps + starts
            return restored
        return stored


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each row of a with the same row of b, on the dimensions both have."""
    d = min(a.shape[1], b.shape[1])
    a, b = a[:, :d].astype(np.float64), b[:, :d].astype(np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos: np.ndarray = np.einsum("ij,ij->i", a, b) / (na * nb)
    return cos


def cosine_matrix(q: np.ndarray, d: np.ndarray) -> np.ndarray:
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    dn = d / np.linalg.norm(d, axis=1, keepdims=True)
    out: np.ndarray = qn @ dn.T
    return out


def top_k_overlap(scores: np.ndarray, reference: np.ndarray, k: int) -> float:
    """Mean over queries of |top-k(scores) ∩ top-k(reference)| / k (stable order on ties)."""
    k = min(k, scores.shape[1])
    shares = []
    for row, ref in zip(scores, reference):
        mine = set(np.argsort(-row, kind="stable")[:k].tolist())
        theirs = set(np.argsort(-ref, kind="stable")[:k].tolist())
        shares.append(len(mine & theirs) / k)
    return float(np.mean(shares))


class CellWorkload:
    name = "cell"

    def __init__(self, plan: CellPlan) -> None:
        self.plan = plan
        self._texts: list[str] = []
        self._what = ""
        self._speed: SpeedText | None = None
        self._mteb: MtebWorkload | None = None
        self._reference: dict[str, np.ndarray] | None = None

    # -- before anything loads ---------------------------------------------------------------------
    def prepare(self) -> None:
        p = self.plan
        if p.cost == "speed":
            self._speed = resolve_speed_text(p.text)
            self._texts = list(self._speed.paragraphs)
            self._what = f"the speed text ({len(self._texts)} paragraphs)"
        else:
            assert p.input is not None
            self._texts = read_lines(p.input)
            self._what = f"{len(self._texts)} lines of {Path(p.input).name}"
        if p.tasks:
            self._mteb = MtebWorkload(MtebPlan(tasks=p.tasks, data_dir=p.data_dir, results_dir=p.results_dir, batch_size=p.batch_size))
            self._mteb.prepare()
        if p.reference is not None:
            ref = Path(p.reference)
            if not ref.is_file():
                raise UserError(f"the reference cell's vectors '{p.reference}' are missing: run the reference cell first")
            try:
                with np.load(ref, allow_pickle=False) as data:  # a reference file is numbers only: never unpickled
                    self._reference = {k: np.asarray(data[k]) for k in data.files}
            except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
                raise UserError(f"the reference cell's vectors '{one_line(p.reference)}' cannot be read "
                                f"({one_line(exc) or exc.__class__.__name__}): delete the file and its cell's snapshot to measure it again") from None
        if p.write_reference is not None:
            Path(p.write_reference).parent.mkdir(parents=True, exist_ok=True)

    def prompt_names(self) -> list[str]:
        return []

    def facts(self) -> CellFacts:
        if not self._texts:
            self.prepare()
        return CellFacts(cost=self.cost_workload, text_sha256=self._speed.sha256 if self._speed is not None else None)

    @property
    def cost_workload(self) -> str:
        return f"{self._what}, batch {self.plan.batch_size}"

    # -- the run ------------------------------------------------------------------------------------
    def run(self, ctx: RunContext, target: Target) -> None:
        if not self._texts:
            self.prepare()
        p = self.plan
        texts = self._texts
        timings, last = timed_loops(ctx, target, texts, p.loops, p.batch_size, phase="cost", group="cost")
        vectors = np.asarray(last, dtype=np.float32)
        stats = describe(timings)
        fields: dict[str, Any] = {
            "cost_workload": self.cost_workload,
            "items": len(texts),
            "stats": stats,
            "items_per_s": len(texts) / stats.p50_s if stats.p50_s else None,
            "embedding_dim": int(vectors.shape[1]) if vectors.ndim == 2 else None,
            "precision": p.precision,
        }
        fields.update(self._energy(ctx, target, texts))
        nonfinite = int(np.size(vectors) - np.count_nonzero(np.isfinite(vectors)))
        fields["nonfinite"] = nonfinite
        if nonfinite:
            fields["status"] = "unstable"
            ctx.emit(Note(t_ns=ctx.now(), level="warning",
                          text=f"{nonfinite} NaN or infinite values in the embeddings: the cell is unstable and is not scored"))
            ctx.emit(Result(t_ns=ctx.now(), result=CellResult(**fields)))
            return
        precision = Precision(p.precision)
        precision.calibrate(vectors, self._what)
        fields["calibration"] = precision.calibration
        with ctx.phase("agreement", "similarity example and cost text against the reference"):
            fields.update(self._agreement(ctx, target, vectors, precision))
        ctx.emit(Result(t_ns=ctx.now(), result=CellResult(**fields)))
        if self._mteb is not None:
            self._mteb.transform = None if p.precision == "float32" else precision.stored
            self._mteb.run(ctx, target)

    def _energy(self, ctx: RunContext, target: Target, texts: list[str]) -> dict[str, Any]:
        from ..energy import find_meter

        if not target.capabilities.local_device:
            return {"energy_why": "no energy counter for a server's process here"}
        meter, why = find_meter(target.device or "cpu")
        if meter is None:
            return {"energy_why": why}

        def work() -> int:
            ctx.check_cancel()
            target.encode(ctx, texts, batch_size=self.plan.batch_size, label="energy", group="energy")
            return len(texts)

        with meter, ctx.phase("energy", f"idle baseline, then the cost encode for at least {self.plan.energy_min_window_s:g} s"):
            reading, why = meter.measure(work, self.plan.energy_min_window_s)
        if reading is None:
            return {"energy_why": why or "the energy counter did not advance"}
        if reading.net_j <= 0:
            # Not above idle within the counter's resolution: no figure, rather than a "cheapest" cell.
            return {"energy_why": reading.note or "the work drew no more than the idle baseline"}
        return {"energy_source": reading.source, "energy_j_per_1000": reading.j_per_1000, "energy_gross_j": reading.gross_j,
                "energy_idle_w": reading.idle_w, "energy_window_s": reading.window_s, "energy_items": reading.items}

    def _agreement(self, ctx: RunContext, target: Target, vectors: np.ndarray, precision: Precision) -> dict[str, Any]:
        p = self.plan
        example = builtin_example()
        queries, documents, expected = list(example["queries"]), list(example["documents"]), list(example["expected"])
        q = np.asarray(target.encode(ctx, queries, mode="query", batch_size=p.batch_size, label="queries", group="queries").embeddings,
                       dtype=np.float32)
        d = np.asarray(target.encode(ctx, documents, mode="document", batch_size=p.batch_size, label="documents",
                                     group="documents").embeddings, dtype=np.float32)
        scores = cosine_matrix(precision.stored(q), precision.stored(d))
        out: dict[str, Any] = {"top_k": min(p.top_k, len(documents)), "queries": len(queries),
                               "top1_correct": int(sum(int(np.argmax(row)) == e for row, e in zip(scores, expected) if e is not None))}
        if p.write_reference is not None:
            buf = _npz_bytes(cost=vectors, queries=q, documents=d)
            atomic_write_bytes(Path(p.write_reference), buf)
            out["reference_written"] = p.write_reference
        ref = self._reference
        if ref is None:
            if p.write_reference is not None:
                # The reference against itself: the same vectors, so 1 by construction; the row says it is the reference.
                cos = cosine_rows(precision.in_float_space(vectors), vectors)
                out.update(agreement_mean=float(np.mean(cos)), agreement_min=float(np.min(cos)), agreement_dims=int(vectors.shape[1]),
                           topk_overlap=top_k_overlap(scores, cosine_matrix(q, d), p.top_k))
            else:
                out["agreement_why"] = "no reference cell for this target"
            return out
        if ref["cost"].shape[0] != vectors.shape[0]:
            out["agreement_why"] = "the reference cell encoded other texts"
            return out
        mine = precision.in_float_space(vectors)
        cos = cosine_rows(mine, ref["cost"])
        out.update(agreement_mean=float(np.mean(cos)), agreement_min=float(np.min(cos)),
                   agreement_dims=int(min(mine.shape[1], ref["cost"].shape[1])))
        if p.precision == "float32":
            out["agrees_1e4"] = bool(np.min(cos) >= 1 - 1e-4)
        # Against the reference's full vectors: what truncation or quantization does to a ranking is the point.
        out["topk_overlap"] = top_k_overlap(scores, cosine_matrix(ref["queries"], ref["documents"]), p.top_k)
        return out


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()
