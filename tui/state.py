"""What the app shows of one run, folded from the engine's events.

The same fold serves a live run and a saved snapshot (whose events are replayed through it), so a
replayed run shows exactly what was recorded. History is bounded: a day-long run keeps the app's
own memory flat.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from embprof.engine.events import (
    BatchTimed,
    EncodeTimed,
    ErrorEvent,
    Event,
    Note,
    PhaseEnded,
    PhaseStarted,
    ResourceSample,
    Result,
    RunFinished,
    RunStarted,
    raise_peaks,
)
from embprof.engine.stats import describe

MAX_BATCHES = 5_000
MAX_SAMPLES = 3_600  # six minutes at 10 Hz on screen; the snapshot keeps the whole run
PROGRESS = re.compile(r"(\d+)/(\d+)")


@dataclass
class PhaseSpan:
    phase_id: int
    name: str
    detail: str
    start_s: float
    end_s: float | None = None
    ok: bool | None = None

    @property
    def label(self) -> str:
        return f"{self.name} {self.detail}".strip()


@dataclass
class BatchPoint:
    t_s: float
    seconds: float
    items: int
    tokens: int
    warmup: bool


@dataclass
class RunView:
    key: str
    source: str = "live"  # "live" or "snapshot"
    run_id: str = ""
    target: dict[str, Any] = field(default_factory=dict)
    workload: dict[str, Any] = field(default_factory=dict)
    sample_hz: float = 0.0
    state: str = "starting"
    progress: tuple[int, int] | None = None
    finished_status: str | None = None
    duration_s: float | None = None
    last_t_s: float = 0.0
    phases: list[PhaseSpan] = field(default_factory=list)
    batches: deque[BatchPoint] = field(default_factory=lambda: deque(maxlen=MAX_BATCHES))
    timed_s: list[float] = field(default_factory=list)
    warmup_s: list[float] = field(default_factory=list)
    items: int = 0
    tokens: int = 0
    words: int = 0
    samples: deque[ResourceSample] = field(default_factory=lambda: deque(maxlen=MAX_SAMPLES))
    peaks: dict[str, tuple[float, int]] = field(default_factory=dict)  # field -> (value, t_ns)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: list[ErrorEvent] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    snapshot_path: str | None = None
    version: int = 0  # bumped on every change, so widgets redraw only when something moved
    # Per kind of data, so a panel redraws only when what it draws changed: a sample every
    # 100 ms must not rebuild the latency charts.
    versions: dict[str, int] = field(default_factory=lambda: {"timing": 0, "samples": 0, "results": 0, "phases": 0})
    phase_peaks: dict[int, dict[str, tuple[float, int]]] = field(default_factory=dict)  # phase id -> field -> (peak, t_ns)
    _open_phases: set[int] = field(default_factory=set)

    # -- folding ----------------------------------------------------------------------------
    def apply_all(self, events: list[Event]) -> None:
        for e in events:
            self.apply(e)

    def _bump(self, kind: str) -> None:
        self.versions[kind] += 1

    def apply(self, e: Event) -> None:
        self.version += 1
        self.last_t_s = max(self.last_t_s, e.t_ns / 1e9)
        self._bump({ResourceSample: "samples", BatchTimed: "timing", EncodeTimed: "timing", PhaseStarted: "phases",
                    PhaseEnded: "phases"}.get(type(e), "results"))
        if isinstance(e, ResourceSample):
            self.samples.append(e)
            raise_peaks(self.peaks, e)
            # Per open phase, on every sample: the sample buffer keeps only the latest hour.
            for pid in self._open_phases:
                raise_peaks(self.phase_peaks.setdefault(pid, {}), e)
        elif isinstance(e, BatchTimed):
            self.batches.append(BatchPoint(e.t_ns / 1e9, e.duration_ns / 1e9, e.items, e.tokens, e.warmup))
        elif isinstance(e, EncodeTimed):
            if e.warmup:
                self.warmup_s.append(e.duration_ns / 1e9)
            else:
                self.timed_s.append(e.duration_ns / 1e9)
                self.items += e.items
                self.tokens += e.tokens
                self.words += e.words
        elif isinstance(e, PhaseStarted):
            self.phases.append(PhaseSpan(e.phase_id, e.name, e.detail, e.t_ns / 1e9))
            self._open_phases.add(e.phase_id)
            self._state_for_phase(e)
        elif isinstance(e, PhaseEnded):
            self._open_phases.discard(e.phase_id)
            for p in reversed(self.phases):
                if p.phase_id == e.phase_id:
                    p.end_s, p.ok = e.t_ns / 1e9, e.ok
                    break
        elif isinstance(e, RunStarted):
            self.run_id = e.run_id
            self.target = dict(e.target)
            self.workload = dict(e.workload)
            self.sample_hz = e.sample_hz
            self.state = "starting"
        elif isinstance(e, Result):
            self.results[e.name] = e.data
            if e.name == "target":
                self.target.update(e.data)
        elif isinstance(e, ErrorEvent):
            self.errors.append(e)
        elif isinstance(e, Note):
            self.notes.append(e.text)
        elif isinstance(e, RunFinished):
            self.finished_status = e.status
            self.duration_s = e.duration_ns / 1e9
            self.state = {"complete": "done", "incomplete": "stopped", "failed": "failed"}[e.status]

    def _state_for_phase(self, e: PhaseStarted) -> None:
        m = PROGRESS.search(e.detail)
        if e.name in ("import", "load"):
            self.state = "loading"
        elif e.name == "warm-up":
            self.state = "warming up"
        else:
            self.state = "running"
            self.progress = (int(m.group(1)), int(m.group(2))) if m else None

    # -- derived ----------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.finished_status is None and self.source == "live"

    @property
    def state_text(self) -> str:
        if self.state == "running" and self.progress:
            return f"running {self.progress[0]}/{self.progress[1]}"
        return self.state

    def stats(self) -> dict[str, Any]:
        return describe(self.timed_s)

    def throughput(self) -> dict[str, float]:
        total = sum(self.timed_s)
        if total <= 0:
            return {}
        return {"items_per_s": self.items / total, "tokens_per_s": self.tokens / total, "words_per_s": self.words / total}

    @property
    def has_gpu(self) -> bool:
        return any(s.gpu_total_mib is not None for s in self.samples)

    @property
    def host_only_reason(self) -> str:
        sampler = self.results.get("sampler") or {}
        if sampler.get("host_only_reason"):
            return str(sampler["host_only_reason"])
        for n in self.notes:
            if n.startswith("host-only sampling: "):
                return n.removeprefix("host-only sampling: ").split(";")[0]
        return ""

    def phase_peak(self, phase_id: int, field: str) -> float | None:
        """The largest sampled value of a field while a phase ran (so far, if it still runs)."""
        found = self.phase_peaks.get(phase_id, {}).get(field)
        return found[0] if found else None

    def phase_at(self, t_s: float) -> str:
        for p in reversed(self.phases):
            if p.start_s <= t_s and (p.end_s is None or t_s <= p.end_s):
                return p.label
        return ""

    @property
    def title(self) -> str:
        model = str(self.target.get("model_name") or "model")
        return f"{self.workload.get('name', 'run')} · {model}"
