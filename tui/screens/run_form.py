"""The new-run form: its fields become the same options the command line takes, and the engine's
``plan_from_options`` turns them into the run's plan (or the one sentence saying what is wrong)."""

from __future__ import annotations

from typing import Any, ClassVar, get_args

from embprof.engine.errors import UserError
from embprof.engine.text import one_line
from embprof.engine.plan import (
    DEVICES,
    DTYPES,
    LOSSES,
    WORKLOADS,
    LocalTarget,
    RunPlan,
    ServerTarget,
    TrainPlan,
    plan_from_options,
)
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static

DISTANCES: tuple[str, ...] = get_args(TrainPlan.model_fields["distance"].annotation)


def _number(value: Any) -> str:
    return "" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _initial(plan: RunPlan) -> dict[str, str]:
    """The form's fields filled from a plan (the last run's), by option name."""
    t, w = plan.target, plan.workload

    def get(name: str) -> Any:
        return getattr(w, name, None)

    count = get("repeats") or get("loops") or get("requests")
    file_ = get("input") or get("docs") or get("text")
    axes = get("axes") or {}
    return {
        "model": (t.model or "") if isinstance(t, LocalTarget) else "",
        # Shown without credentials: never on screen (type them again to change the server).
        "server": t.model_dump(mode="json")["url"] if isinstance(t, ServerTarget) else "",
        "api": t.api if isinstance(t, ServerTarget) else "llama",
        "device": t.device.split(":")[0] if isinstance(t, LocalTarget) else "auto",
        "dtype": t.dtype if isinstance(t, LocalTarget) else "float32",
        "workload": w.name,
        "mode": str(get("mode") or "plain"),
        "batch_size": str(get("batch_size") or ""),
        "count": str(count or ""),
        "file": str(file_ or ""),
        "prompt_name": str(get("prompt_name") or ""),
        "query": " ".join(get("queries") or ())[:200] if len(get("queries") or ()) == 1 else "",
        "tasks": " ".join(get("tasks") or ()),
        "data_dir": str(get("data_dir") or ""),
        "axes": " ".join(f"{k}={','.join(str(v) for v in vs)}" for k, vs in axes.items()),
        "sample_hz": f"{plan.recording.sample_hz:g}",
        # A training run's own fields: filled from the last plan only when it trained.
        "train_file": str(get("train_file") or ""),
        "max_examples": _number(get("max_examples")),
        "loss": str(get("loss") or "auto") if w.name == "train" else "auto",
        "epochs": _number(get("epochs")),
        "max_steps": _number(get("max_steps")),
        "learning_rate": _number(get("learning_rate")),
        "train_prompt": str(get("prompt") or "") if w.name == "train" else "",
        "output": "",  # the last run's output folder holds its model now: a new run is never offered it
        "neighbours": ", ".join(get("neighbours") or ()),
        "top_k": _number(get("top_k")) if w.name == "train" else "",
        "distance": str(get("distance") or "cosine"),
    }


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
                yield Label("model")
                yield Input(compact=True, value=c["model"], placeholder="HF id or folder (empty: bundled all-MiniLM-L6-v2)", id="f-model")
                yield Label("server URL")
                yield Input(compact=True, value=c["server"], placeholder="instead of a model, e.g. http://127.0.0.1:8080", id="f-server")
                yield Label("server API", classes="not-train")
                yield Select([(a, a) for a in ("llama", "openai")], compact=True, value=c["api"], allow_blank=False, id="f-api",
                             classes="not-train")
                yield Label("device")
                yield Select([(d, d) for d in DEVICES], compact=True, value=c["device"], allow_blank=False, id="f-device")
                yield Label("dtype")
                yield Select([(d, d) for d in DTYPES], compact=True, value=c["dtype"], allow_blank=False, id="f-dtype")
                yield Label("workload")
                yield Select([(w, w) for w in WORKLOADS], compact=True, value=c["workload"], allow_blank=False, id="f-workload")
                yield Label("training file", classes="train-only")
                yield Input(compact=True, value=c["train_file"], placeholder="JSON Lines: sentence1/sentence2/score or anchor/positive[/negative]",
                            id="f-train-file", classes="train-only")
                yield Label("loss", classes="train-only")
                yield Select([(x, x) for x in LOSSES], compact=True, value=c["loss"], allow_blank=False, id="f-loss", classes="train-only")
                yield Label("epochs", classes="train-only")
                yield Input(compact=True, value=c["epochs"], type="number", placeholder="default 1", id="f-epochs", classes="train-only")
                yield Label("max steps", classes="train-only")
                yield Input(compact=True, value=c["max_steps"], type="integer", placeholder="stop after this many steps (empty: the epochs)",
                            id="f-max-steps", classes="train-only")
                yield Label("max examples", classes="train-only")
                yield Input(compact=True, value=c["max_examples"], type="integer", placeholder="the file's first N rows (empty: all)",
                            id="f-max-examples", classes="train-only")
                yield Label("learning rate", classes="train-only")
                yield Input(compact=True, value=c["learning_rate"], type="number", placeholder="default 2e-5", id="f-lr", classes="train-only")
                yield Label("training prompt", classes="train-only")
                yield Input(compact=True, value=c["train_prompt"], placeholder="text put before every text (or a prompt name below)",
                            id="f-train-prompt", classes="train-only")
                yield Label("output folder", classes="train-only")
                yield Input(compact=True, value=c["output"], placeholder="the trained model (empty: trained/<model>-<time>)", id="f-output",
                            classes="train-only")
                yield Label("encode as", classes="not-train")
                yield Select([(m, m) for m in ("plain", "query", "document")], compact=True, value=c["mode"], allow_blank=False, id="f-mode",
                             classes="not-train")
                yield Label("batch size")
                yield Input(compact=True, value=c["batch_size"], type="integer", placeholder="default 32 (train 16)", id="f-batch")
                yield Label("repeats / loops", classes="not-train")
                yield Input(compact=True, value=c["count"], type="integer", placeholder="encode 3, speed 7, load 200 requests", id="f-repeats",
                            classes="not-train")
                yield Label("file", classes="not-train")
                yield Input(compact=True, value=c["file"], placeholder="encode: lines · similarity: documents · speed: the text", id="f-file",
                            classes="not-train")
                yield Label("prompt name")
                yield Input(compact=True, value=c["prompt_name"], placeholder="e.g. query, STS (see `embprof prompts`)", id="f-prompt")
                yield Label("query", classes="not-train")
                yield Input(compact=True, value=c["query"], placeholder="similarity: a query (with a docs file)", id="f-query", classes="not-train")
                yield Label("MTEB tasks")
                yield Input(compact=True, value=c["tasks"], placeholder="mteb: e.g. STS16 JSTS Banking77Classification", id="f-tasks")
                yield Label("MTEB data dir")
                yield Input(compact=True, value=c["data_dir"], placeholder="mteb: local JSON Lines (empty: the Hub)", id="f-data")
                yield Label("labelled files", classes="train-only")
                yield Input(compact=True, value=c["neighbours"], placeholder="neighbour accuracy before/after: a.jsonl, b.jsonl",
                            id="f-neighbours", classes="train-only")
                yield Label("top-k", classes="train-only")
                yield Input(compact=True, value=c["top_k"], type="integer", placeholder="neighbours counted per text (default 5)", id="f-top-k",
                            classes="train-only")
                yield Label("distance", classes="train-only")
                yield Select([(d, d) for d in DISTANCES], compact=True, value=c["distance"], allow_blank=False, id="f-distance",
                             classes="train-only")
                yield Label("sweep axes", classes="not-train")
                yield Input(compact=True, value=c["axes"], placeholder="sweep: e.g. lines=25,50,100 threads=1,2", id="f-axes", classes="not-train")
                yield Label("sample Hz")
                yield Input(compact=True, value=c["sample_hz"], type="number", id="f-hz")
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

        def sel(i: str) -> str:
            return str(self.query_one(f"#{i}", Select).value)

        def number(i: str, kind: type[int | float], what: str) -> Any:
            try:
                return kind(v(i)) if v(i) else None
            except ValueError:
                raise UserError(f"{what} must be a number, not '{v(i)}'") from None

        count = number("f-repeats", int, "repeats / loops")
        options: dict[str, Any] = {
            "model": v("f-model") or None,
            "server": v("f-server") or None,
            "api": sel("f-api"),
            "device": sel("f-device"),
            "dtype": sel("f-dtype"),
            "workload": sel("f-workload"),
            "mode": sel("f-mode"),
            "batch_size": number("f-batch", int, "batch size"),
            "repeats": count,
            "loops": count,
            "requests": count,
            "input": v("f-file") or None,
            "docs": v("f-file") or None,
            "text": v("f-file") or None,
            "prompt_name": v("f-prompt") or None,
            "query": [v("f-query")] if v("f-query") else None,
            "tasks": v("f-tasks").replace(",", " ").split() or None,
            "data_dir": v("f-data") or None,
            "axis": v("f-axes").split() or None,
            "sample_hz": number("f-hz", float, "sample Hz"),
        }
        if options["workload"] == "train":
            # Read only for a training run: a training prompt left in a hidden field must not reach an encode.
            options.update({
                "train_file": v("f-train-file") or None,
                "max_examples": number("f-max-examples", int, "max examples"),
                "loss": sel("f-loss"),
                "epochs": number("f-epochs", float, "epochs"),
                "max_steps": number("f-max-steps", int, "max steps"),
                "learning_rate": number("f-lr", float, "learning rate"),
                # Not stripped: a prompt's closing space is part of it ("task: search result | query: ").
                "prompt": self.query_one("#f-train-prompt", Input).value if v("f-train-prompt") else None,
                "output": v("f-output") or None,
                "neighbours": [name.strip() for name in v("f-neighbours").split(",") if name.strip()] or None,
                "top_k": number("f-top-k", int, "top-k"),
                "distance": sel("f-distance"),
            })
        return options

    def plan(self) -> RunPlan:
        return plan_from_options(self.options())
