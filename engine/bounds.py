"""The bounds of every numeric setting of a run, and the one wording that refuses a value outside them.

One table: the run plan checks its fields against these (a plan also comes from files, where JSON's
NaN and Infinity and any size of number can appear), and the command line's converters
(``embprof.tui.options``) are built from the same objects, so an option and the plan field it fills
can never disagree. Only the standard library (through ``.text``) is imported: ``embprof --help``
reads this table and must stay cheap.

Why each upper bound: far past any real use, and small enough that nothing later overflows (a socket
timeout, a sleep until the next Poisson arrival, a list of requests or texts built in memory).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UserError
from .text import fmt_bound, shown


@dataclass(frozen=True)
class WholeRange:
    """A whole number from ``least`` to ``most``, both included."""

    least: int
    most: int

    @property
    def range_text(self) -> str:
        return f"{self.least}–{self.most}"


@dataclass(frozen=True)
class NumberRange:
    """A finite number from ``least`` to ``most``, both included, in ``unit``."""

    least: float
    most: float
    unit: str

    @property
    def range_text(self) -> str:
        return f"{fmt_bound(self.least)}–{fmt_bound(self.most)}"


MAX_DIMENSIONS = 65_536  # the widest embedding models have a few thousand dimensions
MAX_BATCH = 65_536  # texts per forward pass or per request
MAX_PID = 2_147_483_647  # pid_t is a signed 32-bit number everywhere psutil runs
MAX_SECONDS = 86_400.0  # a day: per request, per sweep point
MAX_DURATION = 604_800.0  # a week of load
MAX_LOAD_WORKERS = 512  # the load workload's connections

SAMPLE_HZ = NumberRange(1.0, 100.0, "Hz")
TIMEOUT_S = NumberRange(0.001, MAX_SECONDS, "seconds")
MAX_ERRORS = WholeRange(0, 1_000_000)
SERVER_PID = WholeRange(1, MAX_PID)  # 0 would mean "this process group" to os.kill
TRUNCATE_DIM = WholeRange(1, MAX_DIMENSIONS)
LOOPS = WholeRange(1, 100_000)
CELL_LOOPS = WholeRange(2, 100_000)  # a matrix cell needs two timed encodes for a spread
BATCH_SIZE = WholeRange(1, MAX_BATCH)
WARMUPS = WholeRange(0, 10_000)  # zero: no warm-up pass
REPEATS = WholeRange(1, 100_000)
MAX_REPEATS = WholeRange(1, 100_000)  # no option sets it; a plan file can
TARGET_CI = NumberRange(0.01, 99.0, "percent")
BUDGET_S = NumberRange(0.01, MAX_SECONDS, "seconds per point")
RAM_CEILING_MIB = NumberRange(1.0, 16_777_216.0, "MiB")  # 16 TiB
REQUESTS = WholeRange(1, 100_000_000)
DURATION_S = NumberRange(0.01, MAX_DURATION, "seconds")
CONCURRENCY = WholeRange(1, MAX_LOAD_WORKERS)
RATE = NumberRange(0.001, 100_000.0, "requests per second")  # the least: one request in about 17 minutes
LOAD_PROCESSES = WholeRange(1, 64)
SLO_P99_MS = NumberRange(0.01, 3_600_000.0, "milliseconds")
SLO_ERRORS = NumberRange(0.0, 100.0, "percent")
STEP_S = NumberRange(0.5, 3600.0, "seconds")
TEXT_TOKENS = WholeRange(1, 32_768)
TOP_K = WholeRange(1, 10_000)
ENERGY_WINDOW_S = NumberRange(0.001, 3_600.0, "seconds")
EPOCHS = NumberRange(0.01, 10_000.0, "epochs")
MAX_STEPS = WholeRange(1, 100_000_000)
MAX_EXAMPLES = WholeRange(1, 100_000_000)
LEARNING_RATE = NumberRange(1e-10, 1.0, "")
WARMUP_RATIO = NumberRange(0.0, 1.0, "(a share of the steps)")
SEED = WholeRange(0, 2**32 - 1)
RAY_CPUS = WholeRange(1, 1_024)  # CPUs a matrix cell asks a Ray cluster for
# A sweep axis's values: lines and tokens build texts in memory, threads and batch size a pool and a batch.
INT_AXIS_MOST = {"lines": 1_000_000, "batch": MAX_BATCH, "tokens": 1_048_576, "threads": 4_096, "truncate_dim": MAX_DIMENSIONS,
                 "max_seq_length": 1_048_576}


# -- the wording: a phrase that follows the option's name ("--loops must be …") -----------------------------
def count_refusal(bound: WholeRange, value: int | None, as_shown: str) -> str:
    """Why a count is refused; ``value`` None: not a whole number."""
    if value is not None and value < bound.least:
        return f"must be at least {bound.least}, not {as_shown}"
    if value is not None and value > bound.most:
        return f"must be at most {bound.most}, not {as_shown}"
    return f"must be a whole number from {bound.least} to {bound.most}, not {as_shown}"


def number_refusal(bound: NumberRange, as_shown: str) -> str:
    """Why a number is refused."""
    unit = f" {bound.unit}" if bound.unit else ""
    return f"must be a positive number between {fmt_bound(bound.least)} and {fmt_bound(bound.most)}{unit}, not {as_shown}"


def empty_refusal(hint: str = "") -> str:
    return "cannot be empty" + (f": {hint}" if hint else "")


def check_count(value: int | None, bound: WholeRange, option: str) -> None:
    """A whole-number setting inside its bounds, or the one sentence the command line would say."""
    if value is not None and not bound.least <= value <= bound.most:
        raise UserError(f"{option} {count_refusal(bound, value, shown(value))}")


def check_number(value: float | None, bound: NumberRange, option: str) -> None:
    """A finite number inside its bounds, or the one sentence the command line would say."""
    # NaN fails both comparisons; ±inf fails one, since both bounds are finite.
    if value is not None and not bound.least <= value <= bound.most:
        raise UserError(f"{option} {number_refusal(bound, shown(value))}")
