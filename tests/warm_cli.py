"""The command line run from a warm parent, for the tests whose subject is not the interpreter's start.

A cold ``embprof run`` on a local model spends most of its 6-10 s importing torch, sentence-transformers
and mteb before it measures anything, and the suite runs it about a hundred times. The matrix already
solves the same problem for its cells (``embprof.engine.matrix.warm``): one parent imports once and
forks a child per cell. This module does the same for ``embprof``'s own ``main``: the child is a process
of its own (own pid, standard output and error as pipes the test reads, environment and working folder
as the test gave them) and runs the console script's entry exactly as a cold process would, then exits
through the interpreter's own shutdown (atexit handlers, buffered output).

What a forked child cannot be is a cold process, so a run goes warm only when nothing it could observe
differs:

- its environment differs from the parent's only in variables read when a command runs, never when a
  library is imported (``CALL_TIME``): the profiles folder, the cache folder, the terminal's width;
- it loads a model here: a server's client (``--server``) imports no model library, so it runs cold,
  exactly as a user's, at little cost;
- no ``preexec`` (a resource limit set before the interpreter starts);
- the test does not read the child's kernel peak RSS: a forked child inherits its parent's high-water
  mark, so ``maxrss_mib`` of a warm run is NaN, and any comparison with it fails;
- the test does not look at the import phase (a warm child's imports are already done): such tests ask
  for ``cold=True``.

Anything else (the parent not ready, not forkable, gone, or busy) runs the command cold, as before.
``EMBPROF_TEST_COLD=1`` runs every command cold.
"""

from __future__ import annotations

import gc
import io
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MESSAGE_MAX = 1 << 20
# Variables a command reads when it runs, never at import (embprof reads its own at call time; XDG_CACHE_HOME
# as embprof's cache folder; COLUMNS/LINES by the console when it prints), and pytest's name of the running
# test, which nothing reads. Any other difference runs cold.
# polars' allocator setting (_RJEM_MALLOC_CONF, which polars puts in the test process's environment as it loads)
# is read when polars loads, which in the parent is deferred to the child's first use (warm.DEFERRED).
CALL_TIME = ("XDG_CACHE_HOME", "COLUMNS", "LINES", "PYTEST_CURRENT_TEST", "_RJEM_MALLOC_CONF")
CALL_TIME_PREFIX = "EMBPROF_"
# Values a library reads at import exactly as it reads the variable's absence. Ray's import sets RAY_CLIENT_MODE=0
# in its own process (it turns client mode on only for "1"), so the test process has it once any test imports Ray.
SAME_AS_UNSET = {"RAY_CLIENT_MODE": "0"}


def _import_time_env(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in CALL_TIME and not k.startswith(CALL_TIME_PREFIX)
            and SAME_AS_UNSET.get(k) != v}


class WarmCli:
    """The test side: one warm parent for the session, started on first use."""

    def __init__(self, env: Mapping[str, str], exe: str) -> None:
        self.env = dict(env)
        self.exe = exe
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._why: str | None = None
        self._started = False
        self._busy = threading.Lock()
        # What the session's summary says: how many commands ran warm, and why the others ran cold.
        self.warm = 0
        self.cold: Counter[str] = Counter()
        self.set_at_import: dict[str, str] = {}

    def why_cold(self, args: list[str], env: Mapping[str, str] | None) -> str | None:
        """Why ``embprof ARGS`` with ``env`` cannot be forked from this parent (None: it can)."""
        if os.environ.get("EMBPROF_TEST_COLD") == "1":
            return "EMBPROF_TEST_COLD=1"
        if any(a == "--server" or a.startswith("--server=") for a in args):
            # A server's client imports no model library: cold, it is exactly the process a user runs, and cheap.
            return "a server's client (no model library to import)"
        theirs, ours = _import_time_env(dict(os.environ) if env is None else env), _import_time_env(self.env)
        # What the parent's imports set for themselves (sklearn's KMP_* switches, torch's compiler cache folder):
        # a cold process's imports set the same, so the test's process having them too, or not, is no difference.
        differ = sorted(k for k in theirs.keys() | ours.keys() if theirs.get(k) != ours.get(k)
                        and not (k in self.set_at_import and theirs.get(k) in (None, self.set_at_import[k])))
        return f"its environment differs in {', '.join(differ)}" if differ else None

    def _start(self) -> None:
        self._started = True
        from embprof.engine.matrix.warm import THREAD_KNOBS

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._proc = subprocess.Popen([sys.executable, str(Path(__file__)), str(theirs.fileno()), self.exe],
                                          pass_fds=[theirs.fileno()], env={**self.env, **THREAD_KNOBS},
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
        finally:
            theirs.close()
        self._sock = ours
        ready = self._recv()
        if ready is not None:
            self.set_at_import = {k: v for k, v in ready.get("set_at_import", {}).items() if k not in THREAD_KNOBS}
        if ready is None or not ready.get("ready"):
            self._why = (ready or {}).get("why") or "the warm parent ended before it was ready"
            self.close()

    def _recv(self) -> dict[str, Any] | None:
        assert self._sock is not None
        try:
            data = self._sock.recv(MESSAGE_MAX)
        except OSError:
            return None
        if not data:
            return None
        message: dict[str, Any] = json.loads(data)
        return message

    def run(self, args: list[str], env: Mapping[str, str] | None, cwd: Path | None,
            timeout: float | None) -> tuple[int, bytes, bytes, float] | None:
        """``embprof ARGS`` in a forked child: (exit status, stdout, stderr, NaN), or None where it must run cold."""
        if not self._busy.acquire(blocking=False):
            return self._cold("another command was running")  # one child at a time
        try:
            if not self._started:
                self._start()
            if self._sock is None:
                return self._cold(self._why or "the warm parent is gone")
            why = self.why_cold(args, env)
            if why is not None:
                return self._cold(why)
            done = self._run(args, dict(os.environ) if env is None else dict(env), cwd, timeout)
            if done is None:
                return self._cold(self._why or "the warm parent refused or is gone")
            self.warm += 1
            return done
        finally:
            self._busy.release()

    def _cold(self, why: str) -> tuple[int, bytes, bytes, float] | None:
        self.cold[why] += 1
        return None

    def _run(self, args: list[str], env: dict[str, str], cwd: Path | None,
             timeout: float | None) -> tuple[int, bytes, bytes, float] | None:
        assert self._sock is not None
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            request = {"argv": args, "env": env, "cwd": str(cwd or os.getcwd())}
            socket.send_fds(self._sock, [json.dumps(request).encode("utf-8")], [out_w, err_w])
        except OSError:
            for fd in (out_r, err_r):
                os.close(fd)
            self.close()
            return None
        finally:
            os.close(out_w)
            os.close(err_w)
        answer = self._recv()
        if answer is None or "pid" not in answer:
            for fd in (out_r, err_r):
                os.close(fd)
            if answer is None:
                self.close()
            return None
        pid = int(answer["pid"])
        boxes: dict[int, bytes] = {}

        def drain(fd: int) -> None:
            with os.fdopen(fd, "rb") as f:
                boxes[fd] = f.read()

        err_reader = threading.Thread(target=drain, args=(err_r,), daemon=True)
        err_reader.start()
        expired = threading.Event()

        def kill() -> None:
            expired.set()
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout, kill) if timeout is not None else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        try:
            drain(out_r)
            err_reader.join()
            done = self._recv()
        finally:
            if timer is not None:
                timer.cancel()
        if done is None:
            self.close()
            raise RuntimeError("the warm parent died while its child ran")
        rc = int(done["returncode"])
        if expired.is_set() and rc == -signal.SIGKILL:
            raise subprocess.TimeoutExpired([self.exe, *args], timeout or 0.0, output=boxes.get(out_r), stderr=boxes.get(err_r))
        return rc, boxes.get(out_r, b""), boxes.get(err_r, b""), math.nan

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None


