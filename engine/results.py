"""Typed results: what each workload (and the runner) concludes, as frozen models.

Every ``Result`` event carries exactly one of these, told apart by ``kind``; the snapshot schema is
generated from this union, so a reader never guesses a dict's keys. A figure that was not measured
is ``None`` (``null`` in JSON, ``n/a`` on screen), never 0. Sizes are MiB (2**20 bytes), times
seconds, and both say so in the field name.
"""

from __future__ import annotations

import math
import numbers
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LatencyStats(_Frozen):
    """count, mean, std (sample, ddof=1), CV %, min, max, p50/p90/p95/p99 and the raw values, in seconds.

    ``std_s`` and ``cv_percent`` are None for a single value (one call has no spread). Past
    ``EXACT_LIMIT`` calls the quantiles come from an HDR histogram (3 significant digits) and the
    raw values are no longer kept: ``quantiles`` says which.
    """

    count: int = 0
    mean_s: float | None = None
    std_s: float | None = None
    cv_percent: float | None = None
    min_s: float | None = None
    max_s: float | None = None
    p50_s: float | None = None
    p90_s: float | None = None
    p95_s: float | None = None
    p99_s: float | None = None
    samples_s: tuple[float, ...] | None = ()
    quantiles: Literal["exact", "histogram"] = "exact"


class TargetFacts(_Frozen):
    """What the target says of itself once loaded (local model) or reached (server)."""

    kind: Literal["target"] = "target"
    backend: str  # "sentence-transformers" or "http"
    model_name: str
    model: str | None = None  # as asked for; None: the bundled all-MiniLM-L6-v2
    location: str | None = None
    device: str | None = None  # as asked for; None for a server (where it computes is its own business)
    device_resolved: str | None = None
    dtype: str | None = None
    truncate_dim: int | None = None
    trust_remote_code: bool | None = None
    max_seq_length: int | None = None
    embedding_dim: int | None = None
    parameters: int | None = None
    similarity_fn: str | None = None
    prompt_names: tuple[str, ...] = ()
    tokenizer_has_chat_template: bool | None = None
    quantize: str | None = None  # the weights: "none" or "int8" (a local model)
    quantize_mode: str | None = None  # int8: "per-channel" or "per-tensor" weight scales
    disk_bytes: int | None = None  # the files the model was loaded from (an exported graph: that file)
    weights_bytes: int | None = None  # parameters and buffers as held in memory (torch: tensor sizes; onnx: initializers)
    graph_file: str | None = None  # onnx / openvino: the exported (and quantized) graph that ran
    # A server's side:
    api: str | None = None  # the API spoken: llama, openai, tei, ollama (found on connect, or as --api said)
    api_path: str | None = None  # the route embeddings were asked at ("/v1/embeddings", "/embeddings", "/embed" …)
    api_found: str | None = None  # how the API was found: the server's answer that told (one sentence)
    server_software: str | None = None  # which server it is, where it says so ("llama.cpp", "infinity", "vLLM" …)
    url: str | None = None  # never with credentials
    server_pid: int | None = None
    prompts_from: str | None = None
    timeout_s: float | None = None
    max_errors: int | None = None
    api_key_env: str | None = None  # the variable's name only, never its value
    server_n_ctx: int | None = None
    server_build: str | None = None
    server_model_file: str | None = None


class SamplerFacts(_Frozen):
    kind: Literal["sampler"] = "sampler"
    hz: float
    samples: int
    cpu_time_s: float
    cpu_percent_of_one_core: float
    host_only_reason: str = ""


class KernelCounters(_Frozen):
    """High-water marks the kernel and torch keep themselves: they see peaks between samples."""

    kind: Literal["kernel_counters"] = "kernel_counters"
    ru_maxrss_mib: float | None = None
    torch_max_memory_allocated_mib: float | None = None
    torch_max_memory_reserved_mib: float | None = None


class EncodeResult(_Frozen):
    kind: Literal["encode"] = "encode"
    lines: int
    embedding_dim: int | None
    mode: str
    prompt_name: str | None = None
    prompt_used: str = ""
    stats: LatencyStats
    items_per_s: float | None
    tokens_per_s: float | None  # None: the target reports no token counts (llama.cpp's native API)
    words_per_s: float | None


