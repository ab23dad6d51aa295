"""Where a matrix's files lie in its folder.

Named once, here, below everything else in the package: the launchers write these files, the rows
and the manifest read them, and none of them needs the others to know where they are.
"""

from __future__ import annotations

from pathlib import Path

from .spec import Cell


def manifest_path(folder: Path) -> Path:
    return folder / "matrix.json"


def snapshot_path(folder: Path, cell: Cell | str) -> Path:
    cid = cell if isinstance(cell, str) else cell.cell_id
    return folder / "cells" / f"{cid}.json"


def crash_path(folder: Path, cid: str) -> Path:
    return folder / "cells" / f"{cid}.crash.json"


def plan_path(folder: Path, cid: str) -> Path:
    return folder / "cells" / f"{cid}.plan.json"
