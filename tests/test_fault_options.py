"""Hostile option values: NaN, infinities, negatives, zero, huge numbers, non-numbers, empty strings and
names that are no model. Each is refused in one line on stderr (``embprof: error: …``), exit 2, never a
traceback; the run plan, which is also read from files, refuses the same values in the same words."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cli_helpers import ChildRun, run_cli
from embprof.engine.errors import UserError
from embprof.engine.plan import CellPlan, load_plan, plan_from_options
from embprof.tui import options as o
from embprof.tui.parser import build_parser

# The faults this file tries, by kind, and the tests that try each (tests/test_reliability_doc.py counts them for
# docs/reliability.md): ``*`` any text, ``{}`` one kind for each text it stands for in the tests' names.
FAULT_KINDS = {
    "{}": ("test_every_numeric_option_refuses_hostile_values[{}: *]", "test_argparse_errors_are_one_line[{}]"),
    "NaN": "test_the_console_script_says_one_line_and_exits_2[NaN]",
    "huge": "test_the_console_script_says_one_line_and_exits_2[huge]",
    "infinity": "test_the_console_script_says_one_line_and_exits_2[infinity]",
    "below its least": "test_the_console_script_says_one_line_and_exits_2[below its least*]",
    "a value at its stated bounds": "test_every_numeric_option_takes_its_stated_bounds",
    "an empty text option": ("test_an_empty_string_is_refused[empty-*]", "test_the_console_script_says_one_line_and_exits_2[an empty text option]"),
    "a blank text option": "test_an_empty_string_is_refused[blank-*]",
    "an empty file argument": "test_an_empty_file_argument_is_refused",
    "an empty --prompt, which means no prompt": "test_an_empty_raw_prompt_is_kept",
    "a plan holding the values the command line refuses": "test_the_plan_refuses_the_same_values_in_the_same_words",
    "a plan file holding them": "test_a_plan_file_meets_the_same_checks",
    "a plan file holding the JSON literal {}": "test_a_plan_file_with_json_nan_or_infinity_is_refused[{}]",
    "an escape in a plan field's name": "test_a_plan_fields_name_from_a_file_is_escaped",
    "each option type given any text": ("test_a_converter_returns_a_value_inside_its_bounds_or_refuses",
                                        "test_the_parser_takes_or_refuses_any_timeout_in_one_line"),
    "model name: {}": "test_a_name_that_is_no_model_is_one_sentence[{}]",
    "model name: a space": "test_the_console_script_says_one_line_and_exits_2[model name: a space]",
    "model name: a terminal escape": "test_the_console_script_says_one_line_and_exits_2[model name: a terminal escape]",
    "model name: 200 characters": "test_the_console_script_says_one_line_and_exits_2[model name: 200 characters]",
    "an unknown prompt name": "test_prompt_names_checked_before_loading_agree_with_embprof_prompts",
    "--truncate-dim wider than the model": "test_a_truncate_dim_wider_than_the_model_is_refused_once_it_loads",
}
# Tests of this file that check what is right rather than a fault.
NOT_FAULTS = ("test_help_is_unchanged_in_form", "test_every_bounded_option_has_a_plan_check",
              "test_the_command_line_takes_its_bounds_from_the_plans_table", "test_the_converters_are_all_found")

# Derandomized, so the same examples run every time: a failure is never a matter of luck; no example database is kept.
PROPERTY = settings(max_examples=300, deadline=None, derandomize=True, database=None)
SERVER = "http://127.0.0.1:9"

# (the command's words before the option, the option, its converter): every bounded option of every command.
NUMERIC: list[tuple[tuple[str, ...], str, o.Count | o.Number]] = [
    *[(cmd, opt, conv) for cmd in (("run", "encode"), ("run", "speed"), ("run", "similarity"), ("run", "sweep"), ("run", "load"),
                                   ("mteb",), ("prompts",), ("train",))
      for opt, conv in (("--timeout", o.TIMEOUT), ("--max-errors", o.MAX_ERRORS), ("--server-pid", o.SERVER_PID),
                        ("--truncate-dim", o.TRUNCATE_DIM))],
    *[(cmd, "--sample-hz", o.SAMPLE_HZ) for cmd in (("run", "encode"), ("run", "speed"), ("run", "similarity"), ("run", "sweep"),
                                                    ("run", "load"), ("mteb",), ("matrix",), ("train",), ())],
    (("run", "encode"), "--batch-size", o.BATCH_SIZE),
    (("run", "encode"), "--warmups", o.WARMUPS),
    (("run", "encode"), "--repeats", o.REPEATS),
    (("run", "speed"), "--loops", o.LOOPS),
    (("run", "speed"), "--batch-size", o.BATCH_SIZE),
    (("run", "sweep"), "--batch-size", o.BATCH_SIZE),
    (("run", "sweep"), "--target-ci", o.TARGET_CI),
    (("run", "sweep"), "--budget", o.BUDGET),
    (("run", "sweep"), "--ram-ceiling", o.RAM_CEILING),
    (("run", "load"), "--requests", o.REQUESTS),
    (("run", "load"), "--duration", o.DURATION),
    (("run", "load"), "--concurrency", o.CONCURRENCY),
    (("run", "load"), "--rate", o.RATE),
    (("run", "load"), "--batch", o.LOAD_BATCH),
    (("run", "load"), "--load-processes", o.LOAD_PROCESSES),
    (("run", "load"), "--slo-p99", o.SLO_P99),
    (("run", "load"), "--slo-errors", o.SLO_ERRORS),
    (("run", "load"), "--step-duration", o.STEP_DURATION),
    (("run", "load"), "--max-rate", o.RATE),
    (("run", "load"), "--text-tokens", o.TEXT_TOKENS),
    (("mteb",), "--batch-size", o.BATCH_SIZE),
    (("mteb",), "--loops", o.LOOPS),
    (("matrix",), "--loops", o.CELL_LOOPS),
    (("matrix",), "--batch-size", o.BATCH_SIZE),
    (("matrix",), "--top-k", o.TOP_K),
    (("matrix",), "--energy-window", o.ENERGY_WINDOW),
    (("matrix",), "--ray-cpus", o.RAY_CPUS),
    (("train",), "--epochs", o.EPOCHS),
    (("train",), "--max-steps", o.MAX_STEPS),
    (("train",), "--max-examples", o.MAX_EXAMPLES),
    (("train",), "--learning-rate", o.LEARNING_RATE),
    (("train",), "--warmup", o.WARMUP),
    (("train",), "--seed", o.SEED),
    (("train",), "--batch-size", o.BATCH_SIZE),
    (("train",), "--eval-batch-size", o.BATCH_SIZE),
    (("train",), "--top-k", o.TOP_K),
    ((), "--repeats", o.REPEATS),  # the dashboard's own
    ((), "--loops", o.LOOPS),
]


def bad_values(conv: o.Count | o.Number) -> dict[str, str]:
    """What each option must refuse (not numbers, not finite, out of its bounds on either side), each value with the
    kind of fault it is. A value two kinds would give (the least less one is -1 or 0 where the least is 0 or 1) is
    tried once, under the first."""
    values: dict[str, str] = {}

    def add(kind: str, *texts: str) -> None:
        for text in texts:
            values.setdefault(text, kind)

    add("NaN", "nan", "NaN")
    add("infinity", "inf", "Infinity")
    add("negative infinity", "-inf")
    add("not a number", "abc", "0x10", "1,5")
    add("an empty number", "")
    add("a blank number", " ")
    add("a terminal escape for a number", "\x1b[2J")
    if isinstance(conv, o.Count):
        add("a fraction", "1.5")
        add("an exponent", "1e3")
        add("below its least", str(conv.least - 1))
        add("above its most", str(conv.most + 1))
        add("negative", "-1")
        add("30 digits", "9" * 30)
        add("5,000 digits", "9" * 5000)
        if conv.least > 0:
            add("zero", "0")
    else:
        add("negative", "-1")
        add("huge", "1e300")
        add("hugely negative", "-1e300")
        add("above its most", repr(conv.most * 10))
        if conv.least > 0:  # below the least, where nought is not allowed
            add("below its least", "1e-300")
            add("zero", "0")
            add("negative zero", "-0.0")
    return values


def numeric_cases() -> Iterator[Any]:
    for cmd, opt, conv in NUMERIC:
        for value, kind in bad_values(conv).items():
            yield pytest.param(cmd, opt, value, id=f"{kind}: {' '.join(cmd) or 'dashboard'} {opt}={value[:12]!r}")


def refusal(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one line the parser says for ``argv``, checked for its form; returns the text after the prefix."""
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("embprof: error: "), err
    assert "Traceback" not in err and "usage:" not in err
    assert "\x1b" not in err  # outside text is escaped, never sent to the terminal raw
    return lines[0].removeprefix("embprof: error: ")


