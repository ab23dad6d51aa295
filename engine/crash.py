"""The one rule for how a run or a cell ended badly: out of memory, killed by a signal, or exited.

The runner (an exception inside a run), the sweep (an exception at one point of an axis) and every
cell launcher (a process that ended without writing its snapshot) ask here, so "out of memory" and
"killed" mean the same thing in a snapshot, a crash record and on the screen."""

from __future__ import annotations

import signal
from dataclasses import dataclass

# Exception classes by name: torch, ONNX Runtime and OpenVINO raise their own, and importing them
# here to test isinstance would import those libraries into every run.
_OOM_CLASS_NAMES = frozenset({"OutOfMemoryError", "OutOfResources"})


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether an exception says the process or the device ran out of memory."""
    if isinstance(exc, MemoryError) or exc.__class__.__name__ in _OOM_CLASS_NAMES:
        return True
    # Older torch builds and some CUDA paths raise a plain RuntimeError("CUDA out of memory ...").
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


@dataclass(frozen=True)
class ProcessEnd:
    """Why a process that should have written its snapshot did not, in one sentence."""

    reason: str
    # SIGKILL is what the kernel's out-of-memory killer sends; nothing else on a quiet machine does.
    oom: bool


def process_end(returncode: int | None, stderr: str) -> ProcessEnd:
    """A cell process's end from its exit status (negative: the signal that ended it) and its stderr."""
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        killed = -returncode == signal.SIGKILL
        why = f"the cell's process was killed by {name}" + (" (the kernel's out-of-memory killer sends it)" if killed else "")
        return ProcessEnd(why, killed)
    lines = stderr.strip().splitlines()
    why = lines[-1].removeprefix("embprof: error: ") if lines else f"the cell's process exited with status {returncode}"
    return ProcessEnd(why, False)
