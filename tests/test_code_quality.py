"""The code stays typed and lint-clean: mypy and ruff over the project's own folders."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def test_mypy_engine_and_tui() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--ignore-missing-imports", "engine", "tui"],
        cwd=REPO, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--select", "F,E9,B", "--ignore", "B905", "engine", "tui", "tests", "benchmarks"],
        cwd=REPO, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
