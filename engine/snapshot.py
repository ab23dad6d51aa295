"""Profile snapshots: the recorded event stream plus the environment, one JSON file per run.

A snapshot is written atomically and validated on load by its pydantic model, so a file that
does not parse or does not fit the schema is refused with one sentence instead of half-read.
Files of schema 1 (before the run plan and typed results) and 2 (the workload's settings as a free
dict) are migrated on read (``migrate.py``).
"""

from __future__ import annotations

import re
import tempfile
import threading
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import OutputError, UserError
from .events import Event, Note, Result, RunFinished, RunStarted, RunStatus
from .files import MAX_JSON_BYTES, atomic_write_bytes, parse_json_bytes, read_file_bytes
from .fold import RunState, Summary
from .plan import RunPlan
from .results import TargetFacts, finite_or_null
from .text import one_line
from .versions import library_version
from .workload_facts import WorkloadFacts

SCHEMA_VERSION: Literal[3] = 3
DEFAULT_MAX_SAMPLES = 36_000  # one hour at 10 Hz before the timeline is thinned
# Timed calls, batches and requests kept as events before they are thinned the same way: an hour of
# `run load` sends millions of requests, and the summary's figures come from the fold, not from these.
DEFAULT_MAX_TIMED = 25_000
MAX_NOTES = 1_000  # mteb can be chatty over a long task list: the first thousand notes are kept, as the fold keeps them
THINNED_KINDS = ("resource_sample", "batch_timed", "encode_timed", "request_timed", "train_step")


class SnapshotHead(BaseModel):
    """A snapshot without its events: what a list of runs reads (``load_head``). Validating thousands of
    events is most of a load's time, and a list needs none of them."""

    model_config = ConfigDict(extra="ignore")
    schema_version: Literal[3]
    tool: Literal["embprof"]
    tool_version: str
    run_id: str
    created_utc: str
    status: RunStatus
    migrated_from: int | None = None  # the schema version the file was written in, when older
    plan: RunPlan | None  # what ran; None only for a migrated file whose settings do not say enough
    plan_note: str = ""  # why there is no plan, or how it was reconstructed
    environment: dict[str, Any]
    target: TargetFacts
    workload: WorkloadFacts  # what the inputs turned out to be; the settings are the plan's
    summary: Summary


class Snapshot(SnapshotHead):
    model_config = ConfigDict(extra="forbid")
    events: list[Annotated[Event, Field(discriminator="kind")]]


class _Thinned:
    """One kind of event, kept in full up to a bound, then every other one (every fourth …)."""

    __slots__ = ("items", "limit", "seen", "stride")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.items: list[Event] = []
        self.stride = 1
        self.seen = 0

    def add(self, e: Event) -> None:
        self.seen += 1
        if (self.seen - 1) % self.stride:
            return
        self.items.append(e)
        if len(self.items) > self.limit:
            self.items = self.items[::2]
            self.stride *= 2


class Recorder:
    """A subscriber that folds the run (``state``) and keeps its events in bounded memory.

    Resource samples, timed calls, batches and requests are kept in full up to a bound each, then
    thinned (every other one, then every fourth …): the summary is folded from every event as it
    arrives, so thinning never changes a figure or loses a peak. A sweep's partial tables are
    replaced by the next one, so the recorder holds one table, not one per point.
    """

    def __init__(self, max_samples: int = DEFAULT_MAX_SAMPLES, max_timed: int = DEFAULT_MAX_TIMED) -> None:
        self._lock = threading.Lock()
        self.state = RunState()
        self._events: list[Event | None] = []
        self._thinned = {k: _Thinned(max_samples if k == "resource_sample" else max_timed) for k in THINNED_KINDS}
        self._partial: dict[str, int] = {}  # result key -> index of its superseded-on-arrival partial result
        self._notes = 0

    def __call__(self, event: Event) -> None:
        with self._lock:
            self.state.apply(event)
            bucket = self._thinned.get(event.kind)
            if bucket is not None:
                bucket.add(event)
                return
            if isinstance(event, Note):
                self._notes += 1
                if self._notes > MAX_NOTES:
                    return
            if isinstance(event, Result):
                old = self._partial.pop(event.name, None)
                if old is not None:
                    self._events[old] = None
                if getattr(event.result, "partial", False):
                    self._partial[event.name] = len(self._events)
            self._events.append(event)

    def events(self) -> list[Event]:
        """The kept events in arrival order, the thinned kinds merged back by time."""
        with self._lock:
            merged: list[Event] = [e for e in self._events if e is not None]
            for bucket in self._thinned.values():
                merged.extend(bucket.items)
        merged.sort(key=lambda e: e.t_ns)
        return merged

    @property
    def samples_seen(self) -> int:
        return self._thinned["resource_sample"].seen

    @property
    def timeline_stride(self) -> int:
        return self._thinned["resource_sample"].stride

    def events_kept(self) -> dict[str, int]:
        with self._lock:
            kept: dict[str, int] = {}
            for e in self._events:
                if e is not None:
                    kept[e.kind] = kept.get(e.kind, 0) + 1
            for kind, bucket in self._thinned.items():
                if bucket.seen:
                    kept[kind] = len(bucket.items)
            return kept

    def summary(self) -> Summary:
        kept = self.events_kept()
        with self._lock:  # the runner thread folds under this lock: never read a half-applied event
            return self.state.summary(timeline_stride=self.timeline_stride, events_kept=kept)


