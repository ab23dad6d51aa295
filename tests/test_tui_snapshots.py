"""Screenshots of the dashboard against accepted SVGs, at 80×24 and a large terminal.

Textual is pinned in pyproject.toml; the clock is frozen and the cursor does not blink. After an
intended change of the UI: pytest tests/test_tui_snapshots.py --snapshot-update, then look at the
SVGs before committing them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pilot_helpers import make_app

from embprof.tui.app import EmbprofApp

pytestmark = pytest.mark.slow


def app_with(tmp_path: Path, **fake: Any) -> EmbprofApp:
    """The dashboard on the fake engine as the screenshots take it: nothing saved, no blinking cursor."""
    return make_app(tmp_path, save_snapshots=False, cursor_blink=False, **fake)


def settle(*keys: str):  # type: ignore[no-untyped-def]
    async def run_before(pilot: Any) -> None:
        app = pilot.app
        for _ in range(400):
            if app.current is not None and app.current.finished:
                break
            await pilot.pause(0.02)
        await pilot.pause(0.3)
        for key in keys:
            await pilot.press(key)
            await pilot.pause(0.2)
            app.redraw(force=True)  # draw the new panel now rather than at the next tick
            await pilot.pause(0.3)
        app.clear_notifications()
        await pilot.pause(0.3)
        await pilot.wait_for_scheduled_animations()
        await pilot.pause(0.3)

    return run_before


@pytest.mark.parametrize("keys, name", [((), "latency"), (("2",), "memory"), (("3",), "cpu"), (("5",), "runs")])
def test_small_terminal_panels(snap_compare: Any, tmp_path: Path, keys: tuple[str, ...], name: str) -> None:
    assert snap_compare(app_with(tmp_path), terminal_size=(80, 24), run_before=settle(*keys))


def test_small_terminal_mteb_scores(snap_compare: Any, tmp_path: Path) -> None:
    assert snap_compare(app_with(tmp_path, mteb=True), terminal_size=(80, 24), run_before=settle("4"))


def test_small_terminal_sweep_scores(snap_compare: Any, tmp_path: Path) -> None:
    assert snap_compare(app_with(tmp_path, sweep=True), terminal_size=(80, 30), run_before=settle("4"))


def test_small_terminal_similarity(snap_compare: Any, tmp_path: Path) -> None:
    assert snap_compare(app_with(tmp_path, similarity=True), terminal_size=(80, 24), run_before=settle("4"))


def test_small_terminal_new_run_form(snap_compare: Any, tmp_path: Path) -> None:
    assert snap_compare(app_with(tmp_path), terminal_size=(80, 24), run_before=settle("n"))


def test_large_terminal_everything_at_once(snap_compare: Any, tmp_path: Path) -> None:
    assert snap_compare(app_with(tmp_path, gpu=True, similarity=True), terminal_size=(200, 50), run_before=settle())


def test_large_terminal_mteb(snap_compare: Any, tmp_path: Path) -> None:
    """Several kinds of calls (a table per group, no pooled p50) and the Scores table wide."""
    assert snap_compare(app_with(tmp_path, mteb=True), terminal_size=(200, 50), run_before=settle())


def test_large_terminal_without_scores(snap_compare: Any, tmp_path: Path) -> None:
    """Nothing to score: the Runs list takes the wide cell."""
    assert snap_compare(app_with(tmp_path), terminal_size=(200, 50), run_before=settle())