class TokenLengths(_Frozen):
    """Input lengths in tokens before truncation, as the target's own tokenizer counts them."""

    kind: Literal["tokens"] = "tokens"
    count: int
    min: int
    mean: float
    p50: float
    p90: float
    max: int
    histogram_counts: tuple[int, ...]
    histogram_edges: tuple[float, ...]
    max_seq_length: int | None
    truncated: int
    truncated_percent: float
    counted_with_prompt: str = ""


class Agreement(_Frozen):
    kind: Literal["agreement"] = "agreement"
    compare_model: str
    cosine: tuple[float, ...]
    min: float
    mean: float
    worst_text: str
    prompt: str = ""


class SpeedResult(_Frozen):
    """The MTEB v1 SpeedTask protocol's figures, with mteb 1.x's own formulas."""

    kind: Literal["speed"] = "speed"
    # CPUSpeedTask or GPUSpeedTask; None where the run is neither (a server, Apple's mps), and why.
    task_name: str | None
    task_name_why: str = ""
    time_mean: float
    time_std: float
    timings: tuple[float, ...]
    avg_words_per_sec: float
    words: int
    stats: LatencyStats


class SimilarityResult(_Frozen):
    kind: Literal["similarity"] = "similarity"
    queries: tuple[str, ...]
    documents: tuple[str, ...]
    scores: tuple[tuple[float, ...], ...]
    rankings: tuple[tuple[int, ...], ...]
    margins: tuple[float | None, ...]
    expected: tuple[int | None, ...]
    top1_correct: tuple[bool | None, ...]
    query_prompt_name: str | None = None
    document_prompt_name: str | None = None
    query_prompt: str = ""
    document_prompt: str = ""
    similarity_fn: str = ""


class SweepPoint(_Frozen):
    params: dict[str, int | str]
    label: str
    lines: int
    batch_size: int
    phase_id: int | None = None
    status: Literal["ok", "oom", "over-ceiling"]
    stop: str | None = None  # what ended the repeats: precision, budget, max-repeats
    error: str | None = None
    repeats: int
    stats: LatencyStats
    median_s: float | None = None
    ci95_s: tuple[float, float] | None = None
    ci_half_width_percent: float | None = None
    tokens: float | None = None
    items_per_s: float | None = None
    tokens_per_s: float | None = None
    # 2 × parameters × tokens / time: an estimate of the forward pass's floor, not a measurement.
    gflops_estimate: float | None = None
    padding_percent: float | None = None
    peak_rss_mib: float | None = None
    peak_cpu_percent: float | None = None
    peak_gpu_mib: float | None = None
    torch_peak_mib: float | None = None


class LatencyFit(_Frozen):
    group: dict[str, int | str]
    terms: tuple[str, ...]
    coef: dict[str, float]
    ci95: dict[str, tuple[float, float]]
    r2: float | None
    observations: int
    timings: int
    dropped: tuple[str, ...] = ()
    why_dropped: str = ""
    formula: str
    padding_percent_range: tuple[float, float] | None = None
    padding_note: str = ""


class MemoryPoint(_Frozen):
    value: int
    peak_rss_mib: float | None
    peak_gpu_mib: float | None
    torch_peak_mib: float | None
    status: str


class MemoryLimit(_Frozen):
    axis: str
    largest_that_fits: int | None
    stopped: str
    ceiling_mib: float | None
    curve: tuple[MemoryPoint, ...]


class SweepResult(_Frozen):
    kind: Literal["sweep"] = "sweep"
    axes: dict[str, tuple[int | str, ...]]
    points: tuple[SweepPoint, ...]
    partial: bool = False  # the table so far, while the sweep still runs
    parameters: int | None = None
    fits: tuple[LatencyFit, ...] = ()
    memory_limit: MemoryLimit | None = None


class VersusResult(_Frozen):
    kind: Literal["vs"] = "vs"
    a: TargetFacts
    b: TargetFacts
    texts: int
    a_stats: LatencyStats
    b_stats: LatencyStats
    ratios: tuple[float, ...]
    median_ratio: float | None
    ci95: tuple[float, float] | None
    p_value: float | None
    beyond_noise: bool | None
    test: str


class ClientCeiling(_Frozen):
    """What this client alone can send: the same client against a trivial local endpoint."""

    kind: Literal["client_ceiling"] = "client_ceiling"
    requests_per_s: float | None
    workers: int  # connections
    seconds: float
    texts_per_request: int
    processes: int = 1  # load processes
    endpoint: str | None = None  # what served the probe (None: a snapshot from before it was said)


