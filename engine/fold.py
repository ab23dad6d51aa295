"""The one fold of the event stream: a run's figures, as the events arrive.

``RunState.apply`` takes every event once, in order, in constant time and bounded memory (the
latency series bound themselves, see ``stats.py``); ``RunState.summary()`` gives the snapshot's
summary. The snapshot recorder and the dashboard both fold with it, so what the screen shows and
what a snapshot says are computed by the same code.

Latency statistics are kept per *group* (the kind of call: the repeats of one encode, one sweep
point, one side of an MTEB task, A or B of a --vs run) and never pooled across groups: calls of
different kinds have different distributions, and one p50 over them would describe neither.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict

from .events import (
    PEAK_FIELDS,
    BatchTimed,
    EncodeTimed,
    ErrorEvent,
    ErrorKind,
    Event,
    Note,
    PhaseEnded,
    PhaseStarted,
    RequestTimed,
    ResourceSample,
    Result,
    RunFinished,
    RunStarted,
    RunStatus,
    TrainStep,
)
from .plan import RunPlan
from .results import AnyResult, KernelCounters, LatencyStats, SamplerFacts, TargetFacts
from .stats import LatencySeries, known_sum
from .workload_facts import WorkloadFacts

MAX_WARMUPS_KEPT = 100  # per group: a warm-up list is for reading, not for statistics
MAX_NOTES = 1_000


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PhaseSummary(_Model):
    phase_id: int
    name: str
    detail: str
    parent_id: int = 0
    path: str = ""  # the enclosing phases' names and this one's, "STS16 › Encoding samples 1"
    start_s: float
    end_s: float | None
    duration_s: float | None
    ok: bool | None
    peaks: dict[str, float | None]
    samples: int
    # The last sample before the phase began: with the phase's peak it says what the phase added.
    rss_before_mib: float | None = None
    gpu_process_before_mib: float | None = None
    # The kernel's exact RSS peak over the phase (VmHWM, reset at its start), beside the sampled one; None: not measured.
    rss_hwm_mib: float | None = None


class Peak(_Model):
    sampled: float | None = None
    at_s: float | None = None
    phase: str = ""
    counter: float | None = None
    counter_source: str = ""


class CallGroup(_Model):
    """The timed calls of one kind, warm-ups apart; a figure not measured is None."""

    group: str
    calls: int
    warmup_calls: int
    warmup_s: tuple[float, ...]
    stats: LatencyStats
    items: int
    tokens: int | None
    words: int | None
    items_per_s: float | None
    tokens_per_s: float | None
    words_per_s: float | None
    batches: int
    batch_stats: LatencyStats
    batch_tokens: int | None
    padded_tokens: int | None
    padding_percent: float | None


class RequestGroup(_Model):
    """Requests to an embedding server of one kind of call (warm-ups counted apart)."""

    group: str
    requests: int
    answered: int
    failed: int
    failed_by_kind: dict[str, int]
    stats: LatencyStats  # answered, not warm-up: send to parsed response
    bytes_sent: int
    bytes_received: int
    tokens: int | None  # as the server reports them; None when it reports none


class StepPart(_Model):
    """One part of a training step: its statistics over the steps, and its share of their total time."""

    part: str
    stats: LatencyStats
    share_percent: float | None


class StepPeak(_Model):
    value: float | None = None
    step: int | None = None  # the step it was reached in


class TrainingSummary(_Model):
    """The cost of a training run, folded from its steps: time per step and per part of a step,
    throughput, loss and learning rate, and memory per step with the step that reached its peak."""

    steps: int
    first_step: int | None
    last_step: int | None
    epoch: float | None
    samples: int
    tokens: int | None
    seconds: float  # the steps' durations added up
    samples_per_s: float | None
    tokens_per_s: float | None
    step: LatencyStats
    parts: tuple[StepPart, ...]
    unsplit: tuple[str, ...]  # parts the hooks could not time apart in some step
    first_loss: float | None
    last_loss: float | None
    min_loss: StepPeak
    last_learning_rate: float | None
    rss_at_step_end: StepPeak  # the largest resident set read at a step's end
    max_rss: StepPeak  # the kernel's high-water mark after the last step, and the step it last rose in
    torch_allocated: StepPeak  # CUDA: the largest per-step peak of torch's allocations
    torch_reserved: StepPeak
    gpu_process: StepPeak  # NVML: the largest process figure read at a step's end


class RunError(_Model):
    """An error the run met (an ``ErrorEvent``, as the summary keeps it)."""

    t_ns: int
    error_kind: ErrorKind
    message: str
    phase: str = ""
    detail: str = ""


class Summary(_Model):
    duration_s: float
    phases: tuple[PhaseSummary, ...]
    calls: tuple[CallGroup, ...]
    requests: tuple[RequestGroup, ...]
    peaks: dict[str, Peak]
    results: dict[str, AnyResult]
    errors: tuple[RunError, ...]
    notes: tuple[str, ...]
    samples: int
    timeline_stride: int = 1
    events_seen: dict[str, int] = {}
    events_kept: dict[str, int] = {}
    training: TrainingSummary | None = None  # a training run's steps

    @property
    def headline(self) -> CallGroup | None:
        """The run's one kind of timed call, when it has exactly one: its latency is the run's."""
        timed = [c for c in self.calls if c.calls]
        return timed[0] if len(timed) == 1 else None


@dataclass(eq=False)  # one phase is one object: compared by identity, not by its peaks
class PhaseState:
    phase_id: int
    name: str
    detail: str
    parent_id: int
    path: str
    start_s: float
    end_s: float | None = None
    duration_s: float | None = None
    ok: bool | None = None
    # field -> the highest value sampled while the phase was open; when it came is the run's peak's concern, not the phase's.
    peaks: dict[str, float] = field(default_factory=dict)
    samples: int = 0
    before: ResourceSample | None = None
    rss_hwm_mib: float | None = None  # the kernel's exact peak over the phase; None: not measured

    @property
    def label(self) -> str:
        return f"{self.name} {self.detail}".strip()

    def peak(self, name: str) -> float | None:
        return self.peaks.get(name)


class _Calls:
    __slots__ = ("batch_tokens", "batches", "items", "latency", "padded", "seconds", "tokens", "warmup_calls", "warmups", "words")

    def __init__(self) -> None:
        self.latency = LatencySeries()
        self.warmups: deque[float] = deque(maxlen=MAX_WARMUPS_KEPT)
        self.warmup_calls = 0
        self.items = 0
        self.tokens: int | None = 0
        self.words: int | None = 0
        self.seconds = 0.0
        self.batches = LatencySeries()
        self.batch_tokens: int | None = 0
        self.padded: int | None = 0


class _Requests:
    __slots__ = ("answered", "count", "failed", "kinds", "latency", "received", "sent", "tokens")

    def __init__(self) -> None:
        self.latency = LatencySeries()
        self.count = 0
        self.answered = 0
        self.failed = 0
        self.kinds: dict[str, int] = {}
        self.sent = 0
        self.received = 0
        self.tokens: int | None = 0


STEP_PARTS = (("data", "data_ns"), ("forward", "forward_ns"), ("backward", "backward_ns"), ("optimizer", "optimizer_ns"))


class _Training:
    """A training run's steps, folded in constant memory (the latency series bound themselves)."""

    def __init__(self) -> None:
        # RunState makes one at a run's first step and adds that step at once, so the Nones below are never
        # what a summary reads; they are the types' empty values, not figures.
        self.steps = 0
        self.first_step: int | None = None
        self.last_step: int | None = None
        self.epoch: float | None = None
        self.samples = 0
        self.tokens: int | None = 0
        self.seconds = 0.0
        self.step = LatencySeries()
        self.parts = {name: LatencySeries() for name, _ in STEP_PARTS}
        self.part_seconds = dict.fromkeys(self.parts, 0.0)
        self.unsplit: set[str] = set()
        self.first_loss: float | None = None
        self.last_loss: float | None = None
        self.min_loss: tuple[float, int] | None = None
        self.last_lr: float | None = None
        self.peaks: dict[str, tuple[float, int]] = {}
        self.max_rss: float | None = None
        self.max_rss_step: int | None = None

    def add(self, e: TrainStep) -> None:
        self.steps += 1
        if self.first_step is None:
            self.first_step = e.step
        self.last_step, self.epoch = e.step, e.epoch
        self.samples += e.samples
        self.tokens = known_sum(self.tokens, e.tokens)
        seconds = e.duration_ns / 1e9
        self.seconds += seconds
        self.step.add(seconds)
        for name, attr in STEP_PARTS:
            value = getattr(e, attr)
            if value is None:
                self.unsplit.add(name)
            else:
                self.parts[name].add(value / 1e9)
                self.part_seconds[name] += value / 1e9
        if e.loss is not None:
            if self.first_loss is None:
                self.first_loss = e.loss
            if self.min_loss is None or e.loss < self.min_loss[0]:
                self.min_loss = (e.loss, e.step)
        self.last_loss = e.loss
        self.last_lr = e.learning_rate
        for name in ("rss_mib", "torch_peak_allocated_mib", "torch_peak_reserved_mib", "gpu_process_mib"):
            value = getattr(e, name)
            if value is not None and (name not in self.peaks or value > self.peaks[name][0]):
                self.peaks[name] = (value, e.step)
        if e.max_rss_mib is not None:
            self.max_rss = e.max_rss_mib
            if e.max_rss_rose:
                self.max_rss_step = e.step

    def _peak(self, name: str) -> StepPeak:
        found = self.peaks.get(name)
        return StepPeak(value=found[0], step=found[1]) if found else StepPeak()

    def summary(self) -> TrainingSummary:
        total = self.seconds
        return TrainingSummary(
            steps=self.steps, first_step=self.first_step, last_step=self.last_step, epoch=self.epoch,
            samples=self.samples, tokens=self.tokens, seconds=total,
            samples_per_s=_rate(self.samples, total), tokens_per_s=_rate(self.tokens, total),
            step=self.step.stats(),
            parts=tuple(StepPart(part=name, stats=series.stats(),
                                 share_percent=100.0 * self.part_seconds[name] / total if series.count and total > 0 else None)
                        for name, series in self.parts.items()),
            unsplit=tuple(name for name, _ in STEP_PARTS if name in self.unsplit),
            first_loss=self.first_loss, last_loss=self.last_loss,
            min_loss=StepPeak(value=self.min_loss[0], step=self.min_loss[1]) if self.min_loss else StepPeak(),
            last_learning_rate=self.last_lr,
            rss_at_step_end=self._peak("rss_mib"),
            max_rss=StepPeak(value=self.max_rss, step=self.max_rss_step),
            torch_allocated=self._peak("torch_peak_allocated_mib"),
            torch_reserved=self._peak("torch_peak_reserved_mib"),
            gpu_process=self._peak("gpu_process_mib"),
        )


