"""Typed converters for the command line's options: a bad value is refused while the command line is
parsed, in one sentence, before any engine module is imported or any model loaded.

Each converter states its bounds (``least`` and ``most``) and either returns a value inside them or
raises ``argparse.ArgumentTypeError`` with a phrase that starts with a verb ("must be …", "takes …");
the parser puts the option's name in front of it. The bounds and the wording are the run plan's own
(``embprof.engine.bounds``): each converter holds the very bound object the plan checks its field
against, so a value the command line takes is one the plan takes. ``LIMITS`` lists every bounded
option by its name on the command line.

Only argparse and ``embprof.engine.bounds`` (the standard library underneath) are imported here:
``embprof --help`` must stay cheap.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

from embprof.engine import bounds as b
from embprof.engine.bounds import NumberRange, WholeRange, count_refusal, empty_refusal, number_refusal
from embprof.engine.text import shown


# -- converters ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Count:
    """A whole number inside ``bound``."""

    bound: WholeRange

    @property
    def least(self) -> int:
        return self.bound.least

    @property
    def most(self) -> int:
        return self.bound.most

    def __call__(self, text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            # int() refuses "1e3", "nan", "" and digit strings too long to convert: all are "not a whole number".
            raise argparse.ArgumentTypeError(count_refusal(self.bound, None, f"'{shown(text)}'")) from None
        if not self.least <= value <= self.most:
            raise argparse.ArgumentTypeError(count_refusal(self.bound, value, shown(text.strip())))
        return value

    @property
    def range_text(self) -> str:
        return self.bound.range_text


@dataclass(frozen=True)
class Number:
    """A finite number inside ``bound``, in its unit."""

    bound: NumberRange

    @property
    def least(self) -> float:
        return self.bound.least

    @property
    def most(self) -> float:
        return self.bound.most

    def __call__(self, text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        # NaN fails both comparisons; ±inf fails one of them, since both bounds are finite.
        if not self.least <= value <= self.most:
            raise argparse.ArgumentTypeError(number_refusal(self.bound, f"'{shown(text)}'"))
        return value

    @property
    def range_text(self) -> str:
        return self.bound.range_text


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


def converter(bound: WholeRange | NumberRange) -> Count | Number:
    """The converter of an option bounded by ``bound`` (the run options' table, engine.fields, holds the bounds)."""
    return Count(bound) if isinstance(bound, WholeRange) else Number(bound)


# -- every numeric option, built from the plan's bounds --------------------------------------------------------
SAMPLE_HZ = Number(b.SAMPLE_HZ)
TIMEOUT = Number(b.TIMEOUT_S)
MAX_ERRORS = Count(b.MAX_ERRORS)
SERVER_PID = Count(b.SERVER_PID)
TRUNCATE_DIM = Count(b.TRUNCATE_DIM)
LOOPS = Count(b.LOOPS)
CELL_LOOPS = Count(b.CELL_LOOPS)
BATCH_SIZE = Count(b.BATCH_SIZE)
WARMUPS = Count(b.WARMUPS)
REPEATS = Count(b.REPEATS)
TARGET_CI = Number(b.TARGET_CI)
BUDGET = Number(b.BUDGET_S)
RAM_CEILING = Number(b.RAM_CEILING_MIB)
REQUESTS = Count(b.REQUESTS)
DURATION = Number(b.DURATION_S)
CONCURRENCY = Count(b.CONCURRENCY)
RATE = Number(b.RATE)
LOAD_BATCH = Count(b.BATCH_SIZE)
LOAD_PROCESSES = Count(b.LOAD_PROCESSES)
SLO_P99 = Number(b.SLO_P99_MS)
SLO_ERRORS = Number(b.SLO_ERRORS)
STEP_DURATION = Number(b.STEP_S)
TEXT_TOKENS = Count(b.TEXT_TOKENS)
TOP_K = Count(b.TOP_K)
ENERGY_WINDOW = Number(b.ENERGY_WINDOW_S)
EPOCHS = Number(b.EPOCHS)
MAX_STEPS = Count(b.MAX_STEPS)
MAX_EXAMPLES = Count(b.MAX_EXAMPLES)
LEARNING_RATE = Number(b.LEARNING_RATE)
WARMUP = Number(b.WARMUP_RATIO)
SEED = Count(b.SEED)
RAY_CPUS = Count(b.RAY_CPUS)
MATRIX_TRUNCATE_DIMS = DimList(b.TRUNCATE_DIM.least, b.TRUNCATE_DIM.most)

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
