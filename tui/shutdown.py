"""Signals that end embprof: SIGINT, SIGTERM and SIGHUP all stop a run the same way.

A job scheduler stops work with SIGTERM, a closed terminal or ssh session sends SIGHUP, a user
presses Ctrl-C (SIGINT). Each raises ``Stopped`` (a KeyboardInterrupt, so every place that already
stops a run at the next batch boundary on Ctrl-C does the same for the others), the run's snapshot
keeps what was measured, and the exit status is 128 + the signal's number (130, 143, 129), as a
shell reports a process killed by it.

While a file is being saved the signal is held (``deferred``) and acted on once the save is done:
a save is never cut in half by a signal embprof can catch. (SIGKILL cannot be caught; files are
written to a temporary name and renamed, so it leaves the previous file whole.)
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)


class Stopped(KeyboardInterrupt):
    """A stop signal arrived; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_received: list[int] = []  # every stop signal, in order (a list: appended from the handler without a lock)
_deferring = 0


def _handler(signum: int, _frame: FrameType | None) -> None:
    _received.append(signum)
    if _deferring:  # the caller looks at received() once its save is done
        return
    raise Stopped(signum)


def install() -> None:
    """Take SIGINT, SIGTERM and SIGHUP; leave alone a signal the parent set to be ignored (``nohup``,
    a background job), as any well-behaved command does. A file-size limit (RLIMIT_FSIZE) makes a
    write fail with EFBIG, reported like a full disk, instead of killing the process with SIGXFSZ."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in SIGNALS:
        if signal.getsignal(sig) is signal.SIG_IGN:
            continue
        signal.signal(sig, _handler)
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


@contextmanager
def deferred() -> Iterator[None]:
    """Hold stop signals for the duration (a save); they are acted on by the caller afterwards (``received``)."""
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1


def on_event_loop(handler: Callable[[int], None]) -> None:
    """Hand the stop signals to the running asyncio loop (a Textual app's): ``handler(signum)`` then runs
    on the UI thread between messages, never as a KeyboardInterrupt thrown into a redraw. In the raw
    terminal ctrl+c is a key, so a SIGINT there comes from outside (`kill -INT`) and is a stop like the others.
    Nothing happens off the main thread (a test's app), where a loop cannot take signals."""
    import asyncio

    loop = asyncio.get_running_loop()
    for sig in SIGNALS:
        try:
            loop.add_signal_handler(sig, handler, int(sig))
        except (NotImplementedError, RuntimeError, ValueError):
            return


def received() -> int | None:
    """The last stop signal that arrived, or None."""
    return _received[-1] if _received else None


def name(signum: int | None) -> str:
    return signal.Signals(signum).name if signum is not None else "SIGINT"


def exit_status(signum: int | None) -> int:
    """128 + the signal's number, as a shell reports it; 130 (SIGINT) when none is known."""
    return 128 + (signum if signum is not None else int(signal.SIGINT))


def stop_point(workload: str, server: bool) -> str:
    """Where a stop takes effect, as the line that acknowledges it says: a training step is not cut; a
    request to a server under way is ended at once; a local encode finishes its batch."""
    if workload == "train":
        return "stopping at the end of the current training step"
    return "stopping now (the request under way is ended)" if server else "stopping at the next batch boundary"
