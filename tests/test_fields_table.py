"""The run options' one table (engine/fields.py) against what reads it and what it describes: each entry
names a plan field that exists on the right model, every plan field has an option or is listed below as
set by none, the command line's options are the table's (flags, groups, defaults, metavars, help), the
dashboard's form shows only the table's options under the table's labels, and plan_from_options takes
every option into the field the table names."""

from __future__ import annotations

import contextlib
import io
from typing import Any, Literal, get_args, get_origin

import pytest
from pydantic import BaseModel

from embprof.engine import fields
from embprof.engine.bounds import WholeRange
from embprof.engine.errors import UserError
from embprof.engine.plan import (
    DEVICES,
    WORKLOADS,
    CellPlan,
    LocalTarget,
    Recording,
    RunPlan,
    ServerTarget,
    WorkloadPlan,
    plan_from_options,
)
from embprof.tui import options as o
from embprof.tui.parser import build_parser
from embprof.tui.screens.run_form import FIELDS, option_of

TARGETS: dict[str, type[BaseModel]] = {"local": LocalTarget, "server": ServerTarget}
WORKLOAD_MODELS: dict[str, type[BaseModel]] = {
    get_args(m.model_fields["name"].annotation)[0]: m for m in get_args(get_args(WorkloadPlan)[0])}

# Plan fields no option sets, and why: a plan file, the matrix or the plan's own structure sets them.
NO_OPTION: dict[str, set[str]] = {
    # The discriminators: --server makes the target a server's; the subcommand (or --workload) names the workload.
    "local": {"kind", "backend", "quantize", "quantize_mode"},  # backend and quantization: a matrix cell's settings
    "server": {"kind"},
    "encode": {"texts"},  # the lines of standard input (--input -), read when the plan is made
    "sweep": {"max_repeats"},  # a plan file's only
    "load": {"seed"},  # the Poisson arrivals' seed: a plan file's only
}
# A matrix cell's plan is the matrix's alone (its spec and tui/matrix_cli.py), never a run option's.
MATRIX_ONLY = {"cell"}


def model_of(part: str, kind: str) -> type[BaseModel]:
    if part == "target":
        return TARGETS[kind]
    if part == "workload":
        return WORKLOAD_MODELS[kind]
    assert part == "recording" and kind == "", (part, kind)
    return Recording


def places(opt: fields.RunOption) -> list[tuple[str, str, str]]:
    """(part, kind, field name) for every model whose plan has the option's field."""
    assert opt.field is not None
    part, _, name = opt.field.partition(".")
    return [(part, kind, name) for kind in (opt.applies or ("",))]


PLAN_OPTIONS = [opt for opt in fields.OPTIONS if opt.field is not None]


# -- the table against the plan's models ---------------------------------------------------------------------------
@pytest.mark.parametrize("opt", PLAN_OPTIONS, ids=lambda opt: opt.key)
def test_every_entry_names_a_field_of_the_right_model(opt: fields.RunOption) -> None:
    part, _, _ = (opt.field or "").partition(".")
    assert part in ("target", "workload", "recording"), opt.field
    assert bool(opt.applies) == (part != "recording"), "a target's or a workload's field says whose plans have it"
    for part, kind, name in places(opt):
        model = model_of(part, kind)
        assert name in model.model_fields, f"{opt.key}: {model.__name__} has no field {name}"
        annotation = model.model_fields[name].annotation
        if opt.choices:  # the choices are the plan's own Literal
            assert get_origin(annotation) is Literal and opt.choices == get_args(annotation), (opt.key, annotation)


def test_every_plan_field_has_an_option_or_is_listed_as_set_by_none() -> None:
    covered = {(part, kind, name) for opt in PLAN_OPTIONS for part, kind, name in places(opt)}
    models = [("target", k) for k in TARGETS] + [("workload", k) for k in WORKLOAD_MODELS if k not in MATRIX_ONLY] + [("recording", "")]
    missing = [f"{part} {kind}: {name}" for part, kind in models for name in model_of(part, kind).model_fields
               if (part, kind, name) not in covered and name not in NO_OPTION.get(kind, set())]
    assert missing == []
    # The list of fields set by none holds no field an option does set, and no field that is not there.
    for kind, names in NO_OPTION.items():
        part = "target" if kind in TARGETS else "workload"
        assert names <= set(model_of(part, kind).model_fields), kind
        assert not {(part, kind, n) for n in names} & covered, kind
    assert set(WORKLOAD_MODELS) == set(WORKLOADS) | MATRIX_ONLY and CellPlan is WORKLOAD_MODELS["cell"]


