"""What the run's thread and the file workers tell the UI thread: small messages, one per fact.

Attributes go down, messages come up: no worker touches a widget; each ends by posting one of these.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import TYPE_CHECKING, Any

from embprof.engine.events import ErrorEvent, Event, RunFinished
from embprof.engine.text import clean
from textual.message import Message

if TYPE_CHECKING:
    from textual.app import App

    from .view import RunView


class EventsReady(Message):
    """Events are waiting in a run's bridge: posted by the first event after a drain that found none, and
    by each event the UI must act on at once (the end of the run, an error); the UI takes the rest on its tick."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key


class RunStarting(Message):
    """A run's view and bridge; posted before its first event, so the queue keeps them in order."""

    def __init__(self, view: RunView, bridge: Bridge) -> None:
        super().__init__()
        self.view = view
        self.bridge = bridge


class RunSaved(Message):
    def __init__(self, key: str, path: str | None, error: str | None) -> None:
        super().__init__()
        self.key = key
        self.path = path
        self.error = error


class RunRefused(Message):
    """The engine refused the plan before anything ran (a missing file, an unreachable server)."""

    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message


class SnapshotsListed(Message):
    """The profiles folder's snapshots, one row each (path, cells), newest first."""

    def __init__(self, rows: list[tuple[str, list[str]]]) -> None:
        super().__init__()
        self.rows = rows


class SnapshotOpened(Message):
    """A snapshot read and replayed into a view off the UI thread; or why it could not be."""

    def __init__(self, path: str, view: RunView | None, error: str | None) -> None:
        super().__init__()
        self.path = path
        self.view = view
        self.error = error


class CompareReady(Message):
    def __init__(self, tables: list[Any], snaps: list[Any], names: list[str], error: str | None) -> None:
        super().__init__()
        self.tables = tables
        self.snaps = snaps
        self.names = names
        self.error = error


class FileWritten(Message):
    """An export or a comparison written (path), or the sentence saying why not (error)."""

    def __init__(self, path: str | None, error: str | None) -> None:
        super().__init__()
        self.path = path
        self.error = error


# Taken by the UI at once, not at its next tick: the run's final figures and an error's notification.
URGENT = (RunFinished, ErrorEvent)
_PLAIN = frozenset({int, float, bool, type(None)})


_FIELDS: dict[type, tuple[str, ...]] = {}


def _field_names(event: Event) -> tuple[str, ...]:
    names = _FIELDS.get(type(event))
    if names is None:
        names = _FIELDS[type(event)] = tuple(f.name for f in dataclasses.fields(event))
    return names


def _cleaned(event: Event) -> Event:
    """``clean(event)``, without its generic walk for the events that come ten or a thousand times a second:
    when every field is a number, None, a printable string (``isprintable`` is false for every character that
    ``clean`` escapes) or a tuple of numbers there is nothing to escape, and the event is returned as it is."""
    for name in _field_names(event):
        v = getattr(event, name)
        t = type(v)
        if t in _PLAIN or (t is str and v.isprintable()) or (t is tuple and all(type(x) in _PLAIN for x in v)):
            continue
        cleaned: Event = clean(event)
        return cleaned
    return event


class Bridge:
    """An engine subscriber on the run's threads; hands events to the UI thread in batches.

    One EventsReady wakes the UI for the first event after a quiet spell; the UI then holds the bridge and
    takes what arrives meanwhile on its own tick (App.tick), once a second: every wake-up of the UI thread
    takes the GIL from the run's threads, and every message posted from here costs the run's thread too.
    """

    def __init__(self, app: App[Any], key: str) -> None:
        self._app = app
        self._key = key
        self._lock = threading.Lock()
        self._buffer: list[Event] = []
        self._pending = False

    def __call__(self, event: Event) -> None:
        with self._lock:
            self._buffer.append(event)
            if self._pending and not isinstance(event, URGENT):
                return
            self._pending = True
        self._app.post_message(EventsReady(self._key))

    def drain(self, hold: bool = False) -> list[Event]:
        """The waiting events. With ``hold`` the bridge stays pending while there were some: the UI
        polls it again on its tick instead of being woken by every event (a load run sends thousands a
        second); the first poll that finds none ends the hold, and the next event posts again."""
        with self._lock:
            out, self._buffer = self._buffer, []
            if not out or not hold:
                self._pending = False
        # On the UI thread, not the run's: the model's name, a server's message or a text being encoded
        # reaches the screen with its control characters escaped (the same objects when there are none).
        return [_cleaned(e) for e in out]
