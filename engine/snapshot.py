"""Profile snapshots: the recorded event stream plus the environment, one JSON file per run.

A snapshot is written atomically and validated on load by its pydantic model, so a file that
does not parse or does not fit the schema is refused with one sentence instead of half-read.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import UserError
from .events import (
    PEAK_FIELDS,
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
    RunStatus,
    raise_peaks,
)
from .files import atomic_write_bytes
from .stats import describe
from .targets import library_version

SCHEMA_VERSION: Literal[1] = 1
DEFAULT_MAX_SAMPLES = 36_000  # one hour at 10 Hz before the timeline is thinned



class PhaseSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")
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


class Peak(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sampled: float | None = None
    at_s: float | None = None
    phase: str = ""
    counter: float | None = None
    counter_source: str = ""


class Summary(BaseModel):
    model_config = ConfigDict(extra="forbid")
    duration_s: float
    phases: list[PhaseSummary]
    encode: dict[str, Any]
    batches: dict[str, Any]
    throughput: dict[str, float]
    peaks: dict[str, Peak]
    results: dict[str, dict[str, Any]]
    errors: list[dict[str, Any]]
    notes: list[str]
    samples: int
    timeline_stride: int


class Snapshot(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_version: Literal[1]
    tool: Literal["embprof"]
    tool_version: str
    run_id: str
    created_utc: str
    status: RunStatus
    environment: dict[str, Any]
    target: dict[str, Any]
    workload: dict[str, Any]
    summary: Summary
    events: list[Annotated[Event, Field(discriminator="kind")]]


class Recorder:
    """A subscriber that keeps the run's events, with a bounded resource timeline.

    Past ``max_samples`` samples the timeline keeps every other one (and then every fourth …);
    peaks, overall and per phase, are tracked on every sample as it arrives, so thinning never
    loses a peak.
    """

    def __init__(self, max_samples: int = DEFAULT_MAX_SAMPLES) -> None:
        self.max_samples = max_samples
        self._lock = threading.Lock()
        self._events: list[Event] = []
        self._samples: list[ResourceSample] = []
        self._stride = 1
        self._seen_samples = 0
        self._open: dict[int, PhaseStarted] = {}
        self.phase_peaks: dict[int, dict[str, float | None]] = {}
        self.phase_sample_counts: dict[int, int] = {}
        self.phase_before: dict[int, ResourceSample] = {}
        self._last_sample: ResourceSample | None = None
        self.peaks: dict[str, tuple[float, int]] = {}  # field -> (value, t_ns)

    def __call__(self, event: Event) -> None:
        with self._lock:
            if isinstance(event, ResourceSample):
                self._on_sample(event)
                return
            if isinstance(event, PhaseStarted):
                self._open[event.phase_id] = event
                self.phase_peaks[event.phase_id] = {f: None for f in PEAK_FIELDS}
                self.phase_sample_counts[event.phase_id] = 0
                if self._last_sample is not None:
                    self.phase_before[event.phase_id] = self._last_sample
            elif isinstance(event, PhaseEnded):
                self._open.pop(event.phase_id, None)
            self._events.append(event)

    def _on_sample(self, s: ResourceSample) -> None:
        self._last_sample = s
        raise_peaks(self.peaks, s)
        for name in PEAK_FIELDS:
            value = getattr(s, name)
            if value is None:
                continue
            for pid in self._open:
                current = self.phase_peaks[pid][name]
                if current is None or value > current:
                    self.phase_peaks[pid][name] = float(value)
        for pid in self._open:
            self.phase_sample_counts[pid] += 1
        self._seen_samples += 1
        if (self._seen_samples - 1) % self._stride:
            return
        self._samples.append(s)
        if len(self._samples) > self.max_samples:
            self._samples = self._samples[::2]
            self._stride *= 2

    def events(self) -> list[Event]:
        """All events in arrival order, the (possibly thinned) samples merged back by time."""
        with self._lock:
            merged: list[Event] = [*self._events, *self._samples]
        merged.sort(key=lambda e: e.t_ns)
        return merged

    @property
    def samples_seen(self) -> int:
        """Every sample that arrived, kept on the timeline or thinned away."""
        return self._seen_samples

    @property
    def timeline_stride(self) -> int:
        return self._stride


def _s(ns: int) -> float:
    return ns / 1e9


def summarize(events: list[Event], recorder: Recorder | None = None) -> Summary:
    started: dict[int, PhaseStarted] = {}
    ended: dict[int, PhaseEnded] = {}
    encodes: list[EncodeTimed] = []
    batches: list[BatchTimed] = []
    samples: list[ResourceSample] = []
    results: dict[str, dict[str, Any]] = {}
    errors: list[dict[str, Any]] = []
    notes: list[str] = []
    duration_ns = 0
    for e in events:
        if isinstance(e, PhaseStarted):
            started[e.phase_id] = e
        elif isinstance(e, PhaseEnded):
            ended[e.phase_id] = e
        elif isinstance(e, EncodeTimed):
            encodes.append(e)
        elif isinstance(e, BatchTimed):
            batches.append(e)
        elif isinstance(e, ResourceSample):
            samples.append(e)
        elif isinstance(e, Result):
            results[e.name] = e.data
        elif isinstance(e, ErrorEvent):
            errors.append({k: v for k, v in asdict(e).items() if k != "kind"})
        elif isinstance(e, Note):
            notes.append(e.text)
        elif isinstance(e, RunFinished):
            duration_ns = e.duration_ns
    if not duration_ns and events:
        duration_ns = max(e.t_ns for e in events)

    phases: list[PhaseSummary] = []
    for pid, st in sorted(started.items()):
        en = ended.get(pid)
        end_ns = en.t_ns if en else None
        before: ResourceSample | None
        if recorder is not None and pid in recorder.phase_peaks:
            phase_peaks = dict(recorder.phase_peaks[pid])
            count = recorder.phase_sample_counts[pid]
            before = recorder.phase_before.get(pid)
        else:
            inside = [s for s in samples if st.t_ns <= s.t_ns <= (end_ns if end_ns is not None else duration_ns)]
            phase_peaks = {f: _max(getattr(s, f) for s in inside) for f in PEAK_FIELDS}
            count = len(inside)
            before = next((s for s in reversed(samples) if s.t_ns < st.t_ns), None)
        names = [st.name]
        parent = started.get(st.parent_id)
        while parent is not None:
            names.insert(0, parent.name)
            parent = started.get(parent.parent_id)
        phases.append(
            PhaseSummary(
                phase_id=pid,
                name=st.name,
                detail=st.detail,
                parent_id=st.parent_id,
                path=" › ".join(names),
                rss_before_mib=before.rss_mib if before is not None else None,
                gpu_process_before_mib=before.gpu_process_mib if before is not None else None,
                start_s=_s(st.t_ns),
                end_s=_s(end_ns) if end_ns is not None else None,
                duration_s=_s(en.duration_ns) if en else None,
                ok=en.ok if en else None,
                peaks=phase_peaks,
                samples=count,
            )
        )

    timed = [e for e in encodes if not e.warmup]
    encode_summary: dict[str, Any] = {
        "calls": len(timed),
        "warmup_calls": len(encodes) - len(timed),
        "warmup_s": [_s(e.duration_ns) for e in encodes if e.warmup],
        "stats": describe([_s(e.duration_ns) for e in timed]),
    }
    timed_batches = [b for b in batches if not b.warmup]
    tokens = sum(b.tokens for b in timed_batches)
    padded = sum(b.padded_tokens for b in timed_batches)
    batch_summary: dict[str, Any] = {
        "count": len(timed_batches),
        "stats": describe([_s(b.duration_ns) for b in timed_batches]),
        "tokens": tokens,
        "padded_tokens": padded,
        "padding_percent": 100.0 * (padded - tokens) / padded if padded else 0.0,
    }
    total_s = sum(_s(e.duration_ns) for e in timed)
    throughput: dict[str, float] = {}
    if total_s > 0:
        throughput = {
            "items_per_s": sum(e.items for e in timed) / total_s,
            "tokens_per_s": sum(e.tokens for e in timed) / total_s,
            "words_per_s": sum(e.words for e in timed) / total_s,
        }

    peaks = _peaks(samples, recorder, phases, results.get("kernel_counters", {}))
    return Summary(
        duration_s=_s(duration_ns),
        phases=phases,
        encode=encode_summary,
        batches=batch_summary,
        throughput=throughput,
        peaks=peaks,
        results=results,
        errors=errors,
        notes=notes,
        samples=recorder.samples_seen if recorder is not None else len(samples),
        timeline_stride=recorder.timeline_stride if recorder is not None else 1,
    )


def _max(values: Any) -> float | None:
    present = [float(v) for v in values if v is not None]
    return max(present) if present else None


def _phase_at(t_s: float, phases: list[PhaseSummary]) -> str:
    # The innermost (latest-started) phase that contains the moment.
    for p in sorted(phases, key=lambda p: p.start_s, reverse=True):
        if p.start_s <= t_s and (p.end_s is None or t_s <= p.end_s):
            return p.name + (f" ({p.detail})" if p.detail else "")
    return ""


def _peaks(
    samples: list[ResourceSample], recorder: Recorder | None, phases: list[PhaseSummary], counters: dict[str, Any]
) -> dict[str, Peak]:
    found: dict[str, tuple[float, int]] = {}
    if recorder is not None:
        found = dict(recorder.peaks)
    else:
        for s in samples:
            raise_peaks(found, s)
    out: dict[str, Peak] = {}
    for name in PEAK_FIELDS:
        if name in found:
            value, t_ns = found[name]
            out[name] = Peak(sampled=value, at_s=_s(t_ns), phase=_phase_at(_s(t_ns), phases))
    if "ru_maxrss_mib" in counters:
        out.setdefault("rss_mib", Peak()).counter = counters["ru_maxrss_mib"]
        out["rss_mib"].counter_source = "ru_maxrss"
    for field, key in (
        ("torch_reserved_mib", "torch_max_memory_reserved_mib"),
        ("torch_allocated_mib", "torch_max_memory_allocated_mib"),
    ):
        if key in counters:
            out.setdefault(field, Peak()).counter = counters[key]
            out[field].counter_source = f"torch.cuda.{key.removeprefix('torch_').removesuffix('_mib')}"
    return out


def build(
    events: list[Event], environment: dict[str, Any], recorder: Recorder | None = None
) -> Snapshot:
    start = next((e for e in events if isinstance(e, RunStarted)), None)
    if start is None:
        raise ValueError("no run_started event: nothing was run")
    finish = next((e for e in reversed(events) if isinstance(e, RunFinished)), None)
    target = dict(start.target)
    for e in events:
        if isinstance(e, Result) and e.name == "target":
            target.update(e.data)
    return Snapshot(
        schema_version=SCHEMA_VERSION,
        tool="embprof",
        tool_version=library_version("embprof") or "unknown",
        run_id=start.run_id,
        created_utc=start.started_utc,
        status=finish.status if finish else "incomplete",
        environment=environment,
        target=target,
        workload=dict(start.workload),
        summary=summarize(events, recorder),
        events=events,
    )


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:60] or "model"


def default_filename(snapshot: Snapshot) -> str:
    model = str(snapshot.target.get("model_name") or "model").replace(" (bundled)", "")
    return f"{snapshot.run_id}-{snapshot.workload.get('name', 'run')}-{_slug(model.split('/')[-1])}.json"


def save(snapshot: Snapshot, directory: Path) -> Path:
    """Write the snapshot under its default name; never over another run's file (a -2, -3 … suffix)."""
    path = directory / default_filename(snapshot)
    n = 1
    while path.exists():
        n += 1
        path = directory / f"{Path(default_filename(snapshot)).stem}-{n}.json"
    atomic_write_bytes(path, to_json(snapshot).encode("utf-8"))
    return path


def to_json(snapshot: Snapshot) -> str:
    return snapshot.model_dump_json(indent=1) + "\n"


def load(path: str | Path) -> Snapshot:
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"snapshot '{path}' does not exist")
    try:
        raw = p.read_bytes()
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"'{path}' is not a snapshot: it is not valid JSON ({exc.__class__.__name__})") from exc
    if not isinstance(data, dict) or data.get("tool") != "embprof":
        raise UserError(f"'{path}' is not an embprof snapshot")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise UserError(
            f"snapshot '{path}' has schema version {data.get('schema_version')!r}; this embprof reads version {SCHEMA_VERSION}"
        )
    try:
        return Snapshot.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ()))
        raise UserError(f"snapshot '{path}' is damaged: {where}: {first.get('msg', 'invalid')}") from exc


def json_schema() -> dict[str, Any]:
    return Snapshot.model_json_schema()