def _rate(amount: int | None, seconds: float) -> float | None:
    return amount / seconds if amount is not None and seconds > 0 else None


class RunState:
    """A run's figures, folded from its events (live, or replayed from a snapshot)."""

    def __init__(self) -> None:
        self.run_id = ""
        self.started_utc = ""
        self.plan: RunPlan | None = None
        self.target: TargetFacts | None = None  # the latest the target said of itself
        self.workload: WorkloadFacts | None = None
        self.sample_hz = 0.0
        self.status: RunStatus | None = None
        self.duration_s: float | None = None
        self.last_t_s = 0.0
        self.phases: list[PhaseState] = []
        self._phase_by_id: dict[int, PhaseState] = {}
        self._open: list[PhaseState] = []
        self.peaks: dict[str, tuple[float, int]] = {}
        self._calls: dict[str, _Calls] = {}
        self._requests: dict[str, _Requests] = {}
        self.results: dict[str, Any] = {}
        self.errors: list[ErrorEvent] = []
        self.notes: list[Note] = []
        self.samples_seen = 0
        self.last_sample: ResourceSample | None = None
        self.events_seen: dict[str, int] = {}
        self.training: _Training | None = None

    # -- the fold ----------------------------------------------------------------------------------
    def apply(self, e: Event) -> None:
        self.events_seen[e.kind] = self.events_seen.get(e.kind, 0) + 1
        t_s = e.t_ns / 1e9
        self.last_t_s = max(self.last_t_s, t_s)
        if isinstance(e, ResourceSample):
            self._sample(e)
        elif isinstance(e, BatchTimed):
            c = self._group(e.group)
            if not e.warmup:
                c.batches.add(e.duration_ns / 1e9)
                c.batch_tokens = known_sum(c.batch_tokens, e.tokens)
                c.padded = known_sum(c.padded, e.padded_tokens)
        elif isinstance(e, EncodeTimed):
            c = self._group(e.group)
            seconds = e.duration_ns / 1e9
            if e.warmup:
                c.warmup_calls += 1
                c.warmups.append(seconds)
            else:
                c.latency.add(seconds)
                c.seconds += seconds
                c.items += e.items
                c.tokens = known_sum(c.tokens, e.tokens)
                c.words = known_sum(c.words, e.words)
        elif isinstance(e, RequestTimed):
            self._request(e)
        elif isinstance(e, TrainStep):
            if self.training is None:
                self.training = _Training()
            self.training.add(e)
        elif isinstance(e, PhaseStarted):
            parent = self._phase_by_id.get(e.parent_id)
            path = f"{parent.path} › {e.name}" if parent is not None else e.name
            p = PhaseState(e.phase_id, e.name, e.detail, e.parent_id, path, t_s, before=self.last_sample)
            self.phases.append(p)
            self._phase_by_id[e.phase_id] = p
            self._open.append(p)
        elif isinstance(e, PhaseEnded):
            ended = self._phase_by_id.get(e.phase_id)
            if ended is not None:
                ended.end_s, ended.duration_s, ended.ok, ended.rss_hwm_mib = t_s, e.duration_ns / 1e9, e.ok, e.rss_hwm_mib
                if ended in self._open:
                    self._open.remove(ended)
        elif isinstance(e, Result):
            self.results[e.name] = e.result
            if isinstance(e.result, TargetFacts):
                self.target = e.result
        elif isinstance(e, RunStarted):
            self.run_id, self.started_utc = e.run_id, e.started_utc
            self.plan = e.plan
            self.target = e.target
            self.workload = e.workload
            self.sample_hz = e.sample_hz
        elif isinstance(e, ErrorEvent):
            self.errors.append(e)
        elif isinstance(e, Note):
            if len(self.notes) < MAX_NOTES:
                self.notes.append(e)
        elif isinstance(e, RunFinished):
            self.status = e.status
            self.duration_s = e.duration_ns / 1e9

    def _group(self, name: str) -> _Calls:
        c = self._calls.get(name)
        if c is None:
            c = self._calls[name] = _Calls()
        return c

    def _sample(self, s: ResourceSample) -> None:
        self.samples_seen += 1
        self.last_sample = s
        for name in PEAK_FIELDS:
            value = getattr(s, name)
            if value is None:
                continue
            if name not in self.peaks or value > self.peaks[name][0]:
                self.peaks[name] = (float(value), s.t_ns)
            for p in self._open:
                found = p.peaks.get(name)
                if found is None or value > found:
                    p.peaks[name] = float(value)
        for p in self._open:
            p.samples += 1

    def _request(self, e: RequestTimed) -> None:
        r = self._requests.get(e.group)
        if r is None:
            r = self._requests[e.group] = _Requests()
        r.count += 1
        r.sent += e.bytes_sent
        r.received += e.bytes_received
        if e.error_kind:
            r.failed += 1
            r.kinds[e.error_kind] = r.kinds.get(e.error_kind, 0) + 1
            return
        r.answered += 1
        r.tokens = known_sum(r.tokens, e.tokens)
        if not e.warmup:
            r.latency.add(e.duration_ns / 1e9)

    # -- reading -------------------------------------------------------------------------------------
    @property
    def open_phases(self) -> list[PhaseState]:
        return list(self._open)

    def phase(self, phase_id: int) -> PhaseState | None:
        return self._phase_by_id.get(phase_id)

    def phase_peak(self, phase_id: int, name: str) -> float | None:
        p = self._phase_by_id.get(phase_id)
        return p.peak(name) if p is not None else None

    def phase_at(self, t_s: float) -> str:
        """The innermost (latest-started) phase that holds the moment, as "name detail"."""
        for p in reversed(self.phases):
            if p.start_s <= t_s and (p.end_s is None or t_s <= p.end_s):
                return p.label
        return ""

    def call_groups(self) -> list[CallGroup]:
        return [self._call_group(name, c) for name, c in self._calls.items() if c.latency.count or c.warmup_calls]

    def _call_group(self, name: str, c: _Calls) -> CallGroup:
        padded = c.padded if c.batches.count else None
        tokens = c.batch_tokens if c.batches.count else None
        return CallGroup(
            group=name,
            calls=c.latency.count,
            warmup_calls=c.warmup_calls,
            warmup_s=tuple(c.warmups),
            stats=c.latency.stats(),
            items=c.items,
            tokens=c.tokens if c.latency.count else None,
            words=c.words if c.latency.count else None,
            items_per_s=_rate(c.items, c.seconds),
            tokens_per_s=_rate(c.tokens, c.seconds),
            words_per_s=_rate(c.words, c.seconds),
            batches=c.batches.count,
            batch_stats=c.batches.stats(),
            batch_tokens=tokens,
            padded_tokens=padded,
            padding_percent=100.0 * (padded - tokens) / padded if padded and tokens is not None else None,
        )

    def headline(self) -> CallGroup | None:
        """The run's one kind of timed call, when it has exactly one (its statistics are built for it alone)."""
        timed = [(name, c) for name, c in self._calls.items() if c.latency.count]
        return self._call_group(*timed[0]) if len(timed) == 1 else None

    def request_groups(self) -> list[RequestGroup]:
        return [
            RequestGroup(group=name, requests=r.count, answered=r.answered, failed=r.failed, failed_by_kind=dict(r.kinds),
                         stats=r.latency.stats(), bytes_sent=r.sent, bytes_received=r.received,
                         tokens=r.tokens if r.answered else None)
            for name, r in self._requests.items()
        ]

    @property
    def host_only_reason(self) -> str:
        sampler = self.results.get("sampler")
        if isinstance(sampler, SamplerFacts) and sampler.host_only_reason:
            return sampler.host_only_reason
        for n in self.notes:
            if n.text.startswith("host-only sampling: "):
                return n.text.removeprefix("host-only sampling: ").split(";")[0]
        return ""

    def phase_summaries(self) -> list[PhaseSummary]:
        out = []
        for p in self.phases:
            out.append(PhaseSummary(
                phase_id=p.phase_id, name=p.name, detail=p.detail, parent_id=p.parent_id, path=p.path, start_s=p.start_s,
                end_s=p.end_s, duration_s=p.duration_s, ok=p.ok,
                peaks={name: p.peak(name) for name in PEAK_FIELDS}, samples=p.samples,
                rss_before_mib=p.before.rss_mib if p.before is not None else None,
                gpu_process_before_mib=p.before.gpu_process_mib if p.before is not None else None,
                rss_hwm_mib=p.rss_hwm_mib,
            ))
        return out

    def peak_summaries(self) -> dict[str, Peak]:
        out: dict[str, Peak] = {}
        for name in PEAK_FIELDS:
            if name in self.peaks:
                value, t_ns = self.peaks[name]
                out[name] = Peak(sampled=value, at_s=t_ns / 1e9, phase=self.phase_at(t_ns / 1e9))
        counters = self.results.get("kernel_counters")
        if isinstance(counters, KernelCounters):
            if counters.ru_maxrss_mib is not None:
                base = out.get("rss_mib") or Peak()
                out["rss_mib"] = base.model_copy(update={"counter": counters.ru_maxrss_mib, "counter_source": "ru_maxrss"})
            torch_counters: tuple[tuple[str, float | None, str], ...] = (
                ("torch_reserved_mib", counters.torch_max_memory_reserved_mib, "torch.cuda.max_memory_reserved"),
                ("torch_allocated_mib", counters.torch_max_memory_allocated_mib, "torch.cuda.max_memory_allocated"),
            )
            for field_name, counter, source in torch_counters:
                if counter is not None:
                    base = out.get(field_name) or Peak()
                    out[field_name] = base.model_copy(update={"counter": counter, "counter_source": source})
        return out

    def summary(self, *, timeline_stride: int = 1, events_kept: dict[str, int] | None = None) -> Summary:
        duration: float = self.duration_s if self.duration_s is not None else self.last_t_s
        return Summary(
            duration_s=duration,
            phases=tuple(self.phase_summaries()),
            calls=tuple(self.call_groups()),
            requests=tuple(self.request_groups()),
            peaks=self.peak_summaries(),
            results=dict(self.results),
            errors=tuple(RunError(t_ns=e.t_ns, error_kind=e.error_kind, message=e.message, phase=e.phase, detail=e.detail)
                         for e in self.errors),
            notes=tuple(n.text for n in self.notes),
            samples=self.samples_seen,
            timeline_stride=timeline_stride,
            events_seen=dict(self.events_seen),
            events_kept=dict(events_kept or self.events_seen),
            training=self.training.summary() if self.training is not None else None,
        )