@pytest.mark.parametrize("cmd, opt, value", numeric_cases())
def test_every_numeric_option_refuses_hostile_values(cmd: tuple[str, ...], opt: str, value: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    said = refusal([*cmd, f"{opt}={value}"], capsys)
    assert said.startswith(f"{opt} must be "), said
    assert said.endswith(f"(see {' '.join(['embprof', *cmd])} --help)"), said
    assert len(said) < 250, "a refused value is echoed cut short, not whole"


REQUIRED = {("train",): ["--train-file", "t.jsonl"]}  # what a command cannot parse without


@pytest.mark.parametrize("cmd, opt, conv", [pytest.param(c, opt, conv, id=f"{' '.join(c) or 'dashboard'} {opt}") for c, opt, conv in NUMERIC])
def test_every_numeric_option_takes_its_stated_bounds(cmd: tuple[str, ...], opt: str, conv: o.Count | o.Number) -> None:
    parser = build_parser()
    dest = opt.lstrip("-").replace("-", "_")
    for bound in (conv.least, conv.most):
        text = str(bound) if isinstance(conv, o.Count) else repr(float(bound))
        args = parser.parse_args([*cmd, *REQUIRED.get(cmd, []), f"{opt}={text}"])
        assert getattr(args, dest.replace("lr", "learning_rate") if dest == "lr" else dest) == bound
    # The help says the bounds, so a refusal is never a surprise.
    assert conv.range_text in help_of([*cmd]).replace("\n", " "), opt


def help_of(cmd: list[str]) -> str:
    """What ``embprof CMD --help`` prints."""
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown), pytest.raises(SystemExit) as done:
        build_parser().parse_args([*cmd, "--help"])
    assert done.value.code == 0
    return shown.getvalue()