def test_each_plan_field_is_filled_by_one_option_and_each_key_is_one_option() -> None:
    paths = [opt.field for opt in PLAN_OPTIONS]
    assert len(paths) == len(set(paths)) == len(fields.BY_FIELD)
    assert len(fields.OPTIONS) == len(fields.OPTION)


def test_the_menus_are_the_plans_vocabulary() -> None:
    assert fields.OPTION["device"].menu == DEVICES
    assert fields.OPTION["workload"].menu == WORKLOADS == fields.WORKLOAD_NAMES
    assert fields.OPTION["workload"].applies == WORKLOADS


def test_a_bounded_option_holds_the_bound_its_converter_holds() -> None:
    for opt in fields.OPTIONS:
        if opt.bound is not None and opt.name in o.LIMITS:
            assert o.LIMITS[opt.name].bound is opt.bound, opt.name
        if opt.bound is not None:
            assert fields.RANGE not in opt.help_in("") and (opt.key == "max_rate" or opt.bound.range_text in opt.help_in("")), opt.key


# -- plan_from_options goes through the table ----------------------------------------------------------------------
SERVER = "http://127.0.0.1:9"
# What each workload needs before any one option can be added to it.
BASE: dict[str, dict[str, Any]] = {"similarity": {"query": ["q"], "docs": "d.txt"}, "sweep": {"axis": ["lines=8"]},
                                   "load": {"server": SERVER}, "mteb": {"tasks": ["STS16"]}, "train": {"train_file": "t.jsonl"}}
# What an option needs besides (the plan's cross-option checks).
NEEDS: dict[str, dict[str, Any]] = {"compare_model": {"server": SERVER}, "until_oom": {"axis": ["batch=8"]},
                                    "ram_ceiling": {"axis": ["batch=8"], "until_oom": True}, "max_rate": {"find_knee": True}}
# A value of each kind and what the plan holds for it.
SAMPLES: dict[str, tuple[Any, Any]] = {"axis": (["lines=8,16"], {"lines": (8, 16)}), "mix": ("a.txt:0.5,tokens=8:0.5", (("a.txt", 0.5), ("tokens=8", 0.5))),
                                       "device": ("cpu", "cpu"), "server": (SERVER, SERVER)}


def sample(opt: fields.RunOption) -> tuple[Any, Any]:
    if opt.key in SAMPLES:
        return SAMPLES[opt.key]
    if opt.bound is not None:
        value = opt.bound.most if isinstance(opt.bound, WholeRange) else float(opt.bound.most)
        return value, value
    if opt.kind == "switch":
        return True, True
    if opt.kind == "choice":
        return opt.choices[-1], opt.choices[-1]
    if opt.shape == "many":
        return ["x1", "x2"], ("x1", "x2")
    return "x.txt", "x.txt"


@pytest.mark.parametrize("opt", [opt for opt in PLAN_OPTIONS if opt.key != "workload"], ids=lambda opt: opt.key)
def test_plan_from_options_fills_the_field_the_table_names(opt: fields.RunOption) -> None:
    value, held = sample(opt)
    part, _, name = (opt.field or "").partition(".")
    for kind in opt.applies or ("",):
        options: dict[str, Any] = {}
        if part == "workload":
            options = {"workload": kind, **BASE.get(kind, {})}
        elif kind == "server":
            options = {"server": SERVER}
        options.update(NEEDS.get(opt.key, {}))
        plan = plan_from_options({**options, opt.key: value})
        assert getattr(getattr(plan, part), name) == held, (opt.key, kind)
    # And an option of another workload or kind of target is left out, not refused.
    others = [w for w in WORKLOADS if part == "workload" and w not in opt.applies]
    for other in others:
        assert plan_from_options({"workload": other, **BASE.get(other, {}), opt.key: value}).workload.name == other


def test_a_refusal_names_the_option_the_table_gives_the_field() -> None:
    # --lr and --learning-rate are one option; the sentences name it by its last flag, as argparse's errors do.
    assert fields.option_name("workload.learning_rate") == "--learning-rate"
    assert fields.option_name("target.truncate_dim") == "--truncate-dim"
    with pytest.raises(UserError, match="^--load-processes must be at most 64"):
        plan_from_options({"workload": "load", "server": SERVER, "load_processes": 65})
    with pytest.raises(UserError, match="^--model cannot be empty: leave the option out for the bundled model"):
        RunPlan(target=LocalTarget(model=" "))


# -- the command line's options are the table's ----------------------------------------------------------------------
ARGV = {"dashboard": [], "mteb": ["mteb"], "train": ["train"], "prompts": ["prompts"],
        **{w: ["run", w] for w in ("speed", "encode", "similarity", "sweep", "load")}}
