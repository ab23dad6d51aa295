"""Typed converters for the command line's options: a bad value is refused while the command line is
parsed, in one sentence, before any engine module is imported or any model loaded.

Each converter states its bounds (``least`` and ``most``) and either returns a value inside them or
raises ``argparse.ArgumentTypeError`` with a phrase that starts with a verb ("must be …", "takes …");
the parser puts the option's name in front of it. The bounds of each option live in ``LIMITS``, and
the run plan (which is also read from files, where the command line never saw the values) refuses
the same values in the same words: ``embprof.engine.plan`` keeps the same numbers, and the tests hold
the two to each other.

Only argparse and ``embprof.engine.text`` (the standard library's ``re`` underneath) are imported here:
``embprof --help`` must stay cheap.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

# The wording's pieces, shared with engine.plan; engine.text imports only the standard library.
from embprof.engine.text import fmt_bound, shown


# -- the wording (engine.plan's checks say the same words, and the tests compare the two) ---------------------
def count_refusal(least: int, most: int, value: int | None, as_shown: str) -> str:
    """Why a count is refused, as a phrase to follow the option's name; ``value`` None: not a whole number."""
    if value is not None and value < least:
        return f"must be at least {least}, not {as_shown}"
    if value is not None and value > most:
        return f"must be at most {most}, not {as_shown}"
    return f"must be a whole number from {least} to {most}, not {as_shown}"


def number_refusal(least: float, most: float, unit: str, value: object) -> str:
    """Why a number is refused: a phrase to follow the option's name."""
    return f"must be a positive number between {fmt_bound(least)} and {fmt_bound(most)}{' ' + unit if unit else ''}, not {value}"


def empty_refusal(hint: str = "") -> str:
    return "cannot be empty" + (f": {hint}" if hint else "")


