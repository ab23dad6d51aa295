"""A saved snapshot's row in a list of runs: `embprof list` and the dashboard's Runs panel read it here.

Read through ``snapshot.load_head``: a schema-1 file is migrated and a damaged one refused with the
sentence it gets when opened, a list never guesses a file's keys, and the events (most of a file's
validation time) are left unread, so a dashboard that lists its folder while a run starts takes
little from that run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .snapshot import load_head
from .text import one_line


@dataclass(frozen=True)
class SnapshotRow:
    file: str  # the file's name: what `show`, `compare` and `export` take
    model: str
    workload: str
    device: str  # the device the model ran on; "server" for a server target
    status: str
    mean_s: float | None  # the headline call's mean latency; None when the run has no single kind of timed call
    peak_rss_mib: float | None  # sampled
    unreadable: str | None = None  # why the file could not be read; the other fields are then empty


def snapshot_row(path: Path) -> SnapshotRow:
    """The row of one snapshot file, or a row that says why it cannot be read."""
    try:
        snap = load_head(path)
    except (UserError, OSError) as exc:
        # Said on one line in a table's cell, the dashboard's list and its notifications alike.
        return SnapshotRow(path.name, "", "", "", "unreadable", None, None, unreadable=one_line(exc))
    head = snap.summary.headline
    rss = snap.summary.peaks.get("rss_mib")
    return SnapshotRow(
        file=path.name,
        model=snap.target.model_name,
        workload=snap.workload.name,
        device=str(snap.target.device_resolved or snap.target.device or "server"),
        status=snap.status,
        mean_s=head.stats.mean_s if head is not None else None,
        peak_rss_mib=rss.sampled if rss is not None else None,
    )
