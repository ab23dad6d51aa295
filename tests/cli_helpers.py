"""Running the command line in tests, and reading the snapshot a run names.

Two ways, named apart:

- ``run_cli_in_process``: ``embprof.tui.cli.main`` in this process, its output read from pytest's capsys (the
  commands that need no model: quick);
- ``run_cli``: the installed ``embprof`` console script in a child process, as a user runs it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest

from conftest import embprof_exe
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
    and its peak RSS in MiB as the kernel reported it (ru_maxrss from wait4)."""

    rc: int
    out: str
    err: str
    maxrss_mib: float


def run_cli(args: list[str], env: dict[str, str] | None = None, *, cwd: Path | None = None, timeout: float | None = None,
            preexec: Callable[[], None] | None = None) -> ChildRun:
    """Run ``embprof ARGS`` in a child process and wait for it.

    Both streams are pipes, read to their end at once (stderr on a thread of its own, so that neither can block
    the child on a full pipe; a pipe, unlike a file, is not held to a file-size limit that ``preexec`` sets), and
    the child is reaped with wait4 so that its resource usage comes from the kernel. ``env``: the child's
    environment (this process's when None); ``preexec``: run in the child before embprof starts (a resource
    limit, a umask); ``timeout``: seconds, after which the child is killed and subprocess.TimeoutExpired raised.
    """
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