EMPTY: list[tuple[tuple[str, ...], str]] = [
    *[(("run", "encode"), opt) for opt in ("--model", "--device", "--server", "--api-key-env", "--server-model", "--prompts-from",
                                           "--input", "--prompt-name", "--vs", "--compare-model", "--profiles-dir")],
    *[(("run", "similarity"), opt) for opt in ("--query", "--docs", "--prompt-name", "--query-prompt-name", "--doc-prompt-name")],
    (("run", "speed"), "--text"),
    (("run", "speed"), "--vs"),
    (("run", "sweep"), "--axis"),
    (("run", "sweep"), "--input"),
    (("run", "load"), "--input"),
    (("run", "load"), "--records"),
    (("run", "load"), "--mix"),
    (("run",), "--plan"),
    (("run",), "--profiles-dir"),
    (("mteb",), "--data-dir"),
    (("mteb",), "--results-dir"),
    (("mteb",), "--text"),
    (("mteb",), "--task"),
    (("prompts",), "--model"),
    (("list",), "--profiles-dir"),
    (("rerun", "x.json"), "--profiles-dir"),
    (("export", "x.json"), "--output"),
    (("export", "x.json"), "--table"),
    (("compare", "a.json", "b.json"), "--output"),
    *[(("matrix",), opt) for opt in ("--spec", "--model", "--server", "--server-of", "--server-name", "--cost-workload", "--text",
                                     "--data-dir", "--task", "--cell", "--out", "--ray")],
    *[((), opt) for opt in ("--model", "--device", "--workload", "--task", "--server", "--data-dir", "--input", "--text",
                            "--profiles-dir", "--plan")],
    *[(("train",), opt) for opt in ("--model", "--train-file", "--prompt-name", "--output", "--task", "--data-dir", "--results-dir",
                                    "--neighbours", "--profiles-dir")],
]


