"""Remake docs/assets/dashboard.svg: the real dashboard, headless at 150×40, after a real run.

The run is what `embprof` with no options starts (the bundled all-MiniLM-L6-v2 on the sample
corpus); the picture is taken once that run has finished and its snapshot is saved.

    .venv/bin/python docs/screenshot.py
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from embprof.engine.plan import plan_from_options
from embprof.tui.app import EmbprofApp

SIZE = (150, 40)
OUT = Path(__file__).resolve().parent / "assets" / "dashboard.svg"


async def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        app = EmbprofApp(plan_from_options({}), profiles_dir=Path(tmp) / "profiles", cursor_blink=False)
        async with app.run_test(size=SIZE) as pilot:
            for _ in range(3000):  # five minutes at most
                if app.current is not None and app.current.snapshot_path:
                    break
                await pilot.pause(0.1)
            view = app.current
            if view is None or view.state != "done":
                print(f"the run did not finish: {view and view.run.errors}", file=sys.stderr)
                return 1
            await pilot.pause(3.0)  # the charts' and numbers' next redraw
            OUT.parent.mkdir(parents=True, exist_ok=True)
            app.save_screenshot(filename=OUT.name, path=str(OUT.parent))
    print(f"{OUT} ({OUT.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
