"""The engine's one event stream.

Every fact the engine learns becomes one immutable event. The same stream feeds the TUI, the
headless console and the snapshot recorder, so what was shown and what was saved cannot disagree.
Times are nanoseconds since the run started, on the monotonic clock (``time.perf_counter_ns``).
Sizes are MiB (2**20 bytes) and say so in the field name.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Union

from .plan import RunPlan
from .results import AnyResult, TargetFacts, result_key
from .workload_facts import WorkloadFacts

MIB = 1 << 20

ErrorKind = Literal["input", "runtime", "oom", "cancelled"]
RunStatus = Literal["complete", "incomplete", "failed"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RunStarted:
    t_ns: int
    run_id: str
    started_utc: str
    target: TargetFacts  # what the target says of itself before it is loaded; a Result with its loaded facts follows
    workload: WorkloadFacts  # what the workload learned of its inputs; its settings are the plan's
    sample_hz: float
    plan: RunPlan | None = None  # what ran: what `embprof rerun` runs again (credentials never serialised)
    kind: Literal["run_started"] = "run_started"


@dataclass(frozen=True, slots=True, kw_only=True)
class PhaseStarted:
    t_ns: int
    phase_id: int
    name: str
    detail: str = ""
    parent_id: int = 0  # the phase this one runs inside; 0 at the top level
    kind: Literal["phase_started"] = "phase_started"


@dataclass(frozen=True, slots=True, kw_only=True)
class PhaseEnded:
    t_ns: int
    phase_id: int
    name: str
    duration_ns: int
    ok: bool = True
    # The kernel's exact RSS peak over the phase (VmHWM, reset at its start); None: the kernel does not allow the reset.
    rss_hwm_mib: float | None = None
    kind: Literal["phase_ended"] = "phase_ended"


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchTimed:
    """One forward batch inside an encode call: tokenisation plus the model's forward pass.

    sentence-transformers sorts inputs by length inside ``encode()``, so batches of one call are not
    identically distributed: the token counts travel with each time.
    """

    t_ns: int
    phase_id: int
    call_index: int
    batch_index: int
    items: int
    tokens: int | None  # None: the target reports no token counts (llama.cpp's native API)
    padded_tokens: int | None
    duration_ns: int
    warmup: bool
    group: str = ""  # the kind of call it belongs to (see EncodeTimed)
    kind: Literal["batch_timed"] = "batch_timed"


@dataclass(frozen=True, slots=True, kw_only=True)
class EncodeTimed:
    """One whole encode call, timed from the caller's side; warm-ups are recorded, never counted.

    ``group`` names the kind of call: calls of one group do alike work (the repeats of one encode,
    one sweep point, one side of an MTEB task), and latency statistics never pool two groups.
    """

    t_ns: int
    phase_id: int
    call_index: int
    label: str
    items: int
    tokens: int | None  # None: not measured (the target reports no token counts)
    words: int | None  # None: not counted (mteb's texts are not read twice)
    duration_ns: int
    warmup: bool
    group: str = ""
    kind: Literal["encode_timed"] = "encode_timed"


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestTimed:
    """One HTTP request to an embedding server: from send to parsed response, or to its failure."""

    t_ns: int
    phase_id: int
    call_index: int
    request_index: int
    items: int
    duration_ns: int
    status: int | None  # the HTTP status; None when no response came
    bytes_sent: int
    bytes_received: int
    tokens: int | None = None  # when the server reports them
    received_ns: int | None = None  # send to the last byte of the answer, before parsing it
    error_kind: str = ""  # "", "timeout", "connection", "http 3xx/4xx/5xx", "bad body", "bad shape", "too large"
    error: str = ""
    warmup: bool = False
    group: str = ""  # the kind of call it belongs to (see EncodeTimed)
    lag_ns: int | None = None  # open-loop load: how late it was sent against its schedule (its duration counts from the schedule)
    kind: Literal["request_timed"] = "request_timed"


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainStep:
    """One optimizer step of a training run, timed through the trainer's callback hooks.

    ``duration_ns`` runs from the end of the previous step (or the start of the epoch) to the end
    of this one, so the steps of a run add up to its training time. Its parts: ``data_ns`` until the
    trainer began the step (the next batch: loading, collating, tokenising; and the trainer's
    bookkeeping after the previous step), ``forward_ns`` the loss module's forward pass (the model on
    every column of the batch, then the loss), ``backward_ns`` the rest of the training step (moving
    the batch, the backward pass, gradient clipping), ``optimizer_ns`` the optimizer's step, the
    learning-rate schedule and zeroing the gradients. A part the hooks could not time is None.
    """

    t_ns: int
    phase_id: int
    step: int  # the trainer's global step, from 1
    steps_planned: int | None = None  # the trainer's max_steps for this run
    epoch: float  # the trainer's fractional epoch at the end of the step
    samples: int  # rows of the training data in the batch
    tokens: int | None  # non-padding tokens over every column of the batch
    loss: float | None  # the loss module's value for the batch; None: not finite
    learning_rate: float | None  # the rate the optimizer stepped with
    duration_ns: int
    data_ns: int | None
    forward_ns: int | None
    backward_ns: int | None
    optimizer_ns: int | None
    rss_mib: float | None = None  # resident set at the end of the step
    max_rss_mib: float | None = None  # the kernel's high-water mark (ru_maxrss) at the end of the step
    max_rss_rose: bool | None = None  # the high-water mark rose during this step (the first: since training began)
    torch_peak_allocated_mib: float | None = None  # CUDA: torch's peak during this step alone
    torch_peak_reserved_mib: float | None = None
    gpu_process_mib: float | None = None  # NVML: this process's GPU memory at the end of the step
    kind: Literal["train_step"] = "train_step"


@dataclass(frozen=True, slots=True, kw_only=True)
class ResourceSample:
    t_ns: int
    rss_mib: float
    sys_ram_used_mib: float
    sys_ram_available_mib: float
    cpu_percent: float
    per_core_percent: tuple[float, ...]
    threads: int
    gpu_used_mib: float | None = None
    gpu_total_mib: float | None = None
    gpu_process_mib: float | None = None
    gpu_util_percent: float | None = None
    torch_allocated_mib: float | None = None
    torch_reserved_mib: float | None = None
    torch_max_allocated_mib: float | None = None
    torch_max_reserved_mib: float | None = None
    # The embedding server's own process, when it runs on this machine (--server-pid or its port).
    server_rss_mib: float | None = None
    server_cpu_percent: float | None = None
    server_threads: int | None = None
    server_gpu_mib: float | None = None
    kind: Literal["resource_sample"] = "resource_sample"


# Fields of a ResourceSample whose maximum is a peak worth reporting.
PEAK_FIELDS = (
    "rss_mib",
    "sys_ram_used_mib",
    "gpu_used_mib",
    "gpu_process_mib",
    "torch_allocated_mib",
    "torch_reserved_mib",
    "cpu_percent",
    "threads",
    "server_rss_mib",
    "server_gpu_mib",
    "server_cpu_percent",
)


def raise_peaks(peaks: dict[str, tuple[float, int]], sample: ResourceSample) -> None:
    """Keep, per field, the largest value seen so far and when it was seen (t_ns)."""
    for name in PEAK_FIELDS:
        value = getattr(sample, name)
        if value is not None and (name not in peaks or value > peaks[name][0]):
            peaks[name] = (float(value), sample.t_ns)


@dataclass(frozen=True, slots=True, kw_only=True)
class Note:
    t_ns: int
    text: str
    level: Literal["info", "warning"] = "info"
    kind: Literal["note"] = "note"


@dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    """One typed result of the workload or the runner (see ``results.py``)."""

    t_ns: int
    result: AnyResult
    kind: Literal["result"] = "result"

    @property
    def name(self) -> str:
        return result_key(self.result)


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorEvent:
    t_ns: int
    error_kind: ErrorKind
    message: str
    phase: str = ""
    detail: str = ""
    kind: Literal["error"] = "error"


@dataclass(frozen=True, slots=True, kw_only=True)
class RunFinished:
    t_ns: int
    status: RunStatus
    duration_ns: int
    kind: Literal["run_finished"] = "run_finished"


Event = Union[
    RunStarted,
    PhaseStarted,
    PhaseEnded,
    BatchTimed,
    EncodeTimed,
    RequestTimed,
    TrainStep,
    ResourceSample,
    Note,
    Result,
    ErrorEvent,
    RunFinished,
]

Subscriber = Callable[[Event], None]


@dataclass(slots=True)
class Clock:
    """The run's time base: nanoseconds since the run started, monotonic."""

    t0_ns: int = field(default_factory=time.perf_counter_ns)

    def now(self) -> int:
        return time.perf_counter_ns() - self.t0_ns


class EventBus:
    """Fans each event out to every subscriber, in one order for all of them.

    Publishing happens on the runner and sampler threads; the lock keeps every consumer's view of
    the order identical. Subscribers must be quick and must not publish themselves.
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or Clock()
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()

    def subscribe(self, subscriber: Subscriber) -> None:
        with self._lock:
            self._subscribers.append(subscriber)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        with self._lock:
            self._subscribers.remove(subscriber)

    def publish(self, event: Event) -> None:
        with self._lock:
            for subscriber in self._subscribers:
                subscriber(event)
