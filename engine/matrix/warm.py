"""A warm parent for matrix cells: the imports once, a forked child per cell.

A cold cell pays for its interpreter, embprof, torch, sentence-transformers and mteb (about 6 s on
two cores) before it measures anything. The warm parent (``warm.main``, started by ``WarmParent``)
pays that once: it imports what cells need, then forks one child per cell. The child is still a
process of its own (its own pid, session, kernel high-water mark, crash, standard output and error)
and runs ``cellproc.main`` exactly as a cold cell's process would.

Forking is only safe from a process with one thread: a lock another thread held at the fork stays
held in the child forever. So the parent imports with the knobs that keep libraries from starting
threads at import (OpenBLAS's pool, Arrow's jemalloc purger), defers polars (mteb imports it at
module level for its leaderboard code, and polars starts a cleaner thread as it loads) until a child
first uses it, checks that CUDA was never initialised, and counts its threads in ``/proc`` before
every fork. Where any check fails, the cell runs cold and its snapshot says why
(``environment.cell_start``). A child restores what the knobs changed: OpenBLAS's thread count is
set back to what a cold process would have chosen.

The launcher side (``WarmParent``) talks to the parent over a Unix socket: one request per cell,
carrying the cell's arguments and environment, and the cell's standard output and error as file
descriptors (``SCM_RIGHTS``), so the launcher reads the cell's phases exactly as it reads a cold
cell's. The parent answers with the child's pid, then its exit status.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

# Not ``-m``: the parent's modules are imported as the package's, never a second time as __main__.
_ENTRY = "import sys; from embprof.engine.matrix.warmproc import main; sys.exit(main())"
# What the launcher tells a cell of how it started (JSON): warm or cold, and why cold.
START_ENV = "EMBPROF_CELL_START"
# Set by the parent before it imports, read back by a child to undo them: each keeps a library from starting threads at import.
THREAD_KNOBS = {"OPENBLAS_NUM_THREADS": "1", "JE_ARROW_MALLOC_CONF": "background_thread:false"}
# Modules that start threads as they load and that no cell needs before it runs: loaded in the child that first uses them.
DEFERRED = ("polars",)
MESSAGE_MAX = 1 << 20
# What a child's environment may hold otherwise than its parent's: variables read when a command runs, never as a
# library loads. embprof reads its own (EMBPROF_*: a launcher's per-cell entries, the profiles folder …) at call time,
# the console its size (COLUMNS, LINES) when it prints; polars reads its allocator's setting (_RJEM_MALLOC_CONF, which
# polars itself puts in a process's environment as it loads) as it loads, which a warm parent defers to the child.
CALL_TIME = ("COLUMNS", "LINES", "_RJEM_MALLOC_CONF")
CALL_TIME_PREFIX = "EMBPROF_"
# Values a library reads at import exactly as it reads the variable's absence. Ray's import sets RAY_CLIENT_MODE=0 in
# its own process (client mode is on only for "1"), so a process that imported Ray has it, and its children too.
SAME_AS_UNSET = {"RAY_CLIENT_MODE": "0"}
# Environment entries a launcher sets per cell (where it runs, which process it dies with): never the parent's own.
PER_CELL_ENV = ("EMBPROF_CELL_PLACE", "EMBPROF_TIE_TO_PARENT", START_ENV)


def send_message(sock: socket.socket, message: Mapping[str, Any], fds: list[int] | None = None) -> None:
    """One message (JSON) on the launcher's socket, with file descriptors if any (SCM_RIGHTS)."""
    data = json.dumps(message).encode("utf-8")
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.sendall(data)


def import_time_env(env: Mapping[str, str], call_time: Collection[str] = ()) -> dict[str, str]:
    """The part of an environment that libraries may read as they load (``call_time``: more names read only later)."""
    later = {*CALL_TIME, *call_time}
    return {k: v for k, v in env.items() if k not in later and not k.startswith(CALL_TIME_PREFIX) and SAME_AS_UNSET.get(k) != v}


def env_differences(child: Mapping[str, str], parent: Mapping[str, str], set_at_import: Mapping[str, str],
                    call_time: Collection[str] = ()) -> list[str]:
    """The names in which a child's environment differs from its warm parent's where a library may read them as it loads.
    ``set_at_import``: what the parent's own imports put in its environment (sklearn's KMP_* switches, torch's compiler
    cache folder): a cold process's imports set the same, so the child having them too, or not, is no difference."""
    ours, theirs = import_time_env(child, call_time), import_time_env(parent, call_time)
    return sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k)
                  and not (k in set_at_import and ours.get(k) in (None, set_at_import[k])))


# -- the launcher's side ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Readiness:
    """What the warm parent said once it had imported: ready to fork, or why not."""

    ready: bool
    why: str | None
    pid: int | None
    import_s: float | None
    set_at_import: Mapping[str, str] = field(default_factory=dict)  # what its imports put in its environment