class LoadResult(_Frozen):
    kind: Literal["load"] = "load"
    requests_sent: int
    requests_done: int
    ok: int
    errors: int
    errors_by_kind: dict[str, int]
    wall_s: float
    requests_per_s: float | None
    items_per_s: float | None
    tokens_per_s: float | None  # None: the server reports no token counts
    latency: LatencyStats
    client_ceiling_per_s: float | None
    client_share_percent: float | None
    # "due": the open loop's latency, from when each request was due (no coordinated omission); "send": from its send.
    latency_from: Literal["send", "due"] = "send"
    send_lag: LatencyStats | None = None  # open loop: how late the sends were against the schedule
    # The server's own timings by part (TEI's x-*-time headers: queue, tokenization, inference, server_total)
    # and network_client, the rest of each request's time; None: the server reported none.
    server_split: dict[str, LatencyStats] | None = None
    server_split_requests: int = 0
    load_processes: int = 1
    client_bound: bool | None = None  # above half of the client's own ceiling; None: no ceiling to compare with
    by_source: dict[str, LatencyStats] | None = None  # a mix: answered requests' latency by the source of their texts


class KneeStep(_Frozen):
    """One step of a knee search: an open-loop load at one offered rate, and whether it met the objective."""

    offered_per_s: float
    achieved_per_s: float | None  # answered (ok) per second of the step
    sent: int
    ok: int
    errors: int
    p50_s: float | None  # latency from when each request was due
    p99_s: float | None
    send_lag_p99_s: float | None
    passed: bool
    why: str  # what broke the objective ("" when it held)


class KneeResult(_Frozen):
    """`run load --find-knee`: the rate stepped up until the objective broke, then bisected; the largest
    rate that held it is the sustainable rate (None: even the first step broke it)."""

    kind: Literal["knee"] = "knee"
    objective_p99_s: float
    objective_errors_percent: float
    objective_min_achieved_share: float  # achieved / offered below this: the server fell behind
    step_s: float
    steps: tuple[KneeStep, ...]
    sustainable_per_s: float | None
    bracket: tuple[float, float] | None  # the last rate that held and the first that broke, when both were seen
    start_from: str  # how the first rate was chosen
    # A step CONFIRM_STEPS times as long at the sustainable rate, after the search: whether the answer holds when the
    # server is held at it for longer. None: not run (no rate held, or the run was stopped first).
    confirmation: KneeStep | None = None

    def search_step(self) -> KneeStep | None:
        """The search's step at the sustainable rate (the one the confirmation is held against)."""
        return next((st for st in self.steps if st.passed and st.offered_per_s == self.sustainable_per_s), None)

    def stability(self) -> float | None:
        """The confirmation's p99 over the search's at the same rate: near 1, the answer reproduces; far above, the
        search's short step flattered the server. None where either is unknown."""
        search = self.search_step()
        if self.confirmation is None or search is None or not search.p99_s or self.confirmation.p99_s is None:
            return None
        return self.confirmation.p99_s / search.p99_s


class ServerMetrics(_Frozen):
    """llama.cpp's own /metrics before and after the run (it was started with --metrics)."""

    kind: Literal["server_metrics"] = "server_metrics"
    start: dict[str, float]
    end: dict[str, float]
    delta: dict[str, float]


class TokenCounts(_Frozen):
    """What a server's reported counts were found to be (``targets/token_counts.py``): tokens, or its texts' characters or
    words (then no tokens/s is made of them); checked against a tokenizer of the served model where one was at hand."""

    kind: Literal["token_counts"] = "token_counts"
    counts: Literal["tokens", "characters", "words"]
    requests: int  # answered requests that reported a count
    matched: int = 0  # characters or words: how many requests' counts equalled their texts' characters or words
    verified_by: str | None = None  # the tokenizer the counts were checked against; None: unverified
    checked: int = 0
    agreed: int = 0
    first_differs: tuple[int, int] | None = None  # (the server's count, the tokenizer's) of the first that differed

    def label(self) -> str:
        """What the counts are, as the tables and the dashboard say it."""
        if self.counts != "tokens":
            return f"the server reports {self.counts}, not tokens"
        if self.verified_by is None:
            return "server-reported, unverified"
        if self.agreed == self.checked:
            return f"server-reported; {self.agreed} of {self.checked} checked agree with {self.verified_by}'s tokenizer"
        said = f" (first: {self.first_differs[0]:,} against {self.first_differs[1]:,})" if self.first_differs else ""
        return f"server-reported; {self.checked - self.agreed} of {self.checked} checked differ from {self.verified_by}'s tokenizer{said}"


