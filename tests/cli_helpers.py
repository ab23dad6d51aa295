"""Running the command line in tests, and reading the snapshot a run names.

Two ways, named apart:

- ``run_cli_in_process``: ``embprof.tui.cli.main`` in this process, its output read from pytest's capsys (the
  commands that need no model: quick);
- ``run_cli``: the installed ``embprof`` console script in a child process, as a user runs it: forked from a
  warm parent that has done the imports where nothing the test can see differs (``warm_cli`` says when), a
  cold interpreter otherwise or when the test asks for ``cold=True``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest

from conftest import embprof_exe
from warm_cli import WarmCli
from embprof.engine.snapshot import Snapshot, load


def run_cli_in_process(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``embprof ARGS`` through ``main`` in this process: its exit status (argparse's own refusals, which raise
    SystemExit, included), stdout and stderr."""
    from embprof.tui.cli import main

    try:
        rc = main(args)
    except SystemExit as exc:  # argparse's own refusals
        rc = int(exc.code or 0)
    out, err = capsys.readouterr()
    return rc, out, err


class ChildRun(NamedTuple):
    """What a child ``embprof`` did: its exit status, stdout and stderr (decoded as UTF-8, line ends as written),
    and its peak RSS in MiB as the kernel reported it (ru_maxrss from wait4; NaN for a warm child, whose
    high-water mark starts at its parent's, so that any comparison with it fails)."""

    rc: int
    out: str
    err: str
    maxrss_mib: float


_warm: WarmCli | None = None


def warm_cli() -> WarmCli:
    """The session's warm parent, made on first use with the environment ``cli_env`` gives every test (the
    per-test folders aside, which a command reads when it runs)."""
    global _warm
    if _warm is None:
        scratch = Path(tempfile.mkdtemp(prefix="embprof-warm-"))
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "XDG_CACHE_HOME": str(scratch / "cache"),
               "EMBPROF_PROFILES_DIR": str(scratch / "profiles")}
        _warm = WarmCli(env, embprof_exe())
        atexit.register(_warm.close)
        atexit.register(shutil.rmtree, scratch, True)
    return _warm


def run_cli(args: list[str], env: dict[str, str] | None = None, *, cwd: Path | None = None, timeout: float | None = None,
            preexec: Callable[[], None] | None = None, cold: bool = False) -> ChildRun:
    """Run ``embprof ARGS`` in a child process and wait for it.

    Both streams are pipes, read to their end at once (stderr on a thread of its own, so that neither can block
    the child on a full pipe; a pipe, unlike a file, is not held to a file-size limit that ``preexec`` sets), and
    the child is reaped with wait4 so that its resource usage comes from the kernel. ``env``: the child's
    environment (this process's when None); ``preexec``: run in the child before embprof starts (a resource
    limit, a umask); ``timeout``: seconds, after which the child is killed and subprocess.TimeoutExpired raised;
    ``cold``: a fresh interpreter whatever the rest (the test looks at the import phase or at the child's kernel
    peak RSS).
    """
    if cold or preexec is not None:
        warm_cli().cold["the test asked for a cold start" if cold else "a preexec"] += 1
    else:
        warm = warm_cli().run(args, env, cwd, timeout)
        if warm is not None:
            rc, out_b, err_b, maxrss = warm
            return ChildRun(rc, out_b.decode(), err_b.decode(), maxrss)
    cmd = [embprof_exe(), *args]
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=preexec)
    assert proc.stdout is not None and proc.stderr is not None
    err_box: list[bytes] = []
    err_reader = threading.Thread(target=lambda: err_box.append(proc.stderr.read()), daemon=True)  # type: ignore[union-attr]
    err_reader.start()
    expired = threading.Event()

    def kill() -> None:
        expired.set()
        proc.kill()

    timer = threading.Timer(timeout, kill) if timeout is not None else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        with proc.stdout:
            out = proc.stdout.read()
        err_reader.join()
        proc.stderr.close()
        _pid, status, usage = os.wait4(proc.pid, 0)
    finally:
        if timer is not None:
            timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = err_box[0] if err_box else b""
    if expired.is_set() and os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
        raise subprocess.TimeoutExpired(cmd, timeout or 0.0, output=out, stderr=err)
    return ChildRun(proc.returncode, out.decode(), err.decode(), usage.ru_maxrss / 1024)  # KiB -> MiB


def snapshot_from(stdout: str) -> tuple[Path, Snapshot]:
    """The snapshot a run names on its last line (``snapshot: PATH``), and that file loaded."""
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("snapshot: "), stdout
    path = Path(last.removeprefix("snapshot: ").strip())
    return path, load(path)