class WarmChild:
    """A cell's forked process, as the launcher handles it: the same calls as a ``subprocess.Popen``'s."""

    def __init__(self, parent: WarmParent, pid: int, stdout: IO[Any]) -> None:
        self.parent = parent
        self.pid = pid
        self.stdout = stdout
        self.returncode: int | None = None
        self._lock = threading.Lock()

    def poll(self) -> int | None:
        with self._lock:
            if self.returncode is None:
                self.returncode = self.parent.returncode(block=False)
            return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        with self._lock:
            if self.returncode is None:
                got = self.parent.returncode(block=True, timeout=timeout)
                if got is None:
                    raise subprocess.TimeoutExpired(f"cell {self.pid}", timeout or 0.0)
                self.returncode = got
            return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class WarmParent:
    """One warm parent, started on first use with the environment its cells will have.

    ``command``: the parent's process without its socket's descriptor, which is appended (by default the cells' parent,
    ``warmproc.main``; the test suite starts one for the command line the same way); ``call_time``: more variables,
    beside ``CALL_TIME``, that its children read only when they run."""

    def __init__(self, env: Mapping[str, str], tie: int | None = None, *, command: Sequence[str] | None = None,
                 call_time: Collection[str] = ()) -> None:
        self.env = dict(env)
        self.tie = tie  # a pid the parent dies with (a Ray worker's), and its children with it
        self.command = list(command) if command is not None else [sys.executable, "-c", _ENTRY]
        self.call_time = tuple(call_time)
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._ready: Readiness | None = None

    def why_not_served(self, env: Mapping[str, str]) -> str | None:
        """Why a child with ``env`` cannot share this parent's imports (None: it can)."""
        differ = env_differences(env, self.env, self._ready.set_at_import if self._ready is not None else {}, self.call_time)
        return f"its environment differs from the warm parent's in {', '.join(differ)}" if differ else None

    def serves(self, env: Mapping[str, str]) -> bool:
        """Whether cells with ``env`` can be forked from this parent: its environment, and it still running."""
        alive = self._ready is None or (self._proc is not None and self._proc.poll() is None)
        return alive and self.why_not_served(env) is None

    def readiness(self) -> Readiness:
        if self._ready is None:
            self._ready = self._start()
        return self._ready

    def _start(self) -> Readiness:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # The knobs are in the parent's environment from its first instruction: embprof's own package imports numpy.
        env = {**{k: v for k, v in self.env.items() if k not in PER_CELL_ENV}, **THREAD_KNOBS}
        if self.tie is not None:
            env["EMBPROF_TIE_TO_PARENT"] = str(self.tie)
        try:
            self._proc = subprocess.Popen([*self.command, str(theirs.fileno())], pass_fds=[theirs.fileno()], env=env,
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            ours.close()
            return Readiness(False, f"the warm parent could not start ({exc.strerror or exc})", None, None)
        finally:
            theirs.close()
        self._sock = ours
        message = self._recv(timeout=None)
        if message is None:
            self.close()
            return Readiness(False, "the warm parent ended before it was ready", None, None)
        ready = Readiness(bool(message.get("ready")), message.get("why"), message.get("pid"), message.get("import_s"),
                          {k: v for k, v in (message.get("set_at_import") or {}).items() if k not in THREAD_KNOBS})
        if not ready.ready:
            self.close()
        return ready

    def _recv(self, timeout: float | None) -> dict[str, Any] | None:
        assert self._sock is not None
        self._sock.settimeout(timeout)
        try:
            data = self._sock.recv(MESSAGE_MAX)
        except (socket.timeout, BlockingIOError):  # OSErrors too, but "not yet", not "gone": the caller's to judge
            raise
        except OSError:
            return None
        if not data:
            return None
        message: dict[str, Any] = json.loads(data)
        return message

    def spawn(self, argv: list[str], env: Mapping[str, str], stderr_fd: int, name: str | None = None, *,
              cwd: str | None = None, binary: bool = False) -> WarmChild | str:
        """A child for one command (named ``name``, a cell's id), or why it runs cold instead. Its standard error goes to
        ``stderr_fd``, its standard output to the child's ``stdout`` (text, or bytes with ``binary``); it runs in ``cwd``
        (default: this process's)."""
        ready = self.readiness()  # first: what the parent's imports set is part of the comparison below
        if not ready.ready or self._sock is None:
            return ready.why or "the warm parent is not running"
        why = self.why_not_served(env)
        if why is not None:
            return why
        read_fd, write_fd = os.pipe()
        try:
            send_message(self._sock, {"argv": argv, "env": dict(env), "cwd": cwd or os.getcwd(), "name": name}, [write_fd, stderr_fd])
        except OSError:
            os.close(read_fd)
            self.close()
            return "the warm parent is gone"
        finally:
            os.close(write_fd)
        answer = self._recv(timeout=None)
        if answer is None or "pid" not in answer:
            os.close(read_fd)
            if answer is None:
                self.close()
                return "the warm parent is gone"
            return str(answer.get("refused") or "the warm parent refused the cell")
        stdout = os.fdopen(read_fd, "rb") if binary else os.fdopen(read_fd, "r", encoding="utf-8", errors="replace")
        return WarmChild(self, int(answer["pid"]), stdout)

    def returncode(self, block: bool, timeout: float | None = None) -> int | None:
        """The running child's exit status, once the parent has reaped it (None: not yet)."""
        if self._sock is None:
            return -int(signal.SIGKILL)  # the parent died, and its child with it
        try:
            answer = self._recv(timeout=timeout if block else 0.0)
        except (socket.timeout, BlockingIOError):
            return None
        if answer is None:
            self.close()
            return -int(signal.SIGKILL)
        return int(answer["returncode"])

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

