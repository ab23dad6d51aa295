"""Exit statuses of the command line, and the two ways a command's last words can go astray: a
message for a stderr that may be gone, and a stdout whose reader left."""

from __future__ import annotations

import os
import sys

# Exit status (docs/reliability.md): 0 done; 1 the run failed (its snapshot is saved and says why); 2 bad
# input, nothing was run; 3 a file could not be written (a full disk, a read-only folder), the message
# says where the run's snapshot went instead; 70 an internal error; 128 + N stopped by signal N (130
# Ctrl-C, 143 SIGTERM, 129 SIGHUP), the snapshot keeping what was measured.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INPUT = 2
EXIT_OUTPUT = 3
EXIT_INTERNAL = 70


def fail(message: str, status: int) -> int:
    """``message`` as the command's last line on stderr, and ``status``. The line is one line whatever it
    quotes: a control character, a newline among them, is shown escaped (text.one_line)."""
    if sys.stderr is None:  # started with stderr closed: the exit status alone says it
        return status
    from embprof.engine.text import one_line

    try:
        sys.stderr.write(one_line(message) + "\n")
        sys.stderr.flush()
    except OSError:  # no terminal left to say it on (SIGHUP): the exit status still says it
        pass
    return status


def stdout_gone() -> None:
    """The reader of stdout went away (`embprof show … | head -1`): it has what it wanted. Standard output
    is pointed at /dev/null, so that Python's last flush at exit does not complain about the pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, AttributeError, ValueError):
        pass


STDOUT = "standard output"


def stdout_error(exc: OSError) -> OSError:
    """A failed write to stdout as the error that says so: ``embprof show … > /dev/full`` names standard
    output, not an unnamed file, and the exit status is 3 (OutputError). Standard output is then pointed
    at /dev/null, so that what is left in its buffer does not fail again at exit."""
    from embprof.engine.errors import OutputError

    reason = (exc.strerror or exc.__class__.__name__).lower()
    stdout_gone()
    return OutputError(f"cannot write to {STDOUT} ({reason})", STDOUT)


def write_stdout(text: str) -> None:
    """``text`` on stdout, flushed: a reader gone away is BrokenPipeError, as ever; any other failure
    (a full disk behind ``>``) is an OutputError naming standard output."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise stdout_error(exc) from None