def build(recorder: Recorder, environment: dict[str, Any]) -> Snapshot:
    """The snapshot of a recorded run."""
    events = recorder.events()
    state = recorder.state
    start = next((e for e in events if isinstance(e, RunStarted)), None)
    if start is None:
        raise ValueError("no run_started event: nothing was run")
    finish = next((e for e in reversed(events) if isinstance(e, RunFinished)), None)
    target = state.target
    assert target is not None  # RunStarted carries the target's facts, and there is one
    return Snapshot(
        schema_version=SCHEMA_VERSION,
        tool="embprof",
        tool_version=library_version("embprof") or "unknown",
        run_id=start.run_id,
        created_utc=start.started_utc,
        status=finish.status if finish else "incomplete",
        plan=start.plan,
        environment=environment,
        target=target,
        workload=start.workload,
        summary=recorder.summary(),
        events=events,
    )


def fold(events: list[Event]) -> RunState:
    """Fold a recorded event list again (a migrated file, a test)."""
    state = RunState()
    for e in events:
        state.apply(e)
    return state


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:60] or "model"


def default_filename(snapshot: Snapshot) -> str:
    model = str(snapshot.target.model_name or "model").replace(" (bundled)", "")
    return f"{snapshot.run_id}-{snapshot.workload.name}-{_slug(model.split('/')[-1])}.json"


def save(snapshot: Snapshot, directory: Path) -> Path:
    """Write the snapshot under its default name; never over another run's file (a -2, -3 … suffix)."""
    path = directory / default_filename(snapshot)
    n = 1
    while path.exists():
        n += 1
        path = directory / f"{Path(default_filename(snapshot)).stem}-{n}.json"
    atomic_write_bytes(path, to_json(snapshot).encode("utf-8"))
    return path


def save_or_keep(snapshot: Snapshot, directory: Path) -> tuple[Path, str | None]:
    """``save``, and when that cannot complete (a full disk, a file-size limit, a folder made read-only
    during the run), save to the temporary folder instead: the run's measurements are never dropped
    silently. Returns the path and, when it is not in ``directory``, the sentence that says why.
    Raises ``OutputError`` naming both failures when neither place could take it."""
    try:
        return save(snapshot, directory), None
    except OutputError as first:
        fallback = Path(tempfile.gettempdir()) / "embprof-unsaved"
        try:
            path = save(snapshot, fallback)
        except OutputError as second:
            raise OutputError(f"{first}; the snapshot could not be kept elsewhere either ({second}): "
                              "its figures are only in the tables above", first.path) from None
        return path, f"{first}; the snapshot was saved to '{one_line(path)}' instead"


_M = TypeVar("_M", bound=SnapshotHead)


def to_json(snapshot: Snapshot) -> str:
    return snapshot.model_dump_json(indent=1) + "\n"


def load(path: str | Path) -> Snapshot:
    """A snapshot file, validated, or one sentence why not: nothing in the file is ever executed (it is
    JSON read into pydantic models), and a file that is too large, too deep, of another schema or
    damaged is refused whole rather than half-read."""
    return _validated(path, Snapshot)


def load_head(path: str | Path) -> SnapshotHead:
    """A snapshot file's everything but its events, checked as ``load`` checks it (schema, migration, plan)."""
    return _validated(path, SnapshotHead)


def _validated(path: str | Path, model: type[_M]) -> _M:
    raw = read_file_bytes(path, "snapshot", MAX_JSON_BYTES)
    data = parse_json_bytes(raw, f"snapshot '{one_line(path)}'")
    path = one_line(path)
    # Python's JSON reader takes NaN and Infinity, which JSON does not have and embprof never writes (a figure
    # not measured is null): a file holding one was made or changed elsewhere, and its NaN would reach every
    # export as a bare NaN. The walk runs only when the bytes hold one of the two words.
    if b"NaN" in raw or b"Infinity" in raw:
        _clean, found = finite_or_null(data)
        if found:
            raise UserError(f"snapshot '{path}' is damaged: {one_line(found[0])} is NaN or infinite, which JSON does not allow "
                            "(embprof writes a figure it did not measure as null)")
    if not isinstance(data, dict) or data.get("tool") != "embprof":
        raise UserError(f"'{path}' is not an embprof snapshot")
    version = data.get("schema_version")
    if isinstance(version, bool):  # JSON's true is not version 1, though Python finds True == 1
        raise UserError(f"snapshot '{path}' has schema version {version!r}; this embprof reads versions 1 to {SCHEMA_VERSION}")
    if version in (1, 2):
        from .migrate import from_v1, from_v2

        try:
            data = from_v1(data) if version == 1 else from_v2(data)
        except KeyError as exc:
            raise UserError(f"snapshot '{path}' is damaged: its schema-{version} field {exc} is missing") from None
        except (AttributeError, TypeError, ValueError) as exc:
            raise UserError(f"snapshot '{path}' is damaged: {one_line(str(exc).splitlines()[0]) if str(exc) else exc.__class__.__name__}") from None
    elif version != SCHEMA_VERSION:
        raise UserError(
            f"snapshot '{path}' has schema version {version!r}; this embprof reads versions 1 to {SCHEMA_VERSION}"
        )
    try:
        return model.model_validate(data)
    except UserError as exc:  # the plan it holds fails one of the plan's own checks
        raise UserError(f"snapshot '{path}' is damaged: its plan: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ()))
        raise UserError(f"snapshot '{path}' is damaged: {one_line(where)}: {one_line(first.get('msg', 'invalid'))}") from None


def json_schema() -> dict[str, Any]:
    return Snapshot.model_json_schema()
