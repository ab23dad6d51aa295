"""The command line run from a warm parent, for the tests whose subject is not the interpreter's start.

A cold ``embprof run`` on a local model spends most of its 6-10 s importing torch, sentence-transformers
and mteb before it measures anything, and the suite runs it about a hundred times. The matrix already
solves the same problem for its cells (``embprof.engine.matrix.warm``): one parent imports once and
forks a child per cell. This module uses that parent, its launcher and its child's making for ``embprof``'s
own ``main``: the child is a process
of its own (own pid, standard output and error as pipes the test reads, environment and working folder
as the test gave them) and runs the console script's entry exactly as a cold process would, then exits
through the interpreter's own shutdown (atexit handlers, buffered output).

What a forked child cannot be is a cold process, so a run goes warm only when nothing it could observe
differs:

- its environment differs from the parent's only in variables read when a command runs, never when a
  library is imported (the matrix's rule, ``warm.env_differences``: embprof's own, the terminal's width),
  and in the two this suite adds (``CALL_TIME``);
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

import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# This suite's own variables read only when a command runs, beside the matrix's (warm.CALL_TIME): pytest's name of
# the running test, which nothing reads, and XDG_CACHE_HOME, embprof's cache folder (huggingface_hub also derives
# its download cache from it as it loads, which no test uses: every model here is a local folder, offline).
CALL_TIME = ("PYTEST_CURRENT_TEST", "XDG_CACHE_HOME")


class WarmCli:
    """The test side: one warm parent for the session, started on first use."""

    def __init__(self, env: Mapping[str, str], exe: str) -> None:
        from embprof.engine.matrix.warm import WarmParent

        self.env = dict(env)
        self.exe = exe
        self.parent = WarmParent(self.env, command=[sys.executable, str(Path(__file__)), exe], call_time=CALL_TIME)
        self._busy = threading.Lock()
        # What the session's summary says: how many commands ran warm, and why the others ran cold.
        self.warm = 0
        self.cold: Counter[str] = Counter()

    def why_cold(self, args: list[str], env: Mapping[str, str] | None) -> str | None:
        """Why ``embprof ARGS`` with ``env`` cannot be forked from this parent (None: it can)."""
        if os.environ.get("EMBPROF_TEST_COLD") == "1":
            return "EMBPROF_TEST_COLD=1"
        if any(a == "--server" or a.startswith("--server=") for a in args):
            # A server's client imports no model library: cold, it is exactly the process a user runs, and cheap.
            return "a server's client (no model library to import)"
        return self.parent.why_not_served(dict(os.environ) if env is None else env)

    def run(self, args: list[str], env: Mapping[str, str] | None, cwd: Path | None,
            timeout: float | None) -> tuple[int, bytes, bytes, float] | None:
        """``embprof ARGS`` in a forked child: (exit status, stdout, stderr, NaN), or None where it must run cold."""
        if not self._busy.acquire(blocking=False):
            return self._cold("another command was running")  # one child at a time
        try:
            why = self.why_cold(args, env)
            if why is None:
                ready = self.parent.readiness()  # what its imports set is part of the comparison: asked again below
                why = None if ready.ready else ready.why or "the warm parent is not running"
            done = self._run(args, dict(os.environ) if env is None else dict(env), cwd, timeout) if why is None else why
            if isinstance(done, str):
                return self._cold(done)
            self.warm += 1
            return done
        finally:
            self._busy.release()

    def _cold(self, why: str) -> tuple[int, bytes, bytes, float] | None:
        self.cold[why] += 1
        return None

    def _run(self, args: list[str], env: dict[str, str], cwd: Path | None,
             timeout: float | None) -> tuple[int, bytes, bytes, float] | str:
        import math

        err_r, err_w = os.pipe()
        try:
            child = self.parent.spawn(args, env, err_w, cwd=str(cwd or os.getcwd()), binary=True)
        finally:
            os.close(err_w)
        if isinstance(child, str):
            os.close(err_r)
            return child
        boxes: dict[str, bytes] = {}

        def drain(name: str, f: Any) -> None:
            with f:
                boxes[name] = f.read()

        readers = [threading.Thread(target=drain, args=("out", child.stdout), daemon=True),
                   threading.Thread(target=drain, args=("err", os.fdopen(err_r, "rb")), daemon=True)]
        for reader in readers:
            reader.start()
        try:
            rc = child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            for reader in readers:
                reader.join()
            raise subprocess.TimeoutExpired([self.exe, *args], timeout or 0.0, output=boxes.get("out"),
                                            stderr=boxes.get("err")) from None
        for reader in readers:
            reader.join()
        if rc == -signal.SIGKILL and not self.parent.serves(env):
            raise RuntimeError("the warm parent died while its child ran")
        return rc, boxes.get("out", b""), boxes.get("err", b""), math.nan

    def close(self) -> None:
        self.parent.close()


# -- the parent's side (this file run as a script) -------------------------------------------------------------
def _load() -> None:
    from embprof.engine.matrix.warmproc import imports

    imports()
    import embprof.tui.cli  # noqa: F401


def _child(exe: str) -> Any:
    def child(sock: Any, request: Mapping[str, Any], fds: list[int], _parent: Any) -> int:
        """The forked child: made what the console script's process is, then the script's own entry, whose
        SystemExit unwinds to the interpreter's shutdown as a cold process's does."""
        from embprof.engine.matrix.warmproc import become_child

        become_child(sock, request, fds, request["env"], exe)
        from embprof.tui.cli import entry

        entry()  # ends in SystemExit with the command's status, as the console script does: the interpreter exits with it
        return 0

    return child


if __name__ == "__main__":
    # embprof's modules come from the package, never from beside this file
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    import socket

    from embprof.engine.matrix.warmproc import serve

    # argv: this file, the console script's path, then the socket's descriptor (WarmParent appends it)
    sys.exit(serve(socket.socket(fileno=int(sys.argv[2])), _load, _child(sys.argv[1]), pages=False))