# -- converters ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Count:
    """A whole number from ``least`` to ``most``, both included."""

    least: int
    most: int

    def __call__(self, text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            # int() refuses "1e3", "nan", "" and digit strings too long to convert: all are "not a whole number".
            raise argparse.ArgumentTypeError(count_refusal(self.least, self.most, None, f"'{shown(text)}'")) from None
        if not self.least <= value <= self.most:
            raise argparse.ArgumentTypeError(count_refusal(self.least, self.most, value, shown(text.strip())))
        return value

    @property
    def range_text(self) -> str:
        return f"{self.least}–{self.most}"


@dataclass(frozen=True)
class Number:
    """A finite number from ``least`` to ``most``, both included, in ``unit``."""

    least: float
    most: float
    unit: str

    def __call__(self, text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        # NaN fails both comparisons; ±inf fails one of them, since both bounds are finite.
        if not self.least <= value <= self.most:
            raise argparse.ArgumentTypeError(number_refusal(self.least, self.most, self.unit, f"'{shown(text)}'"))
        return value

    @property
    def range_text(self) -> str:
        return f"{fmt_bound(self.least)}–{fmt_bound(self.most)}"


@dataclass(frozen=True)
class Text:
    """A string that must say something: an empty one (or only spaces) names no file, model or server."""

    hint: str = ""

    def __call__(self, text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(empty_refusal(self.hint))
        return text


@dataclass(frozen=True)
class DimList:
    """The matrix's --truncate-dim: a comma-separated list of ``full`` or whole numbers of dimensions.

    The items stay strings ("full", "256"): the matrix's own spec reads them, as it reads a file's."""

    least: int
    most: int

    def __call__(self, text: str) -> list[str]:
        items = [v.strip() for v in text.split(",") if v.strip()]
        if not items:
            raise argparse.ArgumentTypeError("takes full or whole numbers of dimensions, and has no values")
        for item in items:
            if item == "full":
                continue
            try:
                value = int(item)
            except ValueError:
                value = None
            if value is None or not self.least <= value <= self.most:
                raise argparse.ArgumentTypeError(
                    f"takes full or whole numbers from {self.least} to {self.most}, not '{shown(item)}'")
        return items


# -- the bounds of every numeric option ---------------------------------------------------------------------------
# Why each upper bound: far past any real use, and small enough that nothing later overflows (a socket
# timeout, a sleep until the next Poisson arrival, a list of requests or texts built in memory).
MAX_DIMENSIONS = 65_536  # the widest embedding models have a few thousand dimensions
MAX_BATCH = 65_536  # texts per forward pass or per request
MAX_PID = 2_147_483_647  # pid_t is a signed 32-bit number everywhere psutil runs
MAX_SECONDS = 86_400  # a day: per request, per sweep point
MAX_DURATION = 604_800  # a week of load
MAX_LOAD_WORKERS = 512  # the load workload's thread pool (engine.plan.MAX_LOAD_WORKERS)

SAMPLE_HZ = Number(1.0, 100.0, "Hz")
TIMEOUT = Number(0.001, MAX_SECONDS, "seconds")
MAX_ERRORS = Count(0, 1_000_000)
SERVER_PID = Count(1, MAX_PID)  # 0 would mean "this process group" to os.kill
TRUNCATE_DIM = Count(1, MAX_DIMENSIONS)
LOOPS = Count(1, 100_000)
CELL_LOOPS = Count(2, 100_000)  # a matrix cell needs two timed encodes for a spread
BATCH_SIZE = Count(1, MAX_BATCH)
WARMUPS = Count(0, 10_000)  # zero: no warm-up pass
REPEATS = Count(1, 100_000)
TARGET_CI = Number(0.01, 99.0, "percent")
BUDGET = Number(0.01, MAX_SECONDS, "seconds per point")
RAM_CEILING = Number(1.0, 16_777_216.0, "MiB")  # 16 TiB
REQUESTS = Count(1, 100_000_000)
DURATION = Number(0.01, MAX_DURATION, "seconds")
CONCURRENCY = Count(1, MAX_LOAD_WORKERS)
RATE = Number(0.001, 100_000.0, "requests per second")  # the least: one request in about 17 minutes
LOAD_BATCH = Count(1, MAX_BATCH)
LOAD_PROCESSES = Count(1, 64)
SLO_P99 = Number(0.01, 3_600_000.0, "milliseconds")
SLO_ERRORS = Number(0.0, 100.0, "percent")
STEP_DURATION = Number(0.5, 3600.0, "seconds")
TEXT_TOKENS = Count(1, 32_768)
TOP_K = Count(1, 10_000)
ENERGY_WINDOW = Number(0.001, 3_600.0, "seconds")
EPOCHS = Number(0.01, 10_000.0, "epochs")
MAX_STEPS = Count(1, 100_000_000)
MAX_EXAMPLES = Count(1, 100_000_000)
LEARNING_RATE = Number(1e-10, 1.0, "")
WARMUP = Number(0.0, 1.0, "(a share of the steps)")
SEED = Count(0, 2**32 - 1)
RAY_CPUS = Count(1, 1_024)  # CPUs a matrix cell asks a Ray cluster for
MATRIX_TRUNCATE_DIMS = DimList(1, MAX_DIMENSIONS)

# Every bounded option, by its name on the command line: the tests check each against the plan.
LIMITS: dict[str, Count | Number] = {
    "--sample-hz": SAMPLE_HZ,
    "--timeout": TIMEOUT,
    "--max-errors": MAX_ERRORS,
    "--server-pid": SERVER_PID,
    "--truncate-dim": TRUNCATE_DIM,
    "--loops": LOOPS,
    "--batch-size": BATCH_SIZE,
    "--warmups": WARMUPS,
    "--repeats": REPEATS,
    "--target-ci": TARGET_CI,
    "--budget": BUDGET,
    "--ram-ceiling": RAM_CEILING,
    "--requests": REQUESTS,
    "--duration": DURATION,
    "--concurrency": CONCURRENCY,
    "--rate": RATE,
    "--batch": LOAD_BATCH,
    "--load-processes": LOAD_PROCESSES,
    "--slo-p99": SLO_P99,
    "--slo-errors": SLO_ERRORS,
    "--step-duration": STEP_DURATION,
    "--text-tokens": TEXT_TOKENS,
    "--max-rate": RATE,
    "--top-k": TOP_K,
    "--energy-window": ENERGY_WINDOW,
    "--epochs": EPOCHS,
    "--max-steps": MAX_STEPS,
    "--max-examples": MAX_EXAMPLES,
    "--learning-rate": LEARNING_RATE,
    "--warmup": WARMUP,
    "--seed": SEED,
}

NON_EMPTY = Text()
MODEL = Text("leave the option out for the bundled model")  # the hint reads on: "--model cannot be empty: leave …"
