"""One row per matrix cell: what its snapshot measured, cost and quality side by side.

A row is built from a cell's saved snapshot (``matrix.row_of``), never from a live process, so the
table, the frontier, the export and the dashboard's Matrix view all read the same figures. A figure
the cell did not measure is None (shown "n/a"), with the reason beside it where one is known.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

CellStatus = Literal["ok", "unstable", "oom", "failed", "incomplete", "pending", "running"]

# The cost axes the frontier is computed on: (field of MatrixRow, what the column says, unit).
COST_AXES: tuple[tuple[str, str, str], ...] = (
    ("p50_s", "p50 latency", "s"),
    ("peak_rss_bytes", "peak RSS", "bytes"),
    ("energy_j_per_1000", "energy per 1,000 texts", "J"),
)


class MatrixRow(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    cell_id: str
    label: str  # "all-MiniLM-L6-v2 · onnx · int8 per-channel · cpu · binary"
    order: int = 0  # the cell's place in the matrix's run order
    model: str  # as asked for (Hub id, folder or URL); the bundled model's id when none was given
    target_kind: Literal["local", "server"] = "local"
    backend: str  # torch, onnx, openvino, or the server's API (llama, openai)
    device: str | None = None  # as resolved (cpu, cuda:0); None for a server
    dtype: str | None = None  # torch weights' dtype; None for a server
    quantize: str = "none"  # weights: none or int8
    quantize_mode: str | None = None  # int8: per-channel or per-tensor
    truncate_dim: int | None = None  # None: the model's full dimension
    precision: str = "float32"  # output vectors as the scorer sees them: float32, int8, binary
    reference: bool = False  # the cell the others' agreement is measured against
    status: CellStatus = "pending"
    reason: str | None = None  # why a cell is not ok (failed, oom, unstable …)

    # -- cost -----------------------------------------------------------------------------------------
    import_s: float | None = None
    load_s: float | None = None
    export_s: float | None = None  # the ONNX export (and quantization) of this configuration; None: not exported
    export_cached: bool | None = None  # True: the export came from the cache (its time is that earlier run's)
    disk_bytes: int | None = None
    weights_bytes: int | None = None
    load_rss_delta_bytes: int | None = None  # RSS after the load phase minus RSS before it
    cost_workload: str | None = None  # what was timed: "speed text (43 paragraphs), batch 32"
    items: int | None = None  # texts per timed call
    calls: int | None = None  # timed calls the percentiles are over
    p50_s: float | None = None
    p95_s: float | None = None
    items_per_s: float | None = None  # items / p50
    peak_rss_bytes: int | None = None  # the kernel's high-water mark for the cell's process (VmHWM)
    peak_gpu_bytes: int | None = None  # NVML: this process's GPU memory, peak sampled
    torch_reserved_bytes: int | None = None  # torch.cuda.max_memory_reserved
    torch_allocated_bytes: int | None = None  # torch.cuda.max_memory_allocated
    energy_j_per_1000: float | None = None
    energy_source: str | None = None  # "nvml total energy" or "rapl package"
    energy_why: str | None = None  # why energy is n/a ("no energy counter")

    # -- quality ----------------------------------------------------------------------------------------
    nonfinite: int | None = None  # NaN or infinite values in the cell's embeddings
    scores: dict[str, float | None] = {}  # task -> mteb's main score (None: the task failed or was not scored)
    quality: float | None = None  # the mean of the main scores, when every task has one
    agreement_mean: float | None = None  # cosine per text against the reference cell, mean
    agreement_min: float | None = None
    agreement_why: str | None = None
    agrees_1e4: bool | None = None  # float32 onnx/openvino: every text's cosine with torch within 1e-4 of 1
    topk_overlap: float | None = None  # mean |top-k ∩ reference top-k| / k over the similarity queries
    top_k: int | None = None
    top1_correct: int | None = None  # queries whose expected document ranked first
    queries: int | None = None
    calibration: str | None = None  # int8 output: how the per-dimension ranges were chosen
    snapshot: str | None = None  # the cell's snapshot file, relative to the matrix folder
    beside: str | None = None  # other work on the machine during the cell (its costs may be inflated); None: none seen
    host: str | None = None  # where a cluster ran it (Ray); None: here


class Frontier(BaseModel):
    """Which cells are Pareto-optimal for quality (higher is better) against each cost axis (lower
    is better). An axis on which fewer than one cell has both figures has no frontier: ``why`` says so."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    axis: str  # a COST_AXES field
    cells: tuple[str, ...] = ()  # cell ids on the frontier, cheapest first
    considered: tuple[str, ...] = ()  # cell ids with both figures
    why: str | None = None  # no frontier: why (e.g. "no energy counter on this machine")
