"""A run as data: the target, the workload and the recording options, frozen and validated.

The command line, the dashboard's form, a plan file (``embprof run --plan FILE``) and a snapshot
(``embprof rerun``) all produce a ``RunPlan``; only ``execute.prepare`` turns one into a target and
a workload. Every check that relates one option to another lives here, once, and fails with the
one sentence the command line prints before it exits 2. What needs the machine (a file that must
exist, a model that must be found, a server that must answer) is checked by ``execute.prepare``.

Credentials in a server URL are used for the run but never serialised: a plan printed, saved in a
snapshot or sent to another machine carries the URL without them (the API key is always read from
the environment variable the plan names).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer, field_validator, model_validator
from pydantic_core import ErrorDetails

from .bounds import (
    NumberRange,
    WholeRange,
    BATCH_SIZE,
    CELL_LOOPS,
    ENERGY_WINDOW_S,
    INT_AXIS_MOST,
    MAX_REPEATS,
    TEXT_TOKENS,
    TOP_K,
    check_count,
    check_number,
)
from .errors import UserError
from .fields import BY_FIELD, OPTION, OPTIONS, option_name
from .text import one_line
from .text import shown as _shown

PLAN_VERSION: Literal[1] = 1
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("float32", "float16", "bfloat16")
WORKLOADS = ("encode", "speed", "similarity", "sweep", "load", "mteb", "train")
EncodeMode = Literal["plain", "query", "document"]
BUNDLED_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"

INT_AXES = ("lines", "batch", "tokens", "threads", "truncate_dim", "max_seq_length")
AXES = ("device", "dtype", "truncate_dim", "max_seq_length", "threads", "batch", "tokens", "lines")  # outermost first
OOM_AXES = ("batch", "tokens")
LOSSES = ("auto", "cosent", "mnrl", "triplet")


def check_text(value: str | None, option: str, hint: str = "") -> None:
    """An empty string names no file, folder, model, server or prompt."""
    if value is not None and not value.strip():
        raise UserError(f"{option} cannot be empty" + (f": {hint}" if hint else ""))


def check_texts(plan: BaseModel, part: str, *names: str) -> None:
    """Each of the plan's named text fields says something, or the sentence naming the option that fills
    it (``part``: "target" or "workload", where the run options' table finds the field)."""
    for name in names:
        check_text(getattr(plan, name), option_name(f"{part}.{name}"))


def check_bounds(plan: BaseModel, part: str, *names: str) -> None:
    """Each of the plan's named number fields inside the bound of the option that fills it, in order: the
    bound and the option's name both come from the run options' table, so neither is restated here."""
    for name in names:
        option = BY_FIELD[f"{part}.{name}"]
        bound = option.bound
        if isinstance(bound, WholeRange):
            check_count(getattr(plan, name), bound, option.name)
        else:
            assert isinstance(bound, NumberRange), option.key  # tests/test_fields_table.py: every field checked here has one
            check_number(getattr(plan, name), bound, option.name)


def strip_credentials(url: str) -> str:
    """The URL as it may be written anywhere: without user:password@."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def as_tuples(value: Any) -> Any:
    """JSON, TOML and YAML arrays as the tuples a plan holds, all the way down (a plan is frozen, so its
    sequences are tuples): strict validation takes a tuple only, and an array is the one thing files have.

    Each list or table is converted once, however often it is referred to: YAML's aliases share one list
    among many places ("billion laughs": 10^9 of them from a few lines), and converting each place would
    never end. One that holds itself is left as it is, for validation to refuse."""
    done: dict[int, Any] = {}
    busy: set[int] = set()

    def convert(v: Any) -> Any:
        if not isinstance(v, (list, dict)):
            return v
        key = id(v)
        if key in done:
            return done[key]
        if key in busy:  # a list that holds itself (YAML allows it): no plan value is one
            return v
        busy.add(key)
        out = tuple(convert(x) for x in v) if isinstance(v, list) else {k: convert(x) for k, x in v.items()}
        busy.discard(key)
        done[key] = out
        return out

    return convert(value)


class _Plan(BaseModel):
    # Strict: a value of the declared type only. "yes" does not switch trust_remote_code on, "3" and true are
    # no repeat count, 3.5 is no batch size; a whole number is still a float field's value (JSON writes 10.0 as 10).
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _arrays(cls, data: Any) -> Any:
        return as_tuples(data) if isinstance(data, dict) else data


# -- targets ------------------------------------------------------------------------------------------
class LocalTarget(_Plan):
    """A sentence-transformers model in this process."""

    kind: Literal["local"] = "local"
    model: str | None = None  # Hub id or folder; None: the bundled all-MiniLM-L6-v2
    device: str = "auto"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    truncate_dim: int | None = None
    backend: Literal["torch", "onnx", "openvino"] = "torch"
    quantize: Literal["none", "int8"] = "none"  # the weights; output precision is the matrix cell's own setting
    quantize_mode: Literal["per-channel", "per-tensor"] = "per-channel"  # onnx int8's weight scales
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _check(self) -> LocalTarget:
        base = self.device.split(":", 1)[0]
        if base not in DEVICES or (":" in self.device and (base != "cuda" or not self.device.split(":", 1)[1].isdigit())):
            raise UserError(f"unknown device '{_shown(self.device)}': use one of {', '.join(DEVICES)} (cuda:N for a given GPU)")
        check_text(self.model, option_name("target.model"), OPTION["model"].hint)
        check_bounds(self, "target", "truncate_dim")
        why = backend_refusal(self.backend, self.device, self.dtype, self.quantize)
        if why:
            raise UserError(why)
        return self

    @property
    def display_name(self) -> str:
        return self.model or f"{BUNDLED_MODEL_ID} (bundled)"


def backend_refusal(backend: str, device: str, dtype: str, quantize: str) -> str | None:
    """Why a combination of backend, device, weights' dtype and quantization cannot run; None if it can.

    What no machine can run is refused here; what depends on the machine (a CUDA device, an
    installed extra) is checked when the target loads."""
    if backend == "torch":
        if quantize != "none":
            return "int8 weights run through ONNX Runtime or OpenVINO: give --backend onnx or openvino"
        return None
    if dtype != "float32":
        return f"{backend} runs the exported float32 graph: {dtype} weights are a torch setting (use --quantize int8 for smaller weights)"
    base = device.split(":", 1)[0]
    if backend == "openvino" and base not in ("auto", "cpu"):
        return f"OpenVINO runs here on the CPU only, not on {device}"
    if backend == "onnx" and quantize == "int8" and base not in ("auto", "cpu"):
        return f"ONNX Runtime's dynamic int8 kernels run on the CPU only, not on {device}"
    if backend == "onnx" and base == "mps":
        return "ONNX Runtime has no Apple MPS device"
    return None


class ServerTarget(_Plan):
    """An embedding server: llama.cpp's native API, an OpenAI-compatible one, TEI's or Ollama's (auto: asked on connect)."""

    kind: Literal["server"] = "server"
    url: str
    api: Literal["auto", "llama", "openai", "tei", "ollama"] = "auto"
    server_model: str | None = None  # the OpenAI or Ollama "model" field; default: the server's first model
    prompts_from: str | None = None  # a model id or folder whose prompts are applied client-side
    api_key_env: str | None = None  # the variable's name; its value is never in a plan
    timeout_s: float = 60.0
    max_errors: int = 0
    server_pid: int | None = None

    @model_validator(mode="after")
    def _check(self) -> ServerTarget:
        def shown(url: str) -> str:
            # The URL in a sentence: without user:password@, and without a ?query or #fragment, which
            # may hold a key. Cut by hand: urlsplit would drop the very characters refused below, and
            # ask for the port, which may be the fault.
            scheme, sep, rest = url.partition("://")
            if not sep:
                scheme, rest = "", url
            base = rest.split("?", 1)[0].split("#", 1)[0]
            netloc, slash, path = base.partition("/")
            return _shown(scheme + sep + netloc.rpartition("@")[2] + slash + path)

        # urlsplit drops surrounding spaces, and tabs or line ends anywhere, which httpx then refuses
        # (or sends): a URL holding them is refused here, in words.
        if self.url != self.url.strip() or any(c.isspace() or not c.isprintable() for c in self.url):
            raise UserError(f"--server '{shown(self.url.strip())}' holds a space or control character (pasted with one?): "
                            "give the URL without")
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UserError(f"--server takes an http:// or https:// URL, not '{shown(self.url)}'")
        # Each request's path is added to the URL, so a query or fragment would end up in front of it.
        if "?" in self.url or "#" in self.url:
            raise UserError(f"--server takes the server's base URL, without ?query or #fragment: give '{shown(self.url)}'")
        try:
            port = parts.port  # urlsplit checks the port only when it is asked for it
        except ValueError:
            port = 0
        if port == 0:
            raise UserError(f"--server '{shown(self.url)}' has no valid port (1–65535)")
        check_bounds(self, "target", "timeout_s", "max_errors", "server_pid")
        check_texts(self, "target", "server_model", "prompts_from", "api_key_env")
        return self

    @field_serializer("url")
    def _no_credentials(self, url: str) -> str:
        return strip_credentials(url)

    @property
    def display_name(self) -> str:
        return f"{strip_credentials(self.url)} ({self.api})"


TargetPlan = Annotated[Union[LocalTarget, ServerTarget], Field(discriminator="kind")]


# -- workloads ----------------------------------------------------------------------------------------
class EncodePlan(_Plan):
    name: Literal["encode"] = "encode"
    input: str | None = None  # a file; None: the built-in sample corpus (or `texts`)
    texts: tuple[str, ...] | None = None  # the lines themselves (read from standard input when the plan was made)
    mode: EncodeMode = "plain"
    prompt_name: str | None = None
    prompt: str | None = None
    batch_size: int = 32
    warmups: int = 1
    repeats: int = 3
    compare_model: str | None = None  # with a server: embed the same texts locally, report the cosine per text
    vs: str | None = None  # a second local model run alternately ("bundled" for all-MiniLM-L6-v2)

    @model_validator(mode="after")
    def _check(self) -> EncodePlan:
        check_bounds(self, "workload", "batch_size", "repeats", "warmups")
        # An empty --prompt is meaningful (no prompt at all, not even the model's default); the names are not.
        check_texts(self, "workload", "input", "prompt_name", "compare_model", "vs")
        if self.prompt is not None and self.prompt_name is not None:
            raise UserError("give either --prompt-name or --prompt, not both")
        if self.input is not None and self.texts is not None:
            raise UserError("give the lines as a file or inline, not both")
        if self.texts is not None and not any(t.strip() for t in self.texts):
            raise UserError("standard input has no lines to encode")
        if self.vs is not None and self.repeats < 2:
            raise UserError(f"--vs needs at least 2 pairs, not {self.repeats}")
        return self


class SpeedPlan(_Plan):
    name: Literal["speed"] = "speed"
    text: str | None = None  # the_ugly_duckling.txt; None: $EMBPROF_SPEED_TEXT, the cache, a checked download
    loops: int = 7
    batch_size: int = 32
    vs: str | None = None

    @model_validator(mode="after")
    def _check(self) -> SpeedPlan:
        check_bounds(self, "workload", "loops", "batch_size")
        check_texts(self, "workload", "text", "vs")
        if self.vs is not None and self.loops < 2:
            raise UserError(f"--vs needs at least 2 pairs, not {self.loops}")
        return self


class SimilarityPlan(_Plan):
    name: Literal["similarity"] = "similarity"
    queries: tuple[str, ...] = ()
    docs: str | None = None  # documents, one per line; with no queries either: the built-in example
    prompt_name: str | None = None  # both sides; overrides the model's query/document prompts
    query_prompt_name: str | None = None
    doc_prompt_name: str | None = None
    batch_size: int = 32

    @model_validator(mode="after")
    def _check(self) -> SimilarityPlan:
        if bool(self.queries) != bool(self.docs):
            raise UserError("give both --query and --docs, or neither for the built-in example")
        if any(not q.strip() for q in self.queries):
            raise UserError("--query cannot be empty")
        check_bounds(self, "workload", "batch_size")
        check_texts(self, "workload", "docs", "prompt_name", "query_prompt_name", "doc_prompt_name")
        return self


AxisValue = Union[int, str]


class SweepPlan(_Plan):
    name: Literal["sweep"] = "sweep"
    axes: dict[str, tuple[AxisValue, ...]]
    input: str | None = None
    mode: EncodeMode = "plain"
    prompt_name: str | None = None
    batch_size: int | None = None  # None: 32, unless batch is an axis
    warmups: int = 1
    target_ci_percent: float = 2.0
    budget_s: float = 30.0
    max_repeats: int = 60
    until_oom: bool = False
    ram_ceiling_mib: float | None = None

    @model_validator(mode="after")
    def _check(self) -> SweepPlan:
        check_axes(self.axes)
        if "batch" in self.axes and self.batch_size is not None:
            raise UserError("batch is both an axis and --batch-size: give one of them")
        check_bounds(self, "workload", "batch_size", "warmups", "target_ci_percent", "budget_s")
        check_count(self.max_repeats, MAX_REPEATS, "max_repeats")
        check_texts(self, "workload", "input", "prompt_name")
        if self.until_oom:
            grow = [a for a in OOM_AXES if a in self.axes]
            if len(grow) != 1:
                raise UserError("--until-oom grows exactly one axis, batch or tokens: give --axis batch=… or --axis tokens=…")
            if len(self.axes) > 1:
                raise UserError(f"--until-oom grows {grow[0]} alone; drop the other axes ({', '.join(a for a in self.axes if a != grow[0])})")
        if self.ram_ceiling_mib is not None:
            if not self.until_oom:
                raise UserError("--ram-ceiling goes with --until-oom")
            check_bounds(self, "workload", "ram_ceiling_mib")
        return self

    @property
    def effective_batch_size(self) -> int:
        return self.batch_size or 32


class LoadPlan(_Plan):
    name: Literal["load"] = "load"
    requests: int | None = None  # None with no duration either: 200
    duration_s: float | None = None
    concurrency: int | None = None  # None with no rate either: 1
    rate: float | None = None  # requests per second, Poisson arrivals
    batch: int = 1  # texts per request
    input: str | None = None
    prompt_name: str | None = None
    seed: int = 0
    processes: int = 1  # load processes: each an event loop of its own (one is enough for thousands a second)
    records: str | None = None  # a folder: each load process writes every request's times there (JSON lines)
    # The texts sent: --input's lines (or the sample corpus) in turn; texts of about text_tokens tokens; or a
    # mix of sources ("FILE" or "tokens=N") drawn in stated proportions, request by request.
    text_tokens: int | None = None
    mix: tuple[tuple[str, float], ...] = ()
    # --find-knee: open-loop steps of step_s seconds, the rate raised until the objective breaks, then bisected.
    find_knee: bool = False
    slo_p99_ms: float = 200.0
    slo_errors_percent: float = 0.1
    step_s: float = 5.0
    max_rate: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        # The defaults are filled into the plan itself, so a rerun is the same run.
        if isinstance(data, dict) and not data.get("find_knee"):
            data = dict(data)
            if data.get("requests") is None and data.get("duration_s") is None:
                data["requests"] = 200
            if data.get("concurrency") is None and data.get("rate") is None:
                data["concurrency"] = 1
        return data

    @model_validator(mode="after")
    def _check(self) -> LoadPlan:
        if self.requests is not None and self.duration_s is not None:
            raise UserError("give --requests or --duration, not both")
        check_bounds(self, "workload", "requests", "duration_s")
        if self.concurrency is not None and self.rate is not None:
            raise UserError("give --concurrency (closed loop) or --rate (Poisson arrivals), not both")
        check_bounds(self, "workload", "concurrency", "rate", "batch", "processes", "slo_p99_ms", "slo_errors_percent", "step_s", "max_rate")
        if self.find_knee and self.concurrency is not None:
            raise UserError("--find-knee steps an open-loop rate: give --rate R to start from (or nothing), not --concurrency")
        if self.find_knee and (self.requests is not None or self.duration_s is not None):
            raise UserError("--find-knee runs steps of --step-duration seconds: leave --requests and --duration out")
        if not self.find_knee and self.max_rate is not None:
            raise UserError("--max-rate goes with --find-knee")
        if self.find_knee and self.rate is not None and self.max_rate is not None and self.max_rate < self.rate:
            raise UserError(f"--max-rate {self.max_rate:g} is below the starting --rate {self.rate:g}")
        check_texts(self, "workload", "input", "prompt_name", "records")
        check_bounds(self, "workload", "text_tokens")
        if sum(x is not None and x != () for x in (self.input, self.text_tokens, self.mix or None)) > 1:
            raise UserError("give one of --input, --text-tokens and --mix (a mix names its own sources)")
        for source, weight in self.mix:
            check_text(source, "a --mix source")
            if source.startswith("tokens="):
                n = source.removeprefix("tokens=")
                if not n.isdigit():
                    raise UserError(f"--mix takes tokens=N (a whole number of tokens), not '{_shown(source)}'")
                check_count(int(n), TEXT_TOKENS, "--mix tokens=N")
            if not (0 < weight <= 1e6):
                raise UserError(f"--mix: the share of '{_shown(source)}' must be a positive number, not {_shown(weight)}")
        if len(self.mix) == 1:
            raise UserError("--mix mixes two sources or more: for one, give --input FILE or --text-tokens N")
        return self


class MtebPlan(_Plan):
    name: Literal["mteb"] = "mteb"
    tasks: tuple[str, ...]
    data_dir: str | None = None
    results_dir: str = "results"
    batch_size: int = 32
    loops: int = 7  # the SpeedTasks
    text: str | None = None  # the SpeedTasks' text

    @model_validator(mode="after")
    def _check(self) -> MtebPlan:
        if not self.tasks:
            raise UserError("no task given: name one or more with -t TASK (e.g. -t STS16 -t Banking77Classification)")
        seen: set[str] = set()
        for name in self.tasks:
            check_text(name, option_name("workload.tasks"))
            if name in seen:
                raise UserError(f"task '{_shown(name)}' is named twice")
            seen.add(name)
        check_bounds(self, "workload", "batch_size", "loops")
        check_texts(self, "workload", "data_dir", "results_dir", "text")
        return self


class TrainPlan(_Plan):
    """Fine-tune a local model with sentence-transformers' own trainer, timed per step, with the same
    evaluations before and after."""

    name: Literal["train"] = "train"
    train_file: str  # JSON Lines: {"sentence1","sentence2","score"}, {"anchor","positive"} or {"anchor","positive","negative"}
    max_examples: int | None = None  # the first N rows of the file; None: all
    loss: Literal["auto", "cosent", "mnrl", "triplet"] = "auto"  # auto: CoSENT for scored pairs, else MultipleNegativesRanking
    epochs: float = 1.0
    max_steps: int | None = None  # stops after this many steps, whatever the epochs
    batch_size: int = 16
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.1
    prompt: str | None = None  # prepended to every training text (EmbeddingGemma's guide trains with its task prompt)
    prompt_name: str | None = None  # or one of the model's prompts, by name
    seed: int = 42
    output: str | None = None  # the trained model's folder; None: trained/<model>-<time>
    tasks: tuple[str, ...] = ()  # MTEB tasks, before and after
    data_dir: str | None = None
    results_dir: str = "results"
    neighbours: tuple[str, ...] = ()  # labelled files {"text","label"}: top-K neighbour accuracy before and after
    top_k: int = 5
    distance: Literal["cosine", "euclidean"] = "cosine"
    eval_batch_size: int = 32

    @model_validator(mode="after")
    def _check(self) -> TrainPlan:
        check_text(self.train_file, option_name("workload.train_file"))
        check_bounds(self, "workload", "max_examples", "epochs", "max_steps", "batch_size", "eval_batch_size", "learning_rate", "warmup_ratio", "seed", "top_k")
        if self.prompt is not None and self.prompt_name is not None:
            raise UserError("give either --prompt-name or --prompt, not both")
        check_texts(self, "workload", "prompt_name", "output", "data_dir", "results_dir")
        for names, option in ((self.tasks, option_name("workload.tasks")), (self.neighbours, option_name("workload.neighbours"))):
            for name in names:
                check_text(name, option)
            if len(set(names)) != len(names):
                raise UserError(f"{option} names the same {'task' if option == '--task' else 'file'} twice")
        return self


PRECISIONS = ("float32", "int8", "binary")


class Placement(_Plan):
    """Where on a Ray cluster a matrix cell may run: a named host or GPU type, pinned by Ray resources.

    ``resources`` are the node's custom resources (``ray start --resources '{"host-a": 1}'``), asked for
    in the amounts given; ``accelerator_type`` is the GPU type Ray labels its nodes with (``H100``,
    ``A100``…). Only a cluster can honour a placement: a local matrix refuses one."""

    name: str
    resources: dict[str, float] = Field(default_factory=dict)
    accelerator_type: str | None = None

    @model_validator(mode="after")
    def _check(self) -> Placement:
        check_text(self.name, "a placement's name")
        # Names and resources reach labels, tables and the dashboard: printable text only.
        if not self.name.strip() or any(c in self.name for c in "/\\") or not self.name.isprintable():
            raise UserError(f"a placement's name is a short printable word, not '{_shown(self.name)}'")
        for key, amount in self.resources.items():
            check_text(key, f"placement '{self.name}''s resource")
            if not key.isprintable():
                raise UserError(f"placement '{_shown(self.name)}': a resource's name is printable text, not '{_shown(key)}'")
            if key in ("CPU", "GPU", "memory", "object_store_memory", "bundle") or key.startswith("accelerator_type:"):
                raise UserError(f"placement '{_shown(self.name)}': '{_shown(key)}' is set by the matrix itself or by Ray; "
                                "a placement names custom resources or accelerator_type")
            # Ray's own rules for an amount: at least 0.0001, and a whole number above 1.
            if not (1e-4 <= amount <= 1e6) or (amount > 1 and amount != int(amount)):
                raise UserError(f"placement '{_shown(self.name)}': resource '{_shown(key)}' takes an amount from 0.0001 to 1 or a "
                                f"whole number, not {amount:g}")
        if self.accelerator_type is not None:
            check_text(self.accelerator_type, f"placement '{self.name}''s accelerator_type")
            if not self.accelerator_type.isprintable():
                raise UserError(f"placement '{_shown(self.name)}': accelerator_type is printable text, not "
                                f"'{_shown(self.accelerator_type)}'")
        if not self.resources and not self.accelerator_type:
            raise UserError(f"placement '{_shown(self.name)}' pins nothing: give it resources or an accelerator_type")
        return self

    def ray_needs(self) -> dict[str, float]:
        """The resources Ray places by: the custom ones, and the accelerator as Ray names it."""
        needs = dict(self.resources)
        if self.accelerator_type:
            needs[f"accelerator_type:{self.accelerator_type}"] = 0.001  # what Ray's own accelerator_type option asks for
        return needs


class CellPlan(_Plan):
    """One cell of a matrix: the cost of a stated encode and the quality of the same target's
    embeddings (mteb main scores, agreement with the reference cell), in one process."""

    name: Literal["cell"] = "cell"
    cost: Literal["speed", "encode"] = "speed"  # speed: the speed protocol's text; encode: the lines of `input`
    text: str | None = None  # the speed text (as the speed workload finds it when None)
    input: str | None = None  # cost "encode": a file of lines
    loops: int = 10  # timed encodes of the cost text
    batch_size: int = 32
    tasks: tuple[str, ...] = ("STS16", "JSTS")
    data_dir: str | None = None
    results_dir: str = "results"
    precision: Literal["float32", "int8", "binary"] = "float32"  # the vectors the scorer sees
    reference: str | None = None  # the reference cell's embeddings (.npz) to measure agreement against
    write_reference: str | None = None  # this cell is the reference: its float embeddings go here
    top_k: int = 3
    energy_min_window_s: float = 1.0
    placement: Placement | None = None  # pinned to a host or GPU type of a Ray cluster; None: anywhere

    @model_validator(mode="after")
    def _check(self) -> CellPlan:
        check_count(self.loops, CELL_LOOPS, "--loops")
        check_count(self.batch_size, BATCH_SIZE, "--batch-size")
        check_count(self.top_k, TOP_K, "--top-k")
        check_number(self.energy_min_window_s, ENERGY_WINDOW_S, "--energy-window")
        if self.cost == "encode" and not self.input:
            raise UserError("--cost-workload encode needs a file of lines: encode:FILE")
        if self.reference is not None and self.write_reference is not None:
            raise UserError("a cell either is the reference or is compared with one, not both")
        if len(set(self.tasks)) != len(self.tasks):
            raise UserError("a task is named twice")
        return self


WorkloadPlan = Annotated[
    Union[EncodePlan, SpeedPlan, SimilarityPlan, SweepPlan, LoadPlan, MtebPlan, CellPlan, TrainPlan], Field(discriminator="name")
]


class Recording(_Plan):
    sample_hz: float = 10.0

    @model_validator(mode="after")
    def _check(self) -> Recording:
        check_bounds(self, "recording", "sample_hz")
        return self


# What a server target cannot vary: it computes where and how it was started.
SERVER_FIXED_AXES = ("device", "dtype", "threads", "truncate_dim", "max_seq_length", "tokens")


class RunPlan(_Plan):
    plan_version: Literal[1] = PLAN_VERSION
    target: TargetPlan = Field(default_factory=LocalTarget)
    workload: WorkloadPlan = Field(default_factory=EncodePlan)
    recording: Recording = Field(default_factory=Recording)

    @field_validator("plan_version", mode="before")
    @classmethod
    def _version_is_a_whole_number(cls, value: Any) -> Any:
        return exact_version(value, PLAN_VERSION)

    @model_validator(mode="after")
    def _check(self) -> RunPlan:
        w, server = self.workload, isinstance(self.target, ServerTarget)
        if isinstance(w, TrainPlan):
            if server:
                raise UserError("training changes a model's weights: give a local model (--model), not --server")
            t = self.target
            assert isinstance(t, LocalTarget)
            if t.backend != "torch":
                raise UserError(f"training runs on torch; {t.backend} runs an exported graph that cannot be trained")
            if t.dtype != "float32":
                raise UserError(f"training loads float32 weights; {t.dtype} weights would train without the float32 master copy "
                                "mixed precision keeps (leave --dtype out)")
            if t.truncate_dim is not None:
                raise UserError("--truncate-dim shortens the vectors at encode time; training uses the model's full output (leave it out)")
            if t.device.startswith("cuda:") and t.device != "cuda:0":
                raise UserError(f"the trainer trains on the first GPU it sees: for {t.device}, show it that one "
                                f"(CUDA_VISIBLE_DEVICES={t.device.split(':', 1)[1]} embprof train … --device cuda)")
        if isinstance(w, LoadPlan) and not server:
            raise UserError("the load workload drives a server: give --server URL")
        if isinstance(w, EncodePlan) and w.compare_model is not None and not server:
            raise UserError("--compare-model compares a server with a local model: give --server URL")
        if isinstance(w, (EncodePlan, SpeedPlan)) and w.vs is not None and server:
            raise UserError("--vs compares two local models; for a server against a local model use --compare-model")
        if isinstance(w, SweepPlan) and server:
            fixed = [a for a in w.axes if a in SERVER_FIXED_AXES]
            if fixed:
                raise UserError(
                    f"a server cannot vary {', '.join(fixed)}: it computes as it was started; sweep lines or batch, "
                    "or restart the server for each setting"
                )
            if w.until_oom:
                raise UserError("--until-oom searches this process's memory: it cannot run against a server")
        return self

    # -- files -------------------------------------------------------------------------------------------
    def to_json(self) -> str:
        return self.model_dump_json(indent=1) + "\n"


def parse_axes(specs: list[str]) -> dict[str, tuple[AxisValue, ...]]:
    """``["lines=25,50,100", "threads=1,2"]`` → {"lines": (25, 50, 100), "threads": (1, 2)}; one sentence on bad input."""
    axes: dict[str, tuple[AxisValue, ...]] = {}
    for spec in specs:
        name, sep, raw = spec.partition("=")
        name = name.strip().replace("-", "_")
        if not sep:
            raise UserError(f"axis '{_shown(spec)}' needs values: NAME=V1,V2,… (e.g. lines=25,50,100)")
        if name not in AXES:
            raise UserError(f"unknown axis '{_shown(name)}': use one of {', '.join(sorted(AXES))}")
        if name in axes:
            raise UserError(f"axis '{name}' is given twice")
        values: list[AxisValue] = []
        for v in (v.strip() for v in raw.split(",")):
            if not v:
                continue
            if name in INT_AXES:
                try:
                    values.append(int(v))
                except ValueError:
                    raise UserError(f"axis '{name}' takes whole numbers, not '{_shown(v)}'") from None
            else:
                values.append(v)
        axes[name] = tuple(values)
    check_axes(axes)
    return axes


def check_axes(axes: dict[str, tuple[AxisValue, ...]]) -> None:
    if not axes:
        raise UserError("a sweep needs at least one axis: --axis NAME=V1,V2,… (e.g. --axis lines=25,50,100,200)")
    for name, values in axes.items():
        if name not in AXES:
            raise UserError(f"unknown axis '{_shown(name)}': use one of {', '.join(sorted(AXES))}")
        if not values:
            raise UserError(f"axis '{name}' has no values")
        for v in values:
            if name in INT_AXES:
                if not isinstance(v, int) or isinstance(v, bool):
                    raise UserError(f"axis '{name}' takes whole numbers, not '{_shown(v)}'")
                if v < 1:
                    raise UserError(f"axis '{name}' takes numbers of at least 1, not {_shown(v)}")
                if v > INT_AXIS_MOST[name]:
                    raise UserError(f"axis '{name}' takes numbers of at most {INT_AXIS_MOST[name]}, not {_shown(v)}")
            elif name == "device":
                if not isinstance(v, str) or v.split(":", 1)[0] not in DEVICES or v == "auto":
                    raise UserError(f"axis 'device' takes cpu, cuda, cuda:N or mps, not '{_shown(v)}'")
            elif v not in DTYPES:
                raise UserError(f"axis 'dtype' takes {', '.join(DTYPES)}, not '{_shown(v)}'")
        if len(set(values)) != len(values):
            raise UserError(f"axis '{name}' repeats a value")


# -- building plans ----------------------------------------------------------------------------------------
def parse_mix(text: str) -> tuple[tuple[str, float], ...]:
    """``--mix`` as written: ``SOURCE:SHARE,SOURCE:SHARE…`` (a source is a file of lines or ``tokens=N``)."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        source, sep, share = part.rpartition(":")
        try:
            weight = float(share)
        except ValueError:
            weight = float("nan")
        if not sep or not source.strip() or weight != weight:
            raise UserError(f"--mix takes SOURCE:SHARE pairs separated by commas (queries.txt:0.8,tokens=512:0.2), not '{_shown(part)}'")
        out.append((source.strip(), weight))
    return tuple(out)


def plan_from_options(o: dict[str, Any]) -> RunPlan:
    """A plan from the options the command line and the dashboard's form share, by their names
    (``model``, ``server``, ``workload``, ``batch_size`` …; absent or None: the default). The one
    place where options become a run: each option fills the plan field the run options' table
    (``fields.OPTIONS``) names, for the target kind and the workload it applies to."""
    get = o.get
    workload = get("workload") or "encode"
    if workload not in WORKLOADS:
        raise UserError(f"unknown workload '{_shown(workload)}': use one of {', '.join(WORKLOADS)}")
    if get("server") and get("model"):
        raise UserError("give --model (a local model) or --server (a server), not both")
    if workload == "train" and not get("train_file"):
        raise UserError("the train workload needs a training file: embprof train --train-file FILE, or the dashboard's form (n)")
    kind = "server" if get("server") else "local"
    parts: dict[str, tuple[dict[str, Any], str]] = {
        "target": ({"kind": kind}, kind), "workload": ({"name": workload}, workload), "recording": ({}, "")}
    for opt in OPTIONS:
        if opt.field is None or opt.field == "workload.name":  # the workload is chosen above, from the same option
            continue
        part, _, name = opt.field.partition(".")
        into, chosen = parts[part]
        if opt.applies and chosen not in opt.applies:
            continue  # an option of another workload (the form gives one set for all) or of the other kind of target
        value = get(opt.key)
        if opt.shape == "many":
            into[name] = tuple(value or ())
        elif opt.shape == "axes":
            into[name] = parse_axes(list(value or ()))
        elif value is None or (opt.blank_is_default and not value):
            continue  # the field's default
        elif opt.shape == "mix" and isinstance(value, str):  # the text of --mix; a plan's own pairs pass as they are
            into[name] = parse_mix(value)
        else:
            into[name] = value
    w = parts["workload"][0]
    if workload == "encode" and w.get("input") == "-":  # standard input, read now: the plan holds the lines themselves
        from .files import read_lines

        w["texts"] = tuple(read_lines(w.pop("input")))
    return validate_plan({"target": parts["target"][0], "workload": w, "recording": parts["recording"][0]})


# -- refusing a value of the wrong type ----------------------------------------------------------------------
def exact_version(value: Any, version: int) -> Any:
    """A format's version as a whole number: a Literal takes true and 1.0 as 1 (they compare equal), a file must not."""
    if type(value) is not int:
        raise ValueError(f"Input should be {version}, not {given(value)}")
    return value


def given(value: Any) -> str:
    """A refused value as the file spelled it (JSON's spelling, which TOML and YAML share for these): "3" is
    text and 3 a number, true a boolean, so the sentence says which the file gave."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return f'"{_shown(value)}"'
    if isinstance(value, (int, float)):
        return _shown(value)
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a table of fields"
    return _shown(value)


# The errors that mean "a value of another type": their sentence says what was given.
_TYPE_ERRORS = frozenset({"bool_type", "bool_parsing", "int_type", "int_parsing", "int_from_float", "float_type", "float_parsing",
                          "string_type", "tuple_type", "list_type", "dict_type", "model_type", "model_attributes_type",
                          "literal_error", "finite_number", "enum"})
# The members of a union that pydantic adds to a location (axes take int or str): they name no field.
_UNION_MEMBERS = frozenset({"int", "str", "float", "bool"})


def error_location(error: ErrorDetails) -> tuple[str, ...]:
    """Where pydantic found a refused value, as fields (a validator's or a union member's own name left out)."""
    loc = [str(x) for x in error.get("loc", ()) if not str(x).startswith("function-")]
    while loc and loc[-1] in _UNION_MEMBERS:
        loc.pop()
    return tuple(loc)


def field_refusal(error: ErrorDetails) -> str:
    """Pydantic's reason for refusing a field's value as one plain phrase, with the value given when its
    type was the fault ("Input should be a valid boolean, not "yes"")."""
    msg = one_line(str(error.get("msg", "invalid")).removeprefix("Value error, "))
    if error.get("type") in _TYPE_ERRORS and "input" in error:
        msg += f", not {given(error['input'])}"
    return msg


def validate_plan(data: Any, where: str = "") -> RunPlan:
    """A plan from its JSON form; bad input is one sentence (UserError)."""
    prefix = f"{where}: " if where else ""
    try:
        return RunPlan.model_validate(data)
    except UserError as exc:  # a check of the plan's own (its bounds): said with the file it came from
        if not where:
            raise
        raise UserError(f"{prefix}{exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(error_location(first))
        # A field name from a file is outside text: an unknown key is shown escaped, as any other.
        raise UserError(f"{prefix}plan field '{_shown(loc)}': {field_refusal(first)}") from None


def load_plan(path: str) -> RunPlan:
    from .files import read_json_file
    from .text import one_line

    data = read_json_file(path, "plan file")
    path = one_line(path)
    if not isinstance(data, dict):
        raise UserError(f"plan file '{path}' does not hold a plan (a JSON object)")
    version = data.get("plan_version", PLAN_VERSION)
    if type(version) is not int or version != PLAN_VERSION:  # true is not version 1, though Python finds True == 1
        raise UserError(f"plan file '{path}' has plan version {given(version)}; this embprof reads version {PLAN_VERSION}")
    return validate_plan(data, f"plan file '{path}'")
