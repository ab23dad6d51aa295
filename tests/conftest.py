from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any
import signal
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

# The real evaluation data lives beside the project, never inside it.
DATASETS = Path(os.environ.get("EMBPROF_DATASETS", REPO.parent / "shared" / "datasets"))
SPEED_TEXT = DATASETS / "the_ugly_duckling" / "the_ugly_duckling.txt"


def default_sigint() -> None:
    """For a child that is sent Ctrl-C: a shell runs background jobs with SIGINT ignored, the child
    inherits that, and Python then leaves it ignored (as nohup'd programs should), so the signal
    would never arrive. A terminal's foreground job has the default, which this restores."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def embprof_exe() -> str:
    exe = Path(sys.executable).parent / "embprof"
    if not exe.exists():
        pytest.skip("the embprof console script is not installed in this environment (pip install -e .)")
    return str(exe)


def sts16_slice(data_dir: Path, rows: int) -> Path:
    """The first ``rows`` rows of the real STS16 test split, written where mteb's ``--data-dir`` looks for them
    (``data_dir/sts16/test.jsonl``): a short run that mteb still scores with its own evaluator. Skips the test
    where the datasets are absent, as the rest of the suite does. Returns ``data_dir``."""
    source = DATASETS / "sts16" / "test.jsonl"
    if not source.is_file():
        pytest.skip(f"the STS16 data is absent: {source} (set EMBPROF_DATASETS to the datasets folder)")
    (data_dir / "sts16").mkdir(parents=True, exist_ok=True)
    kept = source.read_text(encoding="utf-8").splitlines()[:rows]
    (data_dir / "sts16" / "test.jsonl").write_text("\n".join(kept) + "\n", encoding="utf-8")
    return data_dir


@pytest.fixture(scope="session")
def speed_text() -> Path:
    if not SPEED_TEXT.is_file():
        pytest.skip(f"the speed text is absent: {SPEED_TEXT} (set EMBPROF_DATASETS to the datasets folder)")
    return SPEED_TEXT


@pytest.fixture(scope="session")
def tiny_gemma(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lookalikes import build_tiny_embeddinggemma

    return build_tiny_embeddinggemma(tmp_path_factory.mktemp("lookalikes") / "tiny-embeddinggemma")


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lookalikes import build_tiny_qwen3_embedding

    return build_tiny_qwen3_embedding(tmp_path_factory.mktemp("lookalikes") / "tiny-qwen3-embedding")


@pytest.fixture()
def cli_env(tmp_path: Path) -> dict[str, str]:
    """Environment for CLI subprocesses: offline, a private cache, snapshots in a temp folder."""
    env = dict(os.environ)
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "XDG_CACHE_HOME": str(tmp_path / "cache"),
            "EMBPROF_PROFILES_DIR": str(tmp_path / "profiles"),
            "PYTHONUNBUFFERED": "1",
            "COLUMNS": "120",
        }
    )
    env.pop("EMBPROF_SPEED_TEXT", None)
    return env


@pytest.fixture()
def fault_servers() -> Iterator[Callable[..., Any]]:
    """Start misbehaving local servers (tests/fault_server.py, in threads of this process) by mode; each
    is closed afterwards."""
    import fault_server

    started: list[Any] = []

    def start(mode: str = "ok", **settings: Any) -> Any:
        s = fault_server.start(mode, **settings)
        started.append(s)
        return s

    yield start
    for s in started:
        try:
            s.__exit__()
        except OSError:  # a server that died on purpose is closed already
            pass


@pytest.fixture()
def server(fault_servers: Callable[..., Any]) -> Callable[..., str]:
    """A misbehaving local server's URL, by mode (see fault_servers)."""
    return lambda mode="ok", **settings: str(fault_servers(mode, **settings).url)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """How the command-line runs of ``cli_helpers.run_cli`` started: forked from the warm parent, or cold and why."""
    helpers = sys.modules.get("cli_helpers")
    warm = getattr(helpers, "_warm", None) if helpers is not None else None
    if warm is None:
        return
    cold = sum(warm.cold.values())
    terminalreporter.write_line(f"embprof in a child process: {warm.warm} run(s) forked from the warm parent, {cold} cold")
    for why, n in warm.cold.most_common():
        terminalreporter.write_line(f"  cold, {n}x: {why}")
