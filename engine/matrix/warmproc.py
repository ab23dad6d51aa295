"""The warm parent's own process (``warm.py`` says what it is for): it imports once, then forks one
child per cell its launcher asks for. Started by ``warm.WarmParent``, never by hand."""

from __future__ import annotations

import gc
import importlib.util
import io
import json
import os
import signal
import socket
import sys
import time
import types
from collections.abc import Callable, Mapping
from typing import Any

from .launch import TIE_ENV, tie_to_parent
from .warm import DEFERRED, MESSAGE_MAX, START_ENV, THREAD_KNOBS, send_message


def imports() -> None:
    """What every cell imports before it measures: the parent does it once."""
    import torch  # noqa: F401  (the order matters: torch's import reads every loaded module's __file__)
    import transformers  # noqa: F401
    import sentence_transformers  # noqa: F401

    for name in DEFERRED:
        _defer(name)
    import mteb  # noqa: F401

    from .. import environment, execute, mteb_bridge, sampler, session  # noqa: F401
    from . import cellproc  # noqa: F401


class _Deferred(types.ModuleType):
    """A module not loaded yet: the import statement finds it (its spec and file are there), and the
    first use of anything else loads the real one and takes its place."""

    def __getattr__(self, attr: str) -> Any:
        name = self.__name__
        real = sys.modules.get(name)
        if real is self or real is None:
            del sys.modules[name]
            try:
                real = importlib.import_module(name)
            except BaseException:
                sys.modules[name] = self  # still deferred: the next use tries again, and says why
                raise
        self.__dict__.update(real.__dict__)
        return getattr(real, attr)


def _defer(name: str) -> None:
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None:
        return
    module = _Deferred(name)
    module.__spec__ = spec
    module.__file__ = spec.origin
    sys.modules[name] = module


def threads() -> list[str]:
    """The names of this process's threads (from /proc: native threads too, which ``threading`` cannot see)."""
    names = []
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return []
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/comm", encoding="utf-8", errors="replace") as f:
                names.append(f.read().strip())
        except OSError:
            pass
    return names


def why_not_forkable() -> str | None:
    """Why this process is not safe to fork now (None: it is)."""
    found = threads()
    if len(found) > 1:
        others = sorted(set(found[1:]))
        return f"the warm parent runs {len(found) - 1} thread(s) besides its own ({', '.join(others)})"
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None) if torch is not None else None
    if cuda is not None and cuda.is_initialized():
        return "the warm parent initialised CUDA"
    return None


