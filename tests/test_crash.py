"""The one rule for how a run or a cell ended badly (engine/crash.py)."""

from __future__ import annotations

import signal

import pytest

from embprof.engine.crash import is_out_of_memory, process_end


class OutOfMemoryError(RuntimeError):
    """Named as torch.cuda's is: the rule goes by the class's name, without importing torch."""


class OutOfResources(Exception):
    """Named as OpenVINO's / Triton's is."""


@pytest.mark.parametrize("exc, oom", [
    (MemoryError(), True),
    (OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
    (OutOfResources("out of resources"), True),
    (RuntimeError("CUDA error: out of memory"), True),
    (RuntimeError("shape mismatch"), False),
    (ValueError("out of memory"), False),  # only a RuntimeError is read by its words
])
def test_out_of_memory_is_said_the_same_everywhere(exc: BaseException, oom: bool) -> None:
    assert is_out_of_memory(exc) is oom


def test_a_process_killed_by_sigkill_is_the_out_of_memory_killers_doing() -> None:
    end = process_end(-signal.SIGKILL, "")
    assert end.oom and "killed by SIGKILL" in end.reason and "out-of-memory killer" in end.reason


def test_another_signal_is_named_and_is_not_out_of_memory() -> None:
    end = process_end(-signal.SIGTERM, "")
    assert not end.oom and end.reason == "the cell's process was killed by SIGTERM"


def test_an_exit_status_gives_the_last_line_of_stderr_without_its_prefix() -> None:
    end = process_end(2, "loading …\nembprof: error: model 'x' not found\n")
    assert not end.oom and end.reason == "model 'x' not found"
    assert process_end(1, "").reason == "the cell's process exited with status 1"