class RequestErrors(_Frozen):
    kind: Literal["requests"] = "requests"
    errors: int
    errors_by_kind: dict[str, int]


class MtebRun(_Frozen):
    kind: Literal["mteb"] = "mteb"
    tasks: tuple[str, ...]
    model_name: str
    revision: str | None
    results_dir: str
    stage: Literal["before", "after"] | None = None  # a training run's evaluation before or after it trained

    @property
    def key(self) -> str:
        return f"mteb:{self.stage}" if self.stage else "mteb"


class MtebEncode(_Frozen):
    """One encode call mteb made inside a task."""

    phase_id: int
    phase: str
    split: str
    subset: str
    texts: int
    prompt_type: str | None
    prompt_name: str | None
    prompt: str | None
    seconds: float
    tokens: int | None  # None: the target reports no token counts
    batches: int | None  # forward batches (a local model) or requests (a server)


class MtebPhase(_Frozen):
    """A phase mteb reported in its TaskResult, placed on the run's clock and paired with the live one."""

    name: str
    split: str = ""
    subset: str = ""
    mteb_seconds: float
    seen_live: bool
    phase_id: int | None = None
    start_s: float | None = None
    live_seconds: float | None = None
    difference_ms: float | None = None


def finite_or_null(value: Any, where: str = "") -> tuple[Any, list[str]]:
    """``value`` (JSON's kinds: objects, lists, numbers, text) with every NaN or infinite number made None,
    and where each was (``test[0].pearson``): JSON has no NaN, and a figure that is not a number was
    not measured. A strict reader (JavaScript's, jq, orjson) refuses a file that holds a bare ``NaN``."""
    found: list[str] = []

    def walk(v: Any, at: str) -> Any:
        if isinstance(v, dict):
            return {k: walk(x, f"{at}.{k}" if at else str(k)) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            items = [walk(x, f"{at}[{i}]") for i, x in enumerate(v)]
            return tuple(items) if isinstance(v, tuple) else items
        if isinstance(v, numbers.Real) and not isinstance(v, numbers.Integral) and not math.isfinite(float(v)):
            found.append(at or "the value")
            return None
        return v

    return walk(value, where), found


class MtebTask(_Frozen):
    """One MTEB task's outcome; the scores are mteb's own."""

    kind: Literal["mteb_task"] = "mteb_task"
    task: str
    status: Literal["ok", "failed", "cancelled", "running"]
    phase_id: int | None = None
    type: str | None = None
    main_score_name: str | None = None
    main_score: float | None = None
    # mteb's own score rows per split, as mteb writes them (its metric names are its own).
    scores: dict[str, tuple[dict[str, Any], ...]] = Field(default_factory=dict)
    evaluation_time: float | None = None
    mteb_phases: tuple[MtebPhase, ...] = ()
    results_file: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)  # where the data came from: local folder or the Hub's dataset
    encodes: tuple[MtebEncode, ...] = ()
    seconds: float | None = None
    error: str | None = None
    speed: SpeedResult | None = None
    stage: Literal["before", "after"] | None = None  # a training run's evaluation before or after it trained

    @property
    def key(self) -> str:
        return f"mteb:{self.stage}:{self.task}" if self.stage else f"mteb:{self.task}"


class CellResult(_Frozen):
    """What a matrix cell measured beyond the run's own figures: its stated encode's latency, the
    energy of that encode where a counter exists, and how its vectors agree with the reference cell's."""

    kind: Literal["cell"] = "cell"
    status: Literal["ok", "unstable"] = "ok"  # unstable: NaN or infinite values; not scored
    cost_workload: str  # what was timed, in words
    items: int  # texts per timed call
    stats: LatencyStats  # the timed calls (warm-up apart)
    items_per_s: float | None = None  # items / median call
    embedding_dim: int | None = None
    nonfinite: int = 0  # NaN or infinite values in the cost text's embeddings
    precision: str = "float32"  # the vectors the scorer saw
    calibration: str | None = None  # int8: how the per-dimension ranges were chosen
    energy_source: str | None = None
    energy_j_per_1000: float | None = None  # above the idle baseline
    energy_gross_j: float | None = None
    energy_idle_w: float | None = None
    energy_window_s: float | None = None
    energy_items: int | None = None
    energy_why: str | None = None  # why there is no energy figure
    reference_written: str | None = None  # this cell is the reference: its embeddings file
    agreement_mean: float | None = None  # cosine per text with the reference cell (the cost text)
    agreement_min: float | None = None
    agreement_dims: int | None = None  # the dimensions both vectors have (the shorter one's)
    agreement_why: str | None = None
    agrees_1e4: bool | None = None  # every text's cosine within 1e-4 of 1 (asked of float32 graphs)
    top_k: int | None = None
    topk_overlap: float | None = None  # mean share of the reference's top-k documents in this cell's top-k
    top1_correct: int | None = None
    queries: int | None = None