def resident_file_pages() -> list[tuple[int, int]]:
    """The runs of file-backed pages (the libraries' code and data) present in this process's page tables,
    as (address, length). A fork copies no page-table entries for a mapping the process never wrote to, so a
    child would count those pages in its RSS only once it touched them again: a cold process counts every
    one its imports touched. The child maps the same pages again (``populate``) so that its RSS is a cold one's."""
    page = os.sysconf("SC_PAGE_SIZE")
    runs: list[tuple[int, int]] = []
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps, open("/proc/self/pagemap", "rb") as pagemap:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) < 6 or fields[4] == "0" or not fields[5].startswith("/") or "r" not in fields[1]:
                    continue  # anonymous (a fork copies those) or unreadable
                start, end = (int(x, 16) for x in fields[0].split("-"))
                pagemap.seek(start // page * 8)
                entries = pagemap.read((end - start) // page * 8)
                run_start = None
                for i in range(len(entries) // 8):
                    present = entries[i * 8 + 7] & 0x80  # bit 63 of the little-endian entry: the page is present
                    if present and run_start is None:
                        run_start = i
                    elif not present and run_start is not None:
                        runs.append((start + run_start * page, (i - run_start) * page))
                        run_start = None
                if run_start is not None:
                    runs.append((start + run_start * page, (len(entries) // 8 - run_start) * page))
    except OSError:
        return []
    return runs


def populate(runs: list[tuple[int, int]]) -> None:
    """Map the pages of ``runs`` into this process's page tables (MADV_POPULATE_READ; Linux 5.14 and later)."""
    import ctypes

    madvise = ctypes.CDLL(None, use_errno=True).madvise
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    for address, length in runs:
        madvise(address, length, 22)  # MADV_POPULATE_READ; a run the kernel refuses stays as it is


def cold_blas_threads(env: Mapping[str, str]) -> int:
    """The OpenBLAS thread count a cold process with ``env`` would start with: OpenBLAS reads these
    variables in this order, and otherwise takes every CPU it may run on."""
    for key in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS"):
        value = env.get(key, "")
        if value.strip().isdigit() and int(value) > 0:
            return int(value)
    return len(os.sched_getaffinity(0))


# A forked child's work: (the parent's socket, the request, its standard output and error's descriptors, what the
# parent measured of itself) to the exit status. A cell's never returns (it ends in os._exit); another may return, to
# end as its interpreter ends, through ``serve``'s caller.
Child = Callable[[socket.socket, Mapping[str, Any], list[int], "Parent"], int]


class Parent:
    """What the warm parent knows of itself when it forks: its import's time, and its file pages (``populate``)."""

    def __init__(self, import_s: float, pages: list[tuple[int, int]]) -> None:
        self.import_s = import_s
        self.pages = pages


def serve(sock: socket.socket, load: Callable[[], None] | None = None, child: Child | None = None, *,
          pages: bool = True) -> int:
    """The parent's life: import (``load``, by default what cells need), say whether it is ready, then one child per
    request (``child``, by default a cell's) until the launcher goes. ``pages``: note the file pages a child maps again.
    Returns in the parent when the launcher is gone; in a child, what ``child`` returns."""
    started = time.perf_counter()
    before = dict(os.environ)
    try:
        (load or imports)()
        why = why_not_forkable()
    except Exception as exc:  # a library that does not import here: every cell runs cold, and says why
        why = f"the warm parent could not import what its children need ({exc.__class__.__name__}: {str(exc)[:200]})"
    # What the imports made, the children share: the garbage collector leaves it alone, so that a child does not
    # write to (and so copy) every page of it the first time it collects. Not collected first: a cold process
    # holds its imports' garbage too, until its own collector runs.
    gc.freeze()
    me = Parent(time.perf_counter() - started, resident_file_pages() if why is None and pages else [])
    send_message(sock, {"ready": why is None, "why": why, "pid": os.getpid(), "import_s": me.import_s,
                        "set_at_import": {k: v for k, v in os.environ.items() if before.get(k) != v}})
    if why is not None:
        return 0
    while True:
        try:
            data, fds, _flags, _addr = socket.recv_fds(sock, MESSAGE_MAX, 2)
        except OSError:
            return 0
        if not data:
            return 0  # the launcher is gone
        request = json.loads(data)
        why = why_not_forkable()
        if why is not None or len(fds) != 2:
            for fd in fds:
                os.close(fd)
            send_message(sock, {"refused": why or "a request without its output files"})
            continue
        pid = os.fork()
        if pid == 0:
            return (child or _cell)(sock, request, fds, me)
        for fd in fds:
            os.close(fd)
        send_message(sock, {"pid": pid})
        _, status = os.waitpid(pid, 0)
        try:
            send_message(sock, {"returncode": os.waitstatus_to_exitcode(status)})
        except OSError:
            return 0


def become_child(sock: socket.socket, request: Mapping[str, Any], fds: list[int], env: Mapping[str, str], argv0: str) -> None:
    """What every forked child is made first, to be the process a cold start makes: without the parent's socket, its
    standard output and error on the launcher's descriptors (the streams made again for them), ``env`` as its
    environment, the request's working folder, the signals' default handlers, OpenBLAS's threads a cold process's
    (``restore_blas``), and ``argv0`` with the request's arguments as its command line."""
    sock.close()
    os.dup2(fds[0], 1)
    os.dup2(fds[1], 2)
    for fd in fds:
        os.close(fd)
    for name, fd in (("stdout", 1), ("stderr", 2)):
        stream = _stdio(fd, getattr(sys, name))
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)  # as at a start: a console reads the originals
    os.environ.clear()
    os.environ.update(env)
    os.chdir(request["cwd"])
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    restore_blas(env)
    sys.argv = [argv0, *request["argv"]]


def _stdio(fd: int, was: Any) -> io.TextIOWrapper:
    """A standard stream on ``fd`` made as the interpreter makes it at start: the parent's were made for /dev/null,
    which can seek (a pipe cannot, and a stream keeps what it found: ``reconfigure`` would fail). The same encoding,
    error handler and buffering as the parent's, which started with its children's environment."""
    raw = io.FileIO(fd, "w", closefd=False)
    binary: Any = raw if was.write_through else io.BufferedWriter(raw)
    return io.TextIOWrapper(binary, encoding=was.encoding, errors=was.errors, line_buffering=was.line_buffering,
                            write_through=was.write_through)


def _cell(sock: socket.socket, request: Mapping[str, Any], fds: list[int], parent: Parent) -> int:
    """A cell's process, forked: made what a cold cell's process is, then the cell itself. Never returns."""
    code = 1
    try:
        populate(parent.pages)
        os.setsid()  # its own session, as a cold cell's: a Ctrl-C reaches the launcher, which asks the cell to stop
        if request.get("name"):
            _set_name(str(request["name"]))
        env = dict(request["env"])
        if env.get(TIE_ENV):
            # It dies with the warm parent, which dies with the launcher's process (a Ray worker).
            env[TIE_ENV] = str(os.getppid())
        start = json.loads(env.get(START_ENV) or "{}")
        start.update(warm=True, parent_pid=os.getppid(), parent_import_s=parent.import_s, deferred=list(DEFERRED),
                     knobs=sorted(THREAD_KNOBS))
        env[START_ENV] = json.dumps(start)
        become_child(sock, request, fds, env, sys.argv[0])
        from .cellproc import main

        code = main(list(request["argv"]))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def _set_name(name: str) -> None:
    """The process's name as ``top`` and ``ps -o comm`` show it (15 bytes at most): a warm cell's command line is
    its parent's, so its name is what tells the cells apart."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(15, ctypes.c_char_p(name.encode("utf-8")[:15]), 0, 0, 0)  # PR_SET_NAME


def restore_blas(env: Mapping[str, str]) -> None:
    """OpenBLAS's threads as a cold process would have them (the parent started it with one)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(limits=cold_blas_threads(env), user_api="blas")


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or not args[0].isdigit():
        sys.stderr.write("usage: the warm parent's FD (it is started by a matrix, not by hand)\n")
        return 2
    tie = os.environ.pop(TIE_ENV, None)
    if tie and tie.isdigit():
        tie_to_parent(signal.SIGKILL, int(tie))
        os.environ[TIE_ENV] = tie  # its cells' environment keeps it: they tie themselves to this process
    sock = socket.socket(fileno=int(args[0]))
    return serve(sock)
