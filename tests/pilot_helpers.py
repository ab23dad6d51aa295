"""What the Textual pilot tests share: waiting for a condition, and a renderable as plain text."""

from __future__ import annotations

from typing import Any


async def until(pilot: Any, cond: Any, timeout: float = 10.0) -> None:
    """Poll until ``cond()`` holds: a fixed pause would be too short on a loaded machine (a flaky test)."""
    waited = 0.0
    while not cond():
        await pilot.pause(0.05)
        waited += 0.05
        if waited > timeout:
            raise AssertionError("condition not reached")


def plain(renderable: Any, width: int = 200) -> str:
    """What a renderable (text, a table grid) shows, as plain text: what a reader or a capture sees."""
    from rich.console import Console

    console = Console(width=width, color_system=None, legacy_windows=False)
    with console.capture() as capture:
        console.print(renderable)
    return capture.get()