REQUIRED = {"train": ["--train-file", "t.jsonl"]}
HAND_WRITTEN = {"dashboard": {"-h", "--help", "--version"}, "prompts": {"-h", "--help", "--tsv"}}  # outside the table: not run options


def help_of(argv: list[str]) -> str:
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown), pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--help"])
    return shown.getvalue()


def help_entries(text: str) -> dict[str, list[tuple[list[str], str, str]]]:
    """The help's option groups: title → [(flags, the flags as written, help text)], up to the examples."""
    groups: dict[str, list[tuple[list[str], str, str]]] = {}
    entries: list[tuple[list[str], str, str]] | None = None
    for line in text.split("\nexamples:")[0].splitlines():
        if line.endswith(":") and not line.startswith(" "):
            entries = groups.setdefault(line[:-1], [])
        elif entries is not None and line.startswith("  -"):
            invocation, _, help_ = line[2:].partition("  ")
            flags = [part.split(" ")[0] for part in invocation.split(", ")]
            entries.append((flags, invocation, help_.strip()))
        elif entries is not None and entries and line.startswith("   "):
            flags, invocation, help_ = entries[-1]
            entries[-1] = (flags, invocation, f"{help_} {line.strip()}".strip())
    return groups


def invocation_of(opt: fields.RunOption, command: str) -> str:
    """How argparse writes an option's flags: each with its metavar, a choice as {a,b}, a switch bare."""
    if opt.kind == "switch":
        return ", ".join(opt.flags_in(command))
    metavar = opt.metavar or ("{" + ",".join(opt.choices) + "}" if opt.choices else opt.key.upper())
    return ", ".join(f"{flag} {metavar}" for flag in opt.flags_in(command))


def squeezed(text: str) -> str:
    """Text without any space: argparse wraps help lines (and breaks a hyphenated word) where it likes."""
    return "".join(text.replace("%%", "%").split())


@pytest.mark.parametrize("command", sorted(fields.LAYOUT))
def test_the_parsers_options_are_the_tables(command: str) -> None:
    argv = ARGV[command]
    groups = help_entries(help_of(argv))
    table = fields.options_of(command)
    # The flags: the table's and the hand-written ones, no more and no fewer.
    shown = {flag for entries in groups.values() for flags, _, _ in entries for flag in flags}
    assert shown - HAND_WRITTEN.get(command, {"-h", "--help"}) == {flag for opt in table for flag in opt.flags_in(command)}
    # Each in its group, in the table's order (a group the layout names twice is one), with its metavar and help.
    for title in dict.fromkeys(title for title, _ in fields.LAYOUT[command]):
        opts = [fields.OPTION[key] for t, keys in fields.LAYOUT[command] if t == title for key in keys]
        listed = groups[title]
        assert [flags for flags, _, _ in listed] == [list(opt.flags_in(command)) for opt in opts], (command, title)
        for (_, invocation, help_), opt in zip(listed, opts, strict=True):
            assert invocation == invocation_of(opt, command), (command, opt.key)
            assert squeezed(help_) == squeezed(opt.help_in(command)), (command, opt.key)
    # The names the options land under, and their defaults.
    args = vars(build_parser().parse_args([*argv, *REQUIRED.get(command, [])]))
    for opt in table:
        expected = [] if opt.repeatable else "t.jsonl" if opt.required else opt.default_in(command)
        assert opt.key in args and args[opt.key] == expected, (command, opt.key, args.get(opt.key))


def test_every_workload_has_its_command() -> None:
    assert set(WORKLOADS) <= set(fields.LAYOUT)


# -- the dashboard's form shows the table's options --------------------------------------------------------------------
def test_the_forms_fields_are_the_tables_options_under_its_labels() -> None:
    ids = [f.id for f in FIELDS]
    assert len(ids) == len(set(ids))
    for f in FIELDS:
        opts = [fields.OPTION[key] for key in f.keys]  # a KeyError: a field of no option of the table
        assert all(opt.field is not None for opt in opts), f.id  # each fills a plan field
        assert option_of(f).label and {opt.label for opt in opts} == {option_of(f).label}, f.id
        assert len({(opt.kind, type(opt.bound), opt.choices, opt.menu) for opt in opts}) == 1, f"{f.id}: one widget, one kind"
    labelled = {opt.key for opt in fields.OPTIONS if opt.label}
    assert {key for f in FIELDS for key in f.keys} == labelled, "the form shows every option the table labels, and only those"


def test_the_table_is_cheap_to_import() -> None:
    """`embprof --help` reads it: only the standard library, no pydantic (nor anything heavier)."""
    import subprocess
    import sys

    code = "import sys, embprof.engine.fields; print(' '.join(sorted(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert not {m for m in loaded if m.split(".")[0] in ("pydantic", "torch", "numpy", "textual", "rich")}
