"""The new-run form: its fields become the same options the command line takes, and the engine's
``plan_from_options`` turns them into the run's plan (or the one sentence saying what is wrong)."""

from __future__ import annotations

from typing import Any, ClassVar

from embprof.engine.errors import UserError
from embprof.engine.text import one_line
from embprof.engine.plan import (
    DEVICES,
    DTYPES,
    WORKLOADS,
    LocalTarget,
    RunPlan,
    ServerTarget,
    plan_from_options,
)
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static


def _initial(plan: RunPlan) -> dict[str, str]:
    """The form's fields filled from a plan (the last run's), by option name."""
    t, w = plan.target, plan.workload
    get = lambda name: getattr(w, name, None)
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
    }


class RunForm(ModalScreen[RunPlan | None]):
    """Choose the target and the workload."""

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
                yield Label("server API")
                yield Select([(a, a) for a in ("llama", "openai")], compact=True, value=c["api"], allow_blank=False, id="f-api")
                yield Label("device")
                yield Select([(d, d) for d in DEVICES], compact=True, value=c["device"], allow_blank=False, id="f-device")
                yield Label("dtype")
                yield Select([(d, d) for d in DTYPES], compact=True, value=c["dtype"], allow_blank=False, id="f-dtype")
                yield Label("workload")
                yield Select([(w, w) for w in WORKLOADS], compact=True, value=c["workload"], allow_blank=False, id="f-workload")
                yield Label("encode as")
                yield Select([(m, m) for m in ("plain", "query", "document")], compact=True, value=c["mode"], allow_blank=False, id="f-mode")
                yield Label("batch size")
                yield Input(compact=True, value=c["batch_size"], type="integer", placeholder="default 32", id="f-batch")
                yield Label("repeats / loops")
                yield Input(compact=True, value=c["count"], type="integer", placeholder="encode 3, speed 7, load 200 requests", id="f-repeats")
                yield Label("file")
                yield Input(compact=True, value=c["file"], placeholder="encode: lines · similarity: documents · speed: the text", id="f-file")
                yield Label("prompt name")
                yield Input(compact=True, value=c["prompt_name"], placeholder="e.g. query, STS (see `embprof prompts`)", id="f-prompt")
                yield Label("query")
                yield Input(compact=True, value=c["query"], placeholder="similarity: a query (with a docs file)", id="f-query")
                yield Label("MTEB tasks")
                yield Input(compact=True, value=c["tasks"], placeholder="mteb: e.g. STS16 JSTS Banking77Classification", id="f-tasks")
                yield Label("MTEB data dir")
                yield Input(compact=True, value=c["data_dir"], placeholder="mteb: local JSON Lines (empty: the Hub)", id="f-data")
                yield Label("sweep axes")
                yield Input(compact=True, value=c["axes"], placeholder="sweep: e.g. lines=25,50,100 threads=1,2", id="f-axes")
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
        v = lambda i: self.query_one(f"#{i}", Input).value.strip()
        sel = lambda i: str(self.query_one(f"#{i}", Select).value)

        def number(i: str, kind: type[int | float], what: str) -> Any:
            try:
                return kind(v(i)) if v(i) else None
            except ValueError:
                raise UserError(f"{what} must be a number, not '{v(i)}'") from None

        count = number("f-repeats", int, "repeats / loops")
        return {
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

    def plan(self) -> RunPlan:
        return plan_from_options(self.options())