# -- the parent's side (this file run as a script) -------------------------------------------------------------
def _send(sock: socket.socket, message: Mapping[str, Any]) -> None:
    sock.sendall(json.dumps(message).encode("utf-8"))


def _serve(sock: socket.socket, exe: str) -> int:
    from embprof.engine.matrix.warmproc import imports, why_not_forkable

    before = dict(os.environ)
    try:
        imports()
        import embprof.tui.cli  # noqa: F401

        why = why_not_forkable()
    except Exception as exc:
        why = f"the warm parent could not import ({exc.__class__.__name__}: {exc})"
    # As the matrix's warm parent does: what the imports made is left out of every collection, so that a child
    # neither walks it at each full collection nor writes to (and so copies) its pages.
    gc.freeze()
    _send(sock, {"ready": why is None, "why": why,
                 "set_at_import": {k: v for k, v in os.environ.items() if before.get(k) != v}})
    if why is not None:
        return 0
    while True:
        try:
            data, fds, _flags, _addr = socket.recv_fds(sock, MESSAGE_MAX, 2)
        except OSError:
            return 0
        if not data:
            return 0  # the tests are done
        why = why_not_forkable()
        if why is not None or len(fds) != 2:
            for fd in fds:
                os.close(fd)
            _send(sock, {"refused": why or "a request without its output pipes"})
            continue
        pid = os.fork()
        if pid == 0:
            return _child(sock, json.loads(data), fds, exe)
        for fd in fds:
            os.close(fd)
        _send(sock, {"pid": pid})
        _, status = os.waitpid(pid, 0)
        try:
            _send(sock, {"returncode": os.waitstatus_to_exitcode(status)})
        except OSError:
            return 0


def _child(sock: socket.socket, request: Mapping[str, Any], fds: list[int], exe: str) -> int:
    """The forked child: made what the console script's process is, then the script's own entry, whose
    SystemExit unwinds to the interpreter's shutdown as a cold process's does."""
    sock.close()
    os.dup2(fds[0], 1)
    os.dup2(fds[1], 2)
    for fd in fds:
        os.close(fd)
    for name, fd in (("stdout", 1), ("stderr", 2)):
        stream = _stdio(fd, getattr(sys, name))
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)  # as at a start: the console reads the originals
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    from embprof.engine.matrix.warmproc import restore_blas

    restore_blas(os.environ)
    sys.argv = [exe, *request["argv"]]
    from embprof.tui.cli import entry

    entry()  # ends in SystemExit with the command's status, as the console script does: the interpreter exits with it
    return 0


def _stdio(fd: int, was: Any) -> io.TextIOWrapper:
    """A standard stream on ``fd`` made as the interpreter makes it at start (the parent's were made for
    /dev/null, which can seek: a pipe cannot, and a stream keeps what it found). Same encoding, error handler
    and buffering as the parent's, which started with the tests' environment."""
    raw = io.FileIO(fd, "w", closefd=False)
    binary: Any = raw if was.write_through else io.BufferedWriter(raw)
    return io.TextIOWrapper(binary, encoding=was.encoding, errors=was.errors, line_buffering=was.line_buffering,
                            write_through=was.write_through)


if __name__ == "__main__":
    # embprof's modules come from the package, never from beside this file
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    sys.exit(_serve(socket.socket(fileno=int(sys.argv[1])), sys.argv[2]))
