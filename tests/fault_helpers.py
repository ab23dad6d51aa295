"""Helpers for the fault tests: children with the stop signals at their defaults, event-driven waits on a
child's progress lines, and hostile file systems (a full disk, a read-only folder)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import resource
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

STOP_SIGNALS: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def default_stop_signals() -> None:
    """preexec_fn for a child that is sent stop signals: a background shell runs jobs with SIGINT ignored and
    ``nohup`` ignores SIGHUP; embprof rightly leaves an ignored signal alone, so the child would never see it.
    A terminal's foreground job has the defaults, which this restores (conftest.default_sigint, for all three)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)


def handlers_installed(pid: int, signals: tuple[int, ...] = STOP_SIGNALS) -> bool:
    """True once ``pid`` catches every one of ``signals`` (its SigCgt mask in /proc): embprof's own handlers
    are in place. Python itself catches SIGINT from the start, so SIGHUP is the one that tells."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("SigCgt:"):
                    mask = int(line.split()[1], 16)
                    return all(mask >> (int(s) - 1) & 1 for s in signals)
    except OSError:
        pass
    return False


def wait_until(condition: Callable[[], bool], timeout: float, what: str, alive: subprocess.Popen[str] | None = None,
               poll: float = 0.001) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` s, or at once if ``alive`` has exited."""
    deadline = time.monotonic() + timeout
    while not condition():
        if alive is not None and alive.poll() is not None:
            raise AssertionError(f"the process exited (status {alive.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


class LineReader:
    """Reads a child's stream on a thread, so that a test can wait for a line with a timeout (a bare
    readline would block forever on a child that hangs) and still have every line afterwards."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float) -> str:
        """The first line matching the regular expression ``pattern``; fails with the lines so far if the
        stream ends or ``timeout`` passes first."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if rx.search(line):
                        return line
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    why = "the stream ended" if self._closed else f"{timeout:.0f} s passed"
                    raise AssertionError(f"{why} before a line matching {pattern!r}; lines:\n" + "\n".join(self.lines[-40:]))
                self._cond.wait(left)

    def find(self, pattern: str) -> str | None:
        """The first line so far matching ``pattern``, without waiting."""
        rx = re.compile(pattern)
        with self._cond:
            return next((line for line in self.lines if rx.search(line)), None)

    def close(self, timeout: float = 60) -> str:
        """Wait for the end of the stream; the whole text."""
        self._thread.join(timeout)
        with self._cond:
            return "\n".join(self.lines)


class Child:
    """A child process with its stdout and stderr read line by line as they come (progress goes to stderr)."""

    def __init__(self, args: list[str], env: dict[str, str], preexec: Callable[[], None] | None = None) -> None:
        def pre() -> None:
            default_stop_signals()
            if preexec is not None:
                preexec()

        self.proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, preexec_fn=pre)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.out = LineReader(self.proc.stdout)
        self.err = LineReader(self.proc.stderr)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def finish(self, timeout: float = 300) -> tuple[int, str, str]:
        """Wait for the child: its status, stdout and stderr. One that hangs is killed and the test fails."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the process did not end within {timeout:.0f} s; stderr:\n{self.err.close(5)}") from None
        return self.proc.returncode, self.out.close(), self.err.close()


def temp_leftovers(folder: Path) -> list[str]:
    """The hidden temporary files embprof's atomic writes and writability probes make (``.NAME.XXXX.tmp``,
    ``.embprof-probe.XXXX``): none may outlive a write that failed or was stopped by a catchable signal."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and (p.name.endswith(".tmp") or p.name.startswith(".embprof-probe.")))


# -- hostile file systems ---------------------------------------------------------------------------------------


def _mount(*args: str) -> bool:
    if os.geteuid() != 0:
        return False
    try:
        return subprocess.run(["mount", *args], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _unmount(path: Path) -> None:
    # A lazy unmount as the fallback: a child that is still being torn down must not leave the mount behind.
    if subprocess.run(["umount", str(path)], capture_output=True, timeout=30).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def fill(folder: Path) -> None:
    """Fill the file system under ``folder`` until it refuses another byte (ENOSPC)."""
    chunk = b"\0" * 4096
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                os.write(fd, chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    finally:
        os.close(fd)


@dataclass
class FullDisk:
    """Where a write fails as on a full disk. ``tmpfs``: a small tmpfs filled to the brim, failing in that folder
    only (ENOSPC). Otherwise a file-size limit (RLIMIT_FSIZE) set in the child by ``preexec``, failing every file
    it writes past ``limit`` bytes, wherever it is (EFBIG; embprof ignores SIGXFSZ, which would kill it)."""

    folder: Path
    tmpfs: bool
    limit: int = 1024

    @property
    def reason(self) -> str:
        return "no space left on device" if self.tmpfs else "file too large"

    def preexec(self) -> None:
        if not self.tmpfs:
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.limit, self.limit))


@contextlib.contextmanager
def full_disk(where: Path, populate: Callable[[Path], None] = lambda _p: None, force_rlimit: bool = False,
              limit: int = 1024) -> Iterator[FullDisk]:
    """A full disk at ``where``: ``populate(folder)`` puts what the test needs there first, then it is filled.
    A tmpfs when it can be mounted (root), else the file-size limit. Always unmounted afterwards."""
    where.mkdir(parents=True, exist_ok=True)
    if not force_rlimit and _mount("-t", "tmpfs", "-o", "size=200k", "tmpfs", str(where)):
        try:
            populate(where)
            fill(where)
            yield FullDisk(where, tmpfs=True)
        finally:
            _unmount(where)
        return
    populate(where)
    yield FullDisk(where, tmpfs=False, limit=limit)


@contextlib.contextmanager
def readonly_folder(where: Path, populate: Callable[[Path], None] = lambda _p: None) -> Iterator[Path]:
    """A folder no write can go into. Root writes through permission bits, so as root it is a tmpfs remounted
    read-only (EROFS); otherwise chmod 0555 (EACCES), restored afterwards so pytest can clean up."""
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        if not _mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)):
            pytest.skip("running as root, which writes through permission bits, and no tmpfs can be mounted to make a read-only folder")
        try:
            populate(where)
            if not _mount("-o", "remount,ro", str(where)):
                pytest.skip("the tmpfs cannot be remounted read-only")
            yield where
        finally:
            _unmount(where)
        return
    populate(where)
    modes = {p: p.stat().st_mode for p in [where, *where.rglob("*")] if p.is_dir()}
    for p in modes:
        p.chmod(0o555)
    try:
        yield where
    finally:
        for p, mode in modes.items():
            p.chmod(mode)


def tiny_matrix_spec(folder: Path, precisions: tuple[str, ...] = ("float32",)) -> Path:
    """The cheapest real matrix: one cell per output precision, each timing two encodes of three short lines,
    no mteb task. Returns the spec file."""
    lines = folder / "lines.txt"
    lines.write_text("one short line\nanother short line\na third line of text\n")
    spec = folder / "matrix.toml"
    spec.write_text(f"precision = {json.dumps(list(precisions))}\ntasks = []\nloops = 2\ncost = \"encode\"\n"
                    f"cost_input = {json.dumps(str(lines))}\n")
    return spec