@pytest.mark.parametrize("cmd, opt", [pytest.param(c, opt, id=f"{' '.join(c) or 'dashboard'} {opt}") for c, opt in EMPTY])
@pytest.mark.parametrize("value", ["", "   "], ids=["empty", "blank"])
def test_an_empty_string_is_refused(cmd: tuple[str, ...], opt: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    said = refusal([*cmd, f"{opt}={value}"], capsys)
    assert said.startswith(f"{opt} cannot be empty"), said


@pytest.mark.parametrize("argv", [["show", ""], ["export", ""], ["rerun", ""], ["compare", "a.json", ""]])
def test_an_empty_file_argument_is_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    said = refusal(argv, capsys)
    assert "cannot be empty" in said, said


def test_an_empty_raw_prompt_is_kept() -> None:
    # --prompt "" is meaningful: no prompt at all, not even the model's default for --as query.
    args = build_parser().parse_args(["run", "encode", "--as", "query", "--prompt="])
    assert args.prompt == ""
    plan = plan_from_options(vars(args))
    assert plan.workload.prompt == ""  # type: ignore[union-attr]


@pytest.mark.parametrize("argv, says", [
    pytest.param(["run", "sprint"], "WORKLOAD: invalid choice: 'sprint'", id="an unknown workload"),
    pytest.param(["run", "encode", "--bogus"], "unrecognized arguments: --bogus", id="an unknown option"),
    pytest.param(["run", "encode", "--timeout"], "--timeout: expected one argument", id="an option without its value"),
    pytest.param(["run", "encode", "--dtype", "int3"], "--dtype: invalid choice: 'int3'", id="a choice that is none of them"),
    pytest.param(["\x1b[2J"], "invalid choice: '\\x1b[2J'", id="a terminal escape for a command"),
    pytest.param(["run", "encode", "\x1b]0;pwned\x07"], "unrecognized arguments: \\x1b]0;pwned\\x07", id="a terminal escape for an argument"),
    pytest.param(["matrix", "--truncate-dim", "full,abc"], "--truncate-dim takes full or whole numbers from 1 to 65536, not 'abc'",
                 id="a list of widths holding a word"),
    pytest.param(["matrix", "--truncate-dim", "full,0"], "--truncate-dim takes full or whole numbers", id="a list of widths holding zero"),
    pytest.param(["matrix", "--truncate-dim", ","], "--truncate-dim takes full or whole numbers of dimensions, and has no values",
                 id="a list of widths holding none"),
])
def test_argparse_errors_are_one_line(argv: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    said = refusal(argv, capsys)
    assert says in said, said
    assert said.endswith("--help)")


def test_help_is_unchanged_in_form(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["run", "load", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: embprof run load") and "--rate R" in out and "examples:" in out


# -- the plan says the same ------------------------------------------------------------------------------------
def _train_plan(key: str) -> Any:
    return lambda v: plan_from_options({"workload": "train", "train_file": "t.jsonl", key: v})



# How a plan gets each option's value, so a file (or the dashboard's form) meets the same check as the command line.
PLAN_OF: dict[str, Any] = {
    "--timeout": lambda v: plan_from_options({"server": SERVER, "timeout": v}),
    "--max-errors": lambda v: plan_from_options({"server": SERVER, "max_errors": v}),
    "--server-pid": lambda v: plan_from_options({"server": SERVER, "server_pid": v}),
    "--truncate-dim": lambda v: plan_from_options({"truncate_dim": v}),
    "--loops": lambda v: plan_from_options({"workload": "speed", "loops": v}),
    "--batch-size": lambda v: plan_from_options({"batch_size": v}),
    "--warmups": lambda v: plan_from_options({"warmups": v}),
    "--repeats": lambda v: plan_from_options({"repeats": v}),
    "--target-ci": lambda v: plan_from_options({"workload": "sweep", "axis": ["lines=8"], "target_ci": v}),
    "--budget": lambda v: plan_from_options({"workload": "sweep", "axis": ["lines=8"], "budget": v}),
    "--ram-ceiling": lambda v: plan_from_options({"workload": "sweep", "axis": ["batch=8"], "until_oom": True, "ram_ceiling": v}),
    "--requests": lambda v: plan_from_options({"workload": "load", "server": SERVER, "requests": v}),
    "--duration": lambda v: plan_from_options({"workload": "load", "server": SERVER, "duration": v}),
    "--concurrency": lambda v: plan_from_options({"workload": "load", "server": SERVER, "concurrency": v}),
    "--rate": lambda v: plan_from_options({"workload": "load", "server": SERVER, "rate": v}),
    "--batch": lambda v: plan_from_options({"workload": "load", "server": SERVER, "batch": v}),
    "--load-processes": lambda v: plan_from_options({"workload": "load", "server": SERVER, "load_processes": v}),
    "--slo-p99": lambda v: plan_from_options({"workload": "load", "server": SERVER, "find_knee": True, "slo_p99": v}),
    "--slo-errors": lambda v: plan_from_options({"workload": "load", "server": SERVER, "find_knee": True, "slo_errors": v}),
    "--step-duration": lambda v: plan_from_options({"workload": "load", "server": SERVER, "find_knee": True, "step_duration": v}),
    "--max-rate": lambda v: plan_from_options({"workload": "load", "server": SERVER, "find_knee": True, "max_rate": v}),
    "--text-tokens": lambda v: plan_from_options({"workload": "load", "server": SERVER, "text_tokens": v}),
    "--top-k": lambda v: CellPlan(top_k=v),
    "--energy-window": lambda v: CellPlan(energy_min_window_s=v),
    "--sample-hz": lambda v: plan_from_options({"sample_hz": v}),
    **{opt: _train_plan(key) for opt, key in (("--epochs", "epochs"), ("--max-steps", "max_steps"), ("--max-examples", "max_examples"),
                                              ("--learning-rate", "learning_rate"), ("--warmup", "warmup"), ("--seed", "seed"))},
}
# The command whose parse-time converter each plan check above mirrors.
PARSED_IN = {**{opt: ("run", "encode") for opt in PLAN_OF},
             "--loops": ("run", "speed"), "--top-k": ("matrix",), "--energy-window": ("matrix",),
             **{opt: ("train",) for opt in ("--epochs", "--max-steps", "--max-examples", "--learning-rate", "--warmup", "--seed")},
             **{opt: ("run", "sweep") for opt in ("--target-ci", "--budget", "--ram-ceiling")},
             **{opt: ("run", "load") for opt in ("--requests", "--duration", "--concurrency", "--rate", "--batch", "--load-processes",
                                                      "--slo-p99", "--slo-errors", "--step-duration", "--max-rate", "--text-tokens")}}


def test_every_bounded_option_has_a_plan_check() -> None:
    assert set(PLAN_OF) == set(o.LIMITS)


def _plan_values(conv: o.Count | o.Number) -> list[Any]:
    if isinstance(conv, o.Count):
        return [conv.least - 1, conv.most + 1, -1]
    return [math.nan, math.inf, -math.inf, -1.0, conv.most * 10, 1e300] + ([0.0] if conv.least > 0 else [])


def _wording(sentence: str) -> str:
    """What is said, without the value it is said of (the parser shows the text typed, the plan the number)."""
    return sentence.split(", not ", 1)[0]


@pytest.mark.parametrize("opt", sorted(o.LIMITS))
def test_the_plan_refuses_the_same_values_in_the_same_words(opt: str, capsys: pytest.CaptureFixture[str]) -> None:
    conv, cmd = o.LIMITS[opt], PARSED_IN[opt]
    for value in _plan_values(conv):
        with pytest.raises(UserError) as info:
            PLAN_OF[opt](value)
        planned = str(info.value)
        assert "\n" not in planned
        text = str(value) if isinstance(value, int) else repr(value)
        said = refusal([*cmd, f"{opt}={text}"], capsys).rsplit(" (see ", 1)[0]
        assert _wording(planned) == _wording(said), (planned, said)
    for bound in (conv.least, conv.most):  # and takes what the command line takes
        PLAN_OF[opt](bound)


def test_the_command_line_takes_its_bounds_from_the_plans_table() -> None:
    """One table: every bounded option's converter holds a bound object of engine.bounds, the one the
    plan checks its field against (identity, not equal numbers kept in step by hand)."""
    from embprof.engine import bounds

    table = [v for v in vars(bounds).values() if isinstance(v, (bounds.WholeRange, bounds.NumberRange))]
    for opt, conv in o.LIMITS.items():
        assert any(conv.bound is t for t in table), opt
    pairs = [(o.TIMEOUT, bounds.TIMEOUT_S), (o.BATCH_SIZE, bounds.BATCH_SIZE), (o.LOAD_BATCH, bounds.BATCH_SIZE),
             (o.CONCURRENCY, bounds.CONCURRENCY), (o.SAMPLE_HZ, bounds.SAMPLE_HZ), (o.CELL_LOOPS, bounds.CELL_LOOPS)]
    for conv, bound in pairs:
        assert conv.bound is bound, conv
    assert (o.MATRIX_TRUNCATE_DIMS.least, o.MATRIX_TRUNCATE_DIMS.most) == (bounds.TRUNCATE_DIM.least, bounds.TRUNCATE_DIM.most)


@pytest.mark.parametrize("workload, says", [
    ({"name": "sweep", "axes": {"lines": [8]}, "budget_s": 1e300}, "--budget must be a positive number between"),
    ({"name": "encode", "batch_size": 10**30}, "--batch-size must be at most 65536"),
    ({"name": "encode", "repeats": -1}, "--repeats must be at least 1"),
    ({"name": "encode", "input": ""}, "--input cannot be empty"),
    ({"name": "sweep", "axes": {"lines": [10**12]}}, "axis 'lines' takes numbers of at most"),
    ({"name": "load", "requests": 10, "rate": 1e-300}, "--rate must be a positive number between"),
])
def test_a_plan_file_meets_the_same_checks(tmp_path: Path, workload: dict[str, Any], says: str) -> None:
    target = {"kind": "server", "url": SERVER} if workload["name"] == "load" else {"kind": "local"}
    f = tmp_path / "plan.json"
    f.write_text(json.dumps({"target": target, "workload": workload}))
    with pytest.raises(UserError) as info:
        load_plan(str(f))
    assert says in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_a_plan_file_with_json_nan_or_infinity_is_refused(tmp_path: Path, literal: str) -> None:
    # Python's json reads these non-standard literals; whoever reads the file, the plan must not run with them.
    f = tmp_path / "plan.json"
    f.write_text('{"target": {"kind": "server", "url": "%s", "timeout_s": %s}}' % (SERVER, literal))
    with pytest.raises(UserError) as info:
        load_plan(str(f))
    assert "\n" not in str(info.value)


def test_a_plan_fields_name_from_a_file_is_escaped(tmp_path: Path) -> None:
    f = tmp_path / "plan.json"
    f.write_text(json.dumps({"workload": {"name": "encode", "\x1b[2J": 1}}))
    with pytest.raises(UserError) as info:
        load_plan(str(f))
    assert "\x1b" not in str(info.value) and "\\x1b[2J" in str(info.value)


# -- the converters, for any text at all ---------------------------------------------------------------------------
CONVERTERS = {name: value for name, value in vars(o).items() if isinstance(value, (o.Count, o.Number, o.Text, o.DimList))}

# Text that is nearly a number finds the edges that arbitrary text rarely does.
NUMBERISH = st.one_of(
    st.text(),
    st.integers().map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.from_regex(r"\A[ +\-]?[0-9_]{0,30}(\.[0-9]*)?([eE][+\-]?[0-9]{1,4})?\s?\Z"),
    st.sampled_from(["nan", "-nan", "inf", "+inf", "infinity", "1e309", "-0", "٣", "１２", "0x1p3", "1_000", "full", "full,8"]),
)


def test_the_converters_are_all_found() -> None:
    assert {"TIMEOUT", "SAMPLE_HZ", "BATCH_SIZE", "NON_EMPTY", "MODEL", "MATRIX_TRUNCATE_DIMS"} <= set(CONVERTERS)


@pytest.mark.parametrize("name", sorted(CONVERTERS))
def test_a_converter_returns_a_value_inside_its_bounds_or_refuses(name: str) -> None:
    conv = CONVERTERS[name]

    @PROPERTY
    @given(NUMBERISH)
    def check(text: str) -> None:
        try:
            value = conv(text)
        except argparse.ArgumentTypeError as exc:
            message = str(exc)
            assert message and "\n" not in message and "\x1b" not in message
            assert message.startswith(("must ", "takes ", "cannot ")), message
            assert len(message) < 200
            return
        if isinstance(conv, o.Count):
            assert isinstance(value, int) and conv.least <= value <= conv.most
        elif isinstance(conv, o.Number):
            assert isinstance(value, float) and math.isfinite(value) and conv.least <= value <= conv.most
        elif isinstance(conv, o.Text):
            assert value == text and text.strip()
        else:
            assert value and all(v == "full" or conv.least <= int(v) <= conv.most for v in value)

    check()


@PROPERTY
@given(NUMBERISH)
def test_the_parser_takes_or_refuses_any_timeout_in_one_line(text: str) -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            args = build_parser().parse_args(["run", "load", f"--timeout={text}"])
        except SystemExit as exc:
            assert exc.code == 2
            lines = err.getvalue().splitlines()
            assert len(lines) == 1 and lines[0].startswith("embprof: error: --timeout ")
            return
    assert math.isfinite(args.timeout) and o.TIMEOUT.least <= args.timeout <= o.TIMEOUT.most


# -- model names, prompts and the model's width ------------------------------------------------------------------------
BAD_MODEL_NAMES = {"a space": "a b", "a terminal escape": "\x1b[2Jx", "two dots": "a..b", "two dashes": "a--b", "200 characters": "a" * 200,
                   "a space after its owner": "org/a b", "a leading dash": "-lead", "a trailing dot": "trail.", "an owner alone": "org/",
                   "a tab": "x\ty", "letters outside ASCII": "日本語", "a .git suffix": "a.git", "NUL": "x\x00y", "300 characters": "a" * 300,
                   "a line separator": "a\u2028b", "a user's home that does not exist": "~no-such-user-here/model",
                   "a folder that does not exist": "./no/such/folder"}


@pytest.mark.parametrize("name", list(BAD_MODEL_NAMES.values()), ids=list(BAD_MODEL_NAMES))
def test_a_name_that_is_no_model_is_one_sentence(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from embprof.engine.plan import LocalTarget
    from embprof.engine.targets import SentenceTransformerTarget

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as info:
        SentenceTransformerTarget(LocalTarget(model=name)).resolve()
    said = str(info.value)
    assert len(said.splitlines()) == 1 and "\x1b" not in said and "\x00" not in said and "\t" not in said
    assert "neither a folder here nor a Hugging Face Hub id" in said or "does not exist" in said, said


def test_prompt_names_checked_before_loading_agree_with_embprof_prompts() -> None:
    from embprof.engine import execute
    from embprof.engine.targets import prompts_added_at_load

    added = prompts_added_at_load()
    for name in added:  # sentence-transformers gives the bundled model these as it loads; `embprof prompts` lists them
        execute.prepare(plan_from_options({"prompt_name": name}))
    with pytest.raises(UserError) as info:
        execute.prepare(plan_from_options({"prompt_name": "nope"}))
    said = str(info.value)
    assert said.startswith("unknown prompt name 'nope': this model's prompts are ")
    assert said.endswith(", ".join(sorted(added)) if added else "none (see embprof prompts)"), said


def assert_one_line_refusal(run: ChildRun, *says: str) -> None:
    assert run.rc == 2, (run.rc, run.err)
    lines = [line for line in run.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("embprof: error: "), run.err
    assert "Traceback" not in run.err and "\x1b" not in run.err
    for s in says:
        assert s in lines[0], lines[0]


# Each case's id is the kind of fault it is, as the tests above name it: the same faults through the installed command.
@pytest.mark.parametrize("args, says", [
    pytest.param(["run", "load", "--server", SERVER, "--timeout=nan"], ["--timeout must be a positive number", "(see embprof run load --help)"],
                 id="NaN"),
    pytest.param(["run", "load", "--server", SERVER, "--timeout=1e300"], ["--timeout must be a positive number between 0.001 and 86400"],
                 id="huge"),
    pytest.param(["matrix", "--top-k=-1"], ["--top-k must be at least 1, not -1"], id="below its least: --top-k"),
    pytest.param(["--repeats=inf"], ["--repeats must be a whole number", "(see embprof --help)"], id="infinity"),
    pytest.param(["run", "encode", "--model="], ["--model cannot be empty"], id="an empty text option"),
    pytest.param(["run", "encode", "--truncate-dim=0"], ["--truncate-dim must be at least 1, not 0"], id="below its least: --truncate-dim"),
    pytest.param(["run", "encode", "--model", "a b"], ["model 'a b' is neither a folder here nor a Hugging Face Hub id"],
                 id="model name: a space"),
    pytest.param(["run", "encode", "--model", "\x1b[2Jx"], ["model '\\x1b[2Jx'"], id="model name: a terminal escape"),
    pytest.param(["run", "encode", "--model", "a" * 200], ["is neither a folder here nor a Hugging Face Hub id"],
                 id="model name: 200 characters"),
])
def test_the_console_script_says_one_line_and_exits_2(cli_env: dict[str, str], args: list[str], says: list[str]) -> None:
    assert_one_line_refusal(run_cli(args, cli_env, timeout=120), *says)
    profiles = Path(cli_env["EMBPROF_PROFILES_DIR"])
    assert not profiles.exists() or not list(profiles.glob("*.json"))


@pytest.mark.slow
def test_a_truncate_dim_wider_than_the_model_is_refused_once_it_loads(cli_env: dict[str, str]) -> None:
    run = run_cli(["run", "encode", "--truncate-dim", "385", "--repeats", "1", "-q"], cli_env, timeout=300)
    assert_one_line_refusal(run, "--truncate-dim 385 is more than the 384 dimensions", "give at most 384")
    profiles = Path(cli_env["EMBPROF_PROFILES_DIR"])
    assert not profiles.exists() or not list(profiles.glob("*.json"))