class NeighbourScore(_Frozen):
    """Top-K neighbour accuracy on a labelled file: for each text, the share of its K nearest
    neighbours (itself excluded) that carry its label, averaged over the texts."""

    kind: Literal["neighbours"] = "neighbours"
    stage: Literal["before", "after"] | None = None
    name: str  # the file as given
    items: int
    labels: int
    k: int
    distance: Literal["cosine", "euclidean"]
    accuracy: float | None  # None: the embeddings were not finite (``why``)
    # The same share for neighbours drawn at random: sum over labels of n(n-1), over N(N-1). Exact, not sampled.
    chance: float
    per_label: dict[str, float] = Field(default_factory=dict)  # up to MAX_LABELS_KEPT labels, the rest only in the mean
    prompt: str | None = None  # the prompt the texts were encoded with; None: the model's default
    seconds: float  # encoding and the neighbour search
    why: str | None = None  # why there is no accuracy

    @property
    def key(self) -> str:
        return f"neighbours:{self.stage}:{self.name}" if self.stage else f"neighbours:{self.name}"


class EvalChange(_Frozen):
    """One evaluation of a training run, before and after: its score, and what training did to it."""

    evaluation: str  # "STSBenchmark", "neighbours banking77/test.jsonl"
    metric: str  # the task's main score ("cosine_spearman") or "top-5 neighbour accuracy (cosine)"
    before: float | None  # None: not measured (failed, or the run stopped first)
    after: float | None
    change: float | None  # after − before
    regressed: bool | None  # the score fell (on this evaluation's data; not a significance test)
    chance: float | None = None  # neighbour accuracy: the share random neighbours would give


class TrainResult(_Frozen):
    """What a training run did: its data and settings, how far it got, where the model went, and the
    evaluations before and after. The cost per step is the summary's ``training``, folded from the steps."""

    kind: Literal["train"] = "train"
    train_file: str
    data_format: Literal["scored pairs", "pairs", "triplets"]
    columns: tuple[str, ...]
    rows_in_file: int
    examples: int  # the rows trained on (the first --max-examples of the file, or all)
    loss: str  # sentence-transformers' loss class
    loss_chosen: Literal["to fit the data", "as asked"]
    batch_sampler: str
    epochs: float
    max_steps: int | None
    steps_planned: int
    steps_done: int
    epochs_done: float | None
    batch_size: int
    learning_rate: float
    warmup_ratio: float
    warmup_steps: int | None = None  # the steps the learning rate rose over (the ratio of the planned steps, rounded up)
    seed: int
    prompt: str | None  # prepended to every text in training (and in the neighbour evaluations)
    stopped: bool = False  # stopped (Ctrl-C, a signal, the dashboard) before the last step
    saved_to: str | None = None
    not_saved_why: str | None = None
    train_seconds: float | None = None  # the trainer's train() call, end to end
    trainer_loss: float | None = None  # the trainer's own mean of the training loss
    unsplit: str = ""  # what the step's parts include that could not be timed apart
    evaluations: tuple[EvalChange, ...] = ()


AnyResult = Annotated[
    Union[
        CellResult,
        TargetFacts,
        SamplerFacts,
        KernelCounters,
        EncodeResult,
        TokenLengths,
        Agreement,
        SpeedResult,
        SimilarityResult,
        SweepResult,
        VersusResult,
        ClientCeiling,
        LoadResult,
        KneeResult,
        ServerMetrics,
        TokenCounts,
        RequestErrors,
        MtebRun,
        MtebTask,
        NeighbourScore,
        TrainResult,
    ],
    Field(discriminator="kind"),
]


def result_key(result: Any) -> str:
    """Where a result is filed in a run's results: its kind, or a key of its own where a run holds many
    of that kind (``mteb:<task>``, a training run's ``mteb:before:<task>``, ``neighbours:after:<file>``)."""
    if isinstance(result, (MtebTask, MtebRun, NeighbourScore)):
        return result.key
    return str(result.kind)
