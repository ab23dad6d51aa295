"""The kernel's exact RSS high-water mark, per phase.

A phase's sampled peak (10 Hz) can miss a spike between two samples; the kernel keeps the exact mark
(``VmHWM``). Writing ``5`` to ``/proc/self/clear_refs`` resets it to the current RSS, so a phase's own
peak is the mark read at its end after a reset at its start. The reset clears the whole process's mark
(and ``ru_maxrss`` with it), so the run's peak is kept here as a running maximum of every mark read
before each reset, starting with the one the process had when the run began.

Phases nest: a reset at an inner phase's start folds the mark so far into every phase still open, so an
outer phase's peak still covers what its inner phases reached. Where the kernel refuses the reset (not
Linux, an old kernel, a locked-down ``/proc``), no phase has an exact peak (None), and the run's peak is
the kernel's own, as before.
"""

from __future__ import annotations

MIB = 1024 * 1024


def read_hwm_mib() -> float | None:
    """This process's ``VmHWM`` in MiB; None where /proc cannot say."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024 / MIB  # the kernel writes kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def reset_hwm() -> bool:
    """Reset this process's high-water mark to its current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


class HighWater:
    """Exact RSS peaks of the open phases and of the whole run (see the module's docstring)."""

    def __init__(self) -> None:
        first = read_hwm_mib()
        self.whole: float | None = first  # the mark the process had reached when the run began
        self.allowed: bool | None = None  # None: no reset tried yet
        self._open: list[float] = []  # each open phase's running maximum, innermost last

    def _fold(self, mark: float | None) -> None:
        if mark is None:
            return
        self.whole = mark if self.whole is None else max(self.whole, mark)
        self._open = [max(m, mark) for m in self._open]

    def start_phase(self) -> None:
        if self.allowed is False:
            return
        self._fold(read_hwm_mib())
        self.allowed = reset_hwm()
        if self.allowed:
            after = read_hwm_mib()
            self._open.append(after if after is not None else 0.0)

    def end_phase(self) -> float | None:
        """The phase's exact peak in MiB (None: the kernel does not allow the reset)."""
        if not self.allowed or not self._open:
            return None
        mark = read_hwm_mib()
        own = self._open.pop()
        self._fold(mark)
        return own if mark is None else max(own, mark)

    def whole_peak(self) -> float | None:
        """The run's peak so far: every mark read before a reset, and the mark now."""
        self._fold(read_hwm_mib())
        return self.whole
