"""What the Textual pilot tests share: the dashboard on the fake engine, waiting for a condition or for the run
to end, what the screen shows as plain text, and the notifications an app raised."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fake_engine
from textual.message import Message
from textual.notifications import Notification, Notify
from textual.widgets import Static

from embprof.engine.plan import RunPlan
from embprof.tui.app import EmbprofApp

FAKE_RUN_OPTIONS = ("gpu", "similarity", "fail_load", "hold", "mteb", "sweep", "server", "llama")


def make_app(tmp_path: Path, **kw: Any) -> EmbprofApp:
    """The dashboard on the fake engine: each run it starts plays ``fake_engine.scripted_run`` with the options of
    FAKE_RUN_OPTIONS found in ``kw`` (``hold=True`` holds it after the warm-up); the rest go to EmbprofApp."""
    fake = {k: kw.pop(k) for k in FAKE_RUN_OPTIONS if k in kw}
    return EmbprofApp(
        kw.pop("plan", None) or RunPlan(),
        profiles_dir=tmp_path / "profiles",
        clock=lambda: 100.0,
        runner_factory=fake_engine.factory(**fake),
        **kw,
    )


async def until(pilot: Any, cond: Any, timeout: float = 10.0) -> None:
    """Poll until ``cond()`` holds: a fixed pause would be too short on a loaded machine (a flaky test)."""
    waited = 0.0
    while not cond():
        await pilot.pause(0.05)
        waited += 0.05
        if waited > timeout:
            raise AssertionError("condition not reached")


async def finished(app: EmbprofApp, pilot: Any, saved: bool = True, redraw: bool = False) -> None:
    """Wait until the run on display has finished (and, ``saved``, its snapshot is written); ``redraw``: then draw
    every panel from it at once rather than at the next tick."""
    await until(pilot, lambda: app.current is not None and app.current.finished)
    if saved:
        await until(pilot, lambda: app.current is not None and app.current.snapshot_path is not None)
    if redraw:
        app.redraw(force=True)
    await pilot.pause(0.3)


def plain(renderable: Any, width: int = 200) -> str:
    """What a renderable (text, a table grid) shows, as plain text: what a reader or a capture sees."""
    from rich.console import Console

    console = Console(width=width, color_system=None, legacy_windows=False)
    with console.capture() as capture:
        console.print(renderable)
    return capture.get()


def text_of(app: EmbprofApp, selector: str, width: int = 200) -> str:
    """The plain text of the Static at ``selector`` on the screen shown."""
    return plain(app.screen.query_one(selector, Static).content, width)


class NotificationLog:
    """The notifications an app raises, as it raised them (for the dashboard: once its ``notify`` has made the
    text safe to show). Pass ``hook`` as run_test's ``message_hook``, Textual's way to see each message an app
    dispatches; each ``Notify`` message carries its notification (``message``, ``title``, ``severity``)."""

    def __init__(self) -> None:
        self.seen: list[Notification] = []

    def hook(self, message: Message) -> None:
        if isinstance(message, Notify):
            self.seen.append(message.notification)

    def __iter__(self) -> Iterator[Notification]:
        return iter(list(self.seen))
