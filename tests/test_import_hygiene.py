"""The engine is headless: no engine module may pull in textual or rich, and the command line's
start-up may not pull in torch (``embprof --help`` must not pay for it)."""

from __future__ import annotations

import functools
import pkgutil
import subprocess
import sys

import pytest

import embprof.engine
import embprof.engine.matrix
import embprof.engine.targets
import embprof.engine.workloads

ENGINE_MODULES = sorted(
    {f"embprof.engine.{m.name}" for m in pkgutil.iter_modules(embprof.engine.__path__)}
    | {f"embprof.engine.matrix.{m.name}" for m in pkgutil.iter_modules(embprof.engine.matrix.__path__)}
    | {f"embprof.engine.targets.{m.name}" for m in pkgutil.iter_modules(embprof.engine.targets.__path__)}
    | {f"embprof.engine.workloads.{m.name}" for m in pkgutil.iter_modules(embprof.engine.workloads.__path__)}
)


@functools.cache  # both checks read one fresh interpreter's modules: one subprocess a module, not two
def _loaded_after_import(module: str) -> frozenset[str]:
    code = f"import sys, {module}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return frozenset(out.split())


def test_every_engine_module_is_listed() -> None:
    assert "embprof.engine.sampler" in ENGINE_MODULES
    assert "embprof.engine.workloads.speed" in ENGINE_MODULES
    assert "embprof.engine.targets.protocol" in ENGINE_MODULES
    assert "embprof.engine.matrix.cellproc" in ENGINE_MODULES


@pytest.mark.parametrize("module", ENGINE_MODULES)
def test_engine_module_imports_no_ui_library(module: str) -> None:
    loaded = _loaded_after_import(module)
    assert not {m for m in loaded if m.split(".")[0] in ("textual", "rich")}, module


@pytest.mark.parametrize("module", ["embprof.tui.cli", *ENGINE_MODULES])
def test_no_torch_at_import(module: str) -> None:
    loaded = _loaded_after_import(module)
    assert "torch" not in loaded and "sentence_transformers" not in loaded, module


def test_help_does_not_import_torch() -> None:
    code = "import sys; from embprof.tui.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False")
