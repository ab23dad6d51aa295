"""The code stays typed, layered and lint-clean: `mypy --strict`, the import contracts and ruff over the
project's own folders, and no module reaching into another's private names."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SOURCES = ("engine", "tui")


def test_mypy_strict_on_engine_and_tui(tmp_path: Path) -> None:
    """Strict mode from pyproject.toml, over the packages as they are imported (embprof.engine, embprof.tui):
    checked as the folders `engine` and `tui`, the tui would see every engine type as Any."""
    (tmp_path / "embprof").mkdir()
    for folder in SOURCES:
        (tmp_path / "embprof" / folder).symlink_to(REPO / folder, target_is_directory=True)
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(REPO / "pyproject.toml"), "--cache-dir", str(REPO / ".mypy_cache"),
         "-p", "embprof.engine", "-p", "embprof.tui"],
        cwd=tmp_path, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_import_contracts_hold() -> None:
    """The layers written in pyproject.toml ([tool.importlinter]): no upward import and no circle, lazy imports included."""
    lint = Path(sys.executable).parent / "lint-imports"
    proc = subprocess.run([str(lint), "--no-logo"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout, proc.stdout


# Private names of other libraries that are their documented way to do a thing, or that embprof must reach
# (mteb's evaluator keeps its start time only there; Rich's console renders only through that hook; httpx
# takes no network backend, and --timeout's deadline must reach every wait on the socket through one).
FOREIGN_PRIVATES = {"os._exit", "sys._getframe", "super()._render_buffer", "self._inner._start_time", "transport._pool"}


def private_uses(folders: tuple[str, ...]) -> list[str]:
    """Every import of a `_name` and every `x._name` where x is not self or cls, with file and line."""
    found = []
    for folder in folders:
        for f in sorted((REPO / folder).rglob("*.py")):
            tree = ast.parse(f.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom):
                    found += [f"{f.relative_to(REPO)}:{node.lineno}: from {node.module} import {a.name}"
                              for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                    if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                        continue
                    text = ast.unparse(node)
                    if text not in FOREIGN_PRIVATES:
                        found.append(f"{f.relative_to(REPO)}:{node.lineno}: {text}")
    return found


def test_no_module_uses_another_modules_private_names() -> None:
    assert private_uses(SOURCES) == []


def test_tests_use_public_names_only() -> None:
    assert private_uses(("tests", "benchmarks")) == []


@pytest.mark.slow
def test_ruff() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--select", "F,E9,B", "--ignore", "B905", "engine", "tui", "tests", "benchmarks"],
        cwd=REPO, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
