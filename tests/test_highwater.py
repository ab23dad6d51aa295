"""Exact per-phase RSS peaks: the kernel's high-water mark, reset at each phase's start.

Each scenario runs in a fresh interpreter (the test process's own mark is whatever earlier tests left),
through the real RunContext and the real /proc files. The checks are against the kernel: a phase that
allocates and frees N MiB reads N MiB above its starting RSS, give or take page rounding and the
allocator's own pages; a later, smaller phase reads its own peak, not the earlier one's (which only a
reset can give); and the run's peak kept across the resets equals the kernel's mark (VmHWM) of the
same scenario run without any reset.
"""

from __future__ import annotations

import json
import subprocess
import sys

SCENARIO = r"""
import json, sys
from embprof.engine import highwater
from embprof.engine.context import RunContext
from embprof.engine.events import Clock, EventBus, PhaseEnded

if sys.argv[1] == "no-reset":
    highwater.reset_hwm = lambda: False

def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

N = 256
bus = EventBus(Clock())
ended = {}
bus.subscribe(lambda e: ended.__setitem__(e.name, e.rss_hwm_mib) if isinstance(e, PhaseEnded) else None)
ctx = RunContext(bus)
with ctx.phase("outer"):
    before_big = rss_mib()
    with ctx.phase("big"):
        block = b"\x01" * (N * 1024 * 1024)
        del block
    before_small = rss_mib()
    with ctx.phase("small"):
        block = b"\x01" * (16 * 1024 * 1024)
        del block
whole = ctx.highwater.whole_peak()
print(json.dumps({"ended": ended, "before_big": before_big, "before_small": before_small, "whole": whole,
                  "vmhwm": highwater.read_hwm_mib()}))
"""


def _scenario(mode: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", SCENARIO, mode], capture_output=True, text=True, check=True, timeout=120).stdout
    data: dict[str, object] = json.loads(out)
    return data


def test_a_phase_that_allocates_and_frees_n_mib_reads_n_mib_and_the_runs_peak_is_the_kernels() -> None:
    got = _scenario("reset")
    ended = got["ended"]
    assert isinstance(ended, dict)
    big_rise = ended["big"] - got["before_big"]  # type: ignore[operator]
    assert 256 - 1 <= big_rise <= 256 + 2, big_rise  # the block, give or take pages and the allocator's own
    # The smaller phase after it reads its own peak: without the reset it would read the big one's.
    small_rise = ended["small"] - got["before_small"]  # type: ignore[operator]
    assert 16 - 1 <= small_rise <= 16 + 2, small_rise
    # The outer phase covers what its inner phases reached, across their resets.
    assert ended["outer"] >= ended["big"]  # type: ignore[operator]
    # The run's peak is the kernel's: the same scenario with no reset, its VmHWM at the end (not ru_maxrss, which
    # counts the image the process replaced at exec: the test runner's, here).
    plain = _scenario("no-reset")
    assert plain["ended"] == {"big": None, "small": None, "outer": None}, "no reset, no exact phase peak"
    assert abs(got["whole"] - plain["vmhwm"]) <= 2.0, (got["whole"], plain["vmhwm"])  # type: ignore[operator]
    assert got["whole"] >= ended["big"]  # type: ignore[operator]
