"""What the run's thread and the file workers tell the UI thread: small messages, one per fact.

Attributes go down, messages come up: no worker touches a widget; each ends by posting one of these.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from embprof.engine.events import Event
from embprof.engine.text import clean
from textual.message import Message

if TYPE_CHECKING:
    from textual.app import App

    from .view import RunView


class EventsReady(Message):
    """Events are waiting in a run's bridge. Posted once until drained: the UI is never behind."""

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


class Bridge:
    """An engine subscriber on the run's threads; hands events to the UI thread in batches."""

    def __init__(self, app: App[Any], key: str) -> None:
        self._app = app
        self._key = key
        self._lock = threading.Lock()
        self._buffer: list[Event] = []
        self._pending = False

    def __call__(self, event: Event) -> None:
        with self._lock:
            self._buffer.append(event)
            if self._pending:
                return
            self._pending = True
        self._app.post_message(EventsReady(self._key))

    def drain(self, hold: bool = False) -> list[Event]:
        """The waiting events. With ``hold`` the bridge stays pending while there were some: the UI
        polls it again shortly instead of being woken by every event (a load run sends thousands a
        second); the first poll that finds none ends the hold, and the next event posts again."""
        with self._lock:
            out, self._buffer = self._buffer, []
            if not out or not hold:
                self._pending = False
        # On the UI thread, not the run's: the model's name, a server's message or a text being encoded
        # reaches the screen with its control characters escaped (the same objects when there are none).
        return [clean(e) for e in out]
