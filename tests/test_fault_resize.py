"""Fault suite: the dashboard follows the terminal.

A terminal is resized at any moment: during a run and after it, to a size too small for anything
(20×5), to one larger than any panel needs (300×100) and back, with a dialog on top. After each resize
the dashboard shows exactly what a dashboard started at that size shows: the same layout classes,
the same panels, the same picture cell for cell (charts fitted to their new size, not the old one),
nothing drawn outside the screen, and no exception.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import fake_engine
import pytest
from fake_engine import MS, FakeRunner, sample
from pilot_helpers import until

from embprof.engine.events import Event, PhaseEnded, RunFinished, Subscriber
from embprof.engine.plan import RunPlan
from embprof.tui.app import EmbprofApp

# The faults this file tries, by kind, and the tests that try each (tests/test_reliability_doc.py counts them for
# docs/reliability.md).
FAULT_KINDS = {
    "a resize during a run to 20×5": "test_resizes_during_a_run_give_the_layout_of_the_new_size",
    "a resize during a run to 300×100": "test_resizes_during_a_run_give_the_layout_of_the_new_size",
    "a resize during a run back to 80×24": "test_resizes_during_a_run_give_the_layout_of_the_new_size",
    "a resize after a run whose charts hold more points than fit": "test_resizes_after_a_run_refit_its_charts",
    "a resize under the new-run form": "test_a_resize_under_a_dialog_lays_out_the_dashboard",
    "a resize under the help screen": "test_a_resize_under_a_dialog_lays_out_the_dashboard",
}
NOT_FAULTS: tuple[str, ...] = ()

SIZES = ((20, 5), (300, 100), (80, 24))
LAYOUT_CLASSES = ("wide", "-no-scores", "-training")


@pytest.fixture(autouse=True)
async def no_held_run_left() -> AsyncIterator[None]:
    """A failed assertion leaves its held run waiting on a worker thread that the closing of the event loop
    would wait for (async, so it is released before the loop closes)."""
    before = len(FakeRunner.instances)
    yield
    for runner in FakeRunner.instances[before:]:
        runner.cancel()


def many_samples_run() -> list[Event]:
    """The fake encode run with 1,500 resource samples in its import phase: more than a chart or a
    sparkline of any of these sizes shows, so what each draws depends on the width it draws for."""
    events = fake_engine.scripted_run()
    end = next(i for i, e in enumerate(events) if isinstance(e, PhaseEnded) and e.name == "import")
    t0, n, step = events[end].t_ns, 1500, 2 * MS
    extra: list[Event] = [sample(t0 + (k + 1) * step, 500.0 + (k * 37) % 400, cpu=(k * 53) % 200, threads=8 + k % 5)
                          for k in range(n)]
    shifted = [dataclasses.replace(e, t_ns=e.t_ns + n * step) for e in events[end:]]
    shifted = [dataclasses.replace(e, duration_ns=e.duration_ns + n * step) if isinstance(e, RunFinished) else e for e in shifted]
    return [*events[:end], *extra, *shifted]


def app_of(tmp_path: Path, name: str, *, hold: bool, many: bool = False, autostart: bool = True) -> EmbprofApp:
    """The dashboard on the fake engine, nothing saved (no notification, no file row to differ between
    two apps), the clock frozen and the cursor still: two apps in the same state draw the same screen."""
    def runner(plan: RunPlan, subscribers: list[Subscriber]) -> FakeRunner:
        events = many_samples_run() if many else fake_engine.scripted_run()
        return FakeRunner(events, subscribers, hold=hold, plan=plan)

    return EmbprofApp(RunPlan(), profiles_dir=tmp_path / name, clock=lambda: 100.0, runner_factory=runner,
                      save_snapshots=False, cursor_blink=False, autostart=autostart)


async def settle(app: EmbprofApp, pilot: Any, *, hold: bool) -> None:
    """Until the run is held after its warm-up (``hold``) or has ended, with every panel drawn from all
    of it: nothing changes on screen after this but what a resize changes."""
    if hold:
        # The warm-up's end is the last event before the hold.
        await until(pilot, lambda: app.current is not None and any(
            p.name == "warm-up" and p.end_s is not None for p in app.current.run.phases))
    else:
        await until(pilot, lambda: app.current is not None and app.current.finished)
    app.redraw(force=True)  # the panels' live interval would leave a figure of the last second out
    await pilot.pause(0.3)


async def resized(pilot: Any, width: int, height: int) -> None:
    await pilot.resize_terminal(width, height)
    await pilot.pause(0.4)  # the screen's own resize comes on a timer, then its layout, then the panels' redraws


def layout(app: EmbprofApp) -> tuple[Any, ...]:
    """The dashboard's layout: its screen's layout classes, the panels displayed, whether the tabs are."""
    main = app.screen_stack[0]
    classes = tuple(c for c in LAYOUT_CLASSES if main.has_class(c))
    panels = tuple(p.id for p in main.query("#panels > Panel") if p.display)
    return classes, panels, main.query_one("#tabs").display


def picture(app: EmbprofApp) -> list[str]:
    """The screen as the terminal shows it (characters and colours), line by line of its SVG screenshot."""
    return re.sub(r"terminal-\d+", "terminal", app.export_screenshot()).splitlines()


def same_picture(got: list[str], want: list[str], size: tuple[int, int]) -> None:
    """Equal screenshots; where not, the first line that differs (pytest's own diff of two screenshots
    of 300 columns takes minutes)."""
    diff = next(((i, a, b) for i, (a, b) in enumerate(zip(got, want)) if a != b), None)
    assert diff is None, f"{size[0]}×{size[1]}, line {diff[0]}:\n  got  {diff[1][:400]!r}\n  want {diff[2][:400]!r}"
    assert len(got) == len(want), (len(got), len(want))


def inside(app: EmbprofApp) -> None:
    """Nothing is laid out outside the screen: the screen is the terminal's size, and the dashboard's
    parts (status bar, tabs, the panels' grid, each panel shown, the footer) lie within it. (What
    scrolls inside a part, as the tabs' row in 20 columns, is the part's to clip.)"""
    screen = app.screen_stack[0]
    assert screen.region.size == app.size
    parts = [*screen.query("#status, #tabs, #panels, Footer"), *screen.query("#panels > Panel")]
    for part in parts:
        if part.display and part.region.area:
            assert screen.region.contains_region(part.region), (part, part.region, screen.region)


async def fresh(tmp_path: Path, name: str, size: tuple[int, int], *, hold: bool, many: bool = False) -> tuple[Any, list[str]]:
    """The layout and the picture of a dashboard started at ``size``, in the same state."""
    app = app_of(tmp_path, name, hold=hold, many=many)
    async with app.run_test(size=size) as pilot:
        await settle(app, pilot, hold=hold)
        shown = layout(app), picture(app)
        await app.action_quit()
    return shown


async def test_resizes_during_a_run_give_the_layout_of_the_new_size(tmp_path: Path) -> None:
    seen: dict[tuple[int, int], tuple[Any, list[str]]] = {}
    app = app_of(tmp_path, "resized", hold=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot, hold=True)
        for size in SIZES:
            await resized(pilot, *size)
            assert app.current is not None and app.current.running  # still during the run
            inside(app)
            seen[size] = layout(app), picture(app)
        await app.action_quit()  # stops the held run
    for size in SIZES:
        want = await fresh(tmp_path, f"fresh-{size[0]}x{size[1]}", size, hold=True)
        assert seen[size][0] == want[0], size
        same_picture(seen[size][1], want[1], size)


async def test_resizes_after_a_run_refit_its_charts(tmp_path: Path) -> None:
    """After the run nothing redraws the panels but the resize: a chart or sparkline drawn for the
    width it had (or for none, hidden) must be drawn again for the width it has now."""
    app = app_of(tmp_path, "resized", hold=False, many=True)
    seen: dict[tuple[int, int], tuple[Any, list[str]]] = {}
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot, hold=False)
        for size in ((20, 5), (300, 100)):
            await resized(pilot, *size)
            inside(app)
            seen[size] = layout(app), picture(app)
    want = await fresh(tmp_path, "fresh", (300, 100), hold=False, many=True)
    assert seen[(300, 100)][0] == want[0]
    same_picture(seen[(300, 100)][1], want[1], (300, 100))
    assert seen[(20, 5)][0] == (("-no-scores",), ("latency",), True)


async def test_a_resize_under_a_dialog_lays_out_the_dashboard(tmp_path: Path) -> None:
    """The new-run form (or help) is on top when the terminal grows and shrinks: the dashboard beneath
    takes the new layout, and the dialog takes none of the dashboard's classes."""
    app = app_of(tmp_path, "dialog", hold=True, autostart=False)  # no run: the dialogs' part is the layout alone
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.2)
        for key, size in (("n", (160, 45)), ("question_mark", (80, 24))):
            await pilot.press(key)
            await pilot.pause(0.2)
            dialog = app.screen
            assert dialog is not app.screen_stack[0]
            await resized(pilot, *size)
            assert not any(dialog.has_class(c) for c in LAYOUT_CLASSES), dialog.classes
            await pilot.press("escape")
            await pilot.pause(0.3)
            assert app.screen is app.screen_stack[0]
            wide = size == (160, 45)
            assert layout(app) == ((("wide",) if wide else ()) + ("-no-scores",),
                                   ("latency", "memory", "cpu", "scores", "runs") if wide else ("latency",), not wide)
        await app.action_quit()
