"""The new-run form: its fields become the same options the command line takes, and the engine's
``plan_from_options`` turns them into the run's plan (or the one sentence saying what is wrong).

Each field's label, kind (a menu, a whole number, a number, text) and menu come from the run options'
table (``engine.fields``), the one the command line's parser is built from; the form is filled from a
plan by the plan field each of its options fills."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from embprof.engine.bounds import WholeRange
from embprof.engine.errors import UserError
from embprof.engine.fields import OPTION, RunOption
from embprof.engine.plan import RunPlan, plan_from_options
from embprof.engine.text import one_line
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static


@dataclass(frozen=True)
class FormField:
    """One field of the form: the run options it fills (the table's keys, engine.fields), its widget's id
    and placeholder, and when it shows. Its label, its kind (a menu, a number, text) and its bounds are
    the option's own, from the table; several options share a field when each workload reads one of them
    (the file is an encode's input, a similarity's documents, a speed run's text)."""

    id: str
    keys: tuple[str, ...]
    placeholder: str = ""
    only: Literal["train-only", "not-train", ""] = ""  # the CSS class: a training run's own field, or one it never reads
    # A repeatable option's values: joined by ``sep`` to be shown, split where ``splits`` (a pattern) matches
    # when read back; "" reads one value (and shows the plan's only if it has just one).
    sep: str = " "
    splits: str = r"\s+"


FIELDS: tuple[FormField, ...] = (
    FormField("f-model", ("model",), "HF id or folder (empty: bundled all-MiniLM-L6-v2)"),
    FormField("f-server", ("server",), "instead of a model, e.g. http://127.0.0.1:8080"),
    FormField("f-api", ("api",), only="not-train"),
    FormField("f-device", ("device",)),
    FormField("f-dtype", ("dtype",)),
    FormField("f-workload", ("workload",)),
    FormField("f-train-file", ("train_file",), "JSON Lines: sentence1/sentence2/score or anchor/positive[/negative]", only="train-only"),
    FormField("f-loss", ("loss",), only="train-only"),
    FormField("f-epochs", ("epochs",), "default 1", only="train-only"),
    FormField("f-max-steps", ("max_steps",), "stop after this many steps (empty: the epochs)", only="train-only"),
    FormField("f-max-examples", ("max_examples",), "the file's first N rows (empty: all)", only="train-only"),
    FormField("f-lr", ("learning_rate",), "default 2e-5", only="train-only"),
    FormField("f-train-prompt", ("prompt",), "text put before every text (or a prompt name below)", only="train-only"),
    FormField("f-output", ("output",), "the trained model (empty: trained/<model>-<time>)", only="train-only"),
    FormField("f-mode", ("mode",), only="not-train"),
    FormField("f-batch", ("batch_size",), "default 32 (train 16)"),
    FormField("f-repeats", ("repeats", "loops", "requests"), "encode 3, speed 7, load 200 requests", only="not-train"),
    FormField("f-file", ("input", "docs", "text"), "encode: lines · similarity: documents · speed: the text", only="not-train"),
    FormField("f-prompt", ("prompt_name",), "e.g. query, STS (see `embprof prompts`)"),
    FormField("f-query", ("query",), "similarity: a query (with a docs file)", only="not-train", splits=""),
    FormField("f-tasks", ("tasks",), "mteb: e.g. STS16 JSTS Banking77Classification", splits=r"[\s,]+"),
    FormField("f-data", ("data_dir",), "mteb: local JSON Lines (empty: the Hub)"),
    FormField("f-neighbours", ("neighbours",), "neighbour accuracy before/after: a.jsonl, b.jsonl", only="train-only", sep=", ",
              splits=","),  # a file's name may hold a space
    FormField("f-top-k", ("top_k",), "neighbours counted per text (default 5)", only="train-only"),
    FormField("f-distance", ("distance",), only="train-only"),
    FormField("f-axes", ("axis",), "sweep: e.g. lines=25,50,100 threads=1,2", only="not-train"),
    FormField("f-hz", ("sample_hz",)),
)


def option_of(f: FormField) -> RunOption:
    """The option that gives a field its label, kind and bounds: the first it fills (they share them)."""
    return OPTION[f.keys[0]]


def menu_of(opt: RunOption) -> tuple[str, ...]:
    return opt.choices or opt.menu


def _values(text: str, splits: str) -> list[str] | None:
    """A repeatable option's values as a field holds them; None when it holds none."""
    if not splits:
        return [text] if text else None
    return [part.strip() for part in re.split(splits, text) if part.strip()] or None


def _text(value: Any, sep: str) -> str:
    """A plan field's value (its JSON form) as a field shows it."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return sep.join(str(v) for v in value)
    return str(value)


def _initial(plan: RunPlan) -> dict[str, str]:
    """The form's fields filled from a plan (the last run's), by the plan field each option fills.

    The plan is read in its JSON form, which holds a server's URL without its credentials: they are
    never on screen (type them again to change the server). A field the plan's target or workload does
    not have shows the option's default; a training run's own fields are filled from a training plan only."""
    data = plan.model_dump(mode="json")
    chosen = {"target": plan.target.kind, "workload": plan.workload.name, "recording": ""}
    shown: dict[str, str] = {}
    for f in FIELDS:
        value: Any = None
        for key in f.keys:
            opt = OPTION[key]
            assert opt.field is not None  # the tests check every field of the form fills a plan field
            part, _, name = opt.field.partition(".")
            if (opt.applies and chosen[part] not in opt.applies) or (f.only == "train-only" and plan.workload.name != "train"):
                continue
            value = data[part].get(name)
            if value is not None:
                break
        if f.id == "f-output":
            value = None  # the last run's output folder holds its model now: a new run is never offered it
        elif f.id == "f-device" and value is not None:
            value = value.split(":")[0]  # the menu lists kinds of device: cuda:1 shows as cuda
        elif option_of(f).repeatable and not f.splits and value is not None:
            value = value[0][:200] if len(value) == 1 else None  # a field of one value: the plan's only one, if so
        elif option_of(f).shape == "axes" and value is not None:
            value = " ".join(f"{k}={','.join(str(v) for v in vs)}" for k, vs in value.items())
        opt = option_of(f)
        if value is None and menu_of(opt):
            value = opt.default
        shown[f.id] = _text(value, f.sep)
    return shown


class RunForm(ModalScreen[RunPlan | None]):
    """Choose the target and the workload.

    A training run's own fields show only when the workload is train, and the fields it does not read
    (an encode's file, a sweep's axes …) hide meanwhile: the form stays one screen high.
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, current: RunPlan) -> None:
        super().__init__()
        self.current = current

    def compose(self) -> ComposeResult:
        c = _initial(self.current)
        with Vertical(id="form"):
            yield Label("New run", id="form-title")
            with Grid(id="form-grid"):
                for f in FIELDS:
                    opt = option_of(f)
                    yield Label(opt.label or "", classes=f.only)
                    if menu_of(opt):
                        yield Select([(x, x) for x in menu_of(opt)], compact=True, value=c[f.id], allow_blank=False, id=f.id,
                                     classes=f.only)
                    else:
                        kind: Literal["integer", "number", "text"] = (
                            "text" if opt.bound is None else "integer" if isinstance(opt.bound, WholeRange) else "number")
                        yield Input(compact=True, value=c[f.id], type=kind, placeholder=f.placeholder, id=f.id, classes=f.only)
            yield Static("", id="form-error")
            with Horizontal(id="form-buttons"):
                yield Button("Run", variant="primary", id="f-run", compact=True)
                yield Button("Cancel", id="f-cancel", compact=True)

    def on_mount(self) -> None:
        if not getattr(self.app, "cursor_blink", True):
            for field_ in self.query(Input):
                field_.cursor_blink = False
        self.set_class(self.current.workload.name == "train", "-train")

    @on(Select.Changed, "#f-workload")
    def _workload(self, event: Select.Changed) -> None:
        self.set_class(event.value == "train", "-train")

    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed, "#f-cancel")
    def _cancel(self) -> None:
        self.dismiss(None)

    @on(Input.Submitted)
    @on(Button.Pressed, "#f-run")
    def _submit(self) -> None:
        try:
            self.dismiss(self.plan())
        except UserError as exc:
            self.query_one("#form-error", Static).update(Text(one_line(exc)))  # it may quote what was typed: data, not markup

    def options(self) -> dict[str, Any]:
        """The fields by the command line's option names. A field serves whichever option the chosen
        workload reads (the file is an encode's input, a similarity's documents, a speed run's text);
        ``plan_from_options`` takes only the options of that workload."""

        def v(i: str) -> str:
            return self.query_one(f"#{i}", Input).value.strip()

        def number(i: str, kind: type[int | float], what: str) -> Any:
            try:
                return kind(v(i)) if v(i) else None
            except ValueError:
                raise UserError(f"{what} must be a number, not '{v(i)}'") from None

        workload = str(self.query_one("#f-workload", Select).value)
        options: dict[str, Any] = {}
        for f in FIELDS:
            if f.only == "train-only" and workload != "train":
                continue  # read only for a training run: a training prompt left in a hidden field must not reach an encode
            opt = option_of(f)
            value: Any
            if menu_of(opt):
                value = str(self.query_one(f"#{f.id}", Select).value)
            elif opt.bound is not None:
                value = number(f.id, int if isinstance(opt.bound, WholeRange) else float, opt.label or f.id)
            elif opt.kind == "raw":
                # Not stripped: a prompt's closing space is part of it ("task: search result | query: ").
                value = self.query_one(f"#{f.id}", Input).value if v(f.id) else None
            elif opt.repeatable:
                value = _values(v(f.id), f.splits)
            else:
                value = v(f.id) or None
            options.update(dict.fromkeys(f.keys, value))
        return options

    def plan(self) -> RunPlan:
        return plan_from_options(self.options())
