"""The one table of a run's options: each option once, with the plan field it fills, its flags, its bound
or choices, its help text and, where the dashboard's form shows it, the form's label.

Four readers share it, so none of them restates an option: the command line's parser adds the options
of each command from it (``LAYOUT``), the dashboard's form takes its fields' labels and bounds from it,
``plan.plan_from_options`` maps options to plan fields through it, and the plan's refusals name the
option that fills a field (``option_name``). The tests check it against the plan's models and the
parser.

Only the standard library (through ``.bounds``) is imported: ``embprof --help`` reads this table and
must stay cheap, so it may not pull in pydantic. That is also why the choices are spelled here as well
as in the plan's ``Literal`` types; a test checks the two agree.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
from dataclasses import dataclass
from typing import Literal

from . import bounds as b
from .bounds import NumberRange, WholeRange

# The vocabulary the form offers as menus; the plan refuses anything else (a device may also be cuda:N).
WORKLOAD_NAMES = ("encode", "speed", "similarity", "sweep", "load", "mteb", "train")
DEVICE_KINDS = ("auto", "cpu", "cuda", "mps")

# Help texts say "{range}" where the bound's range belongs ("1–100000"): one place for the numbers.
RANGE = "{range}"

# How an option's value becomes the plan field's:
#   one   – as it is (absent or None: the field's default);
#   many  – a repeatable option: its values as a tuple, always set (none given: an empty tuple);
#   axes  – the sweep's NAME=V1,V2,… specs, parsed (plan.parse_axes), always set;
#   mix   – the load's SOURCE:SHARE,… text, parsed (plan.parse_mix).
Shape = Literal["one", "many", "axes", "mix"]
# What the command line takes, unless the option has a bound (then a number inside it, whole for a
# WholeRange): text that must say something, any text at all (a prompt may be ''), one of the choices, or
# a switch.
Kind = Literal["text", "raw", "choice", "switch"]


@dataclass(frozen=True)
class Shown:
    """How one command shows an option where it differs from the option's own: its help, default or flags there."""

    help: str | None = None  # None: the option's own; "": no help line at all
    default: object = None
    has_default: bool = False  # default given here (None is a real default, so it cannot mean "the option's own")
    flags: tuple[str, ...] = ()  # (): the option's own


def with_default(value: object, help: str | None = None) -> Shown:
    """A command that shows an option with a default of its own (and perhaps its own help)."""
    return Shown(help=help, default=value, has_default=True)


@dataclass(frozen=True)
class RunOption:
    """One option of a run, once.

    ``field`` is the plan field it fills ("workload.loops", "target.device", "recording.sample_hz"), None
    for an option of the command itself (where the snapshot goes, whether to print the plan).
    ``applies`` names the workloads (a ``workload.`` field) or the target kinds (a ``target.`` field)
    whose plans have that field: the option is taken for those and left out for the others, so one
    set of options (the form's) can serve every workload."""

    key: str  # its name among the options (argparse's dest, the keys plan_from_options reads)
    flags: tuple[str, ...]
    help: str
    field: str | None = None
    applies: tuple[str, ...] = ()
    kind: Kind = "text"
    bound: WholeRange | NumberRange | None = None
    choices: tuple[str, ...] = ()
    menu: tuple[str, ...] = ()  # the form's menu for a text option whose values the plan checks
    default: object = None
    metavar: str | None = None
    hint: str = ""  # said after "cannot be empty: " when the text is empty
    shape: Shape = "one"
    required: bool = False
    # An empty value means the field's default (the form and older callers said "" for "not chosen").
    blank_is_default: bool = False
    label: str | None = None  # the form's label; None: the form does not show it
    shown: Mapping[str, Shown] = dataclasses.field(default_factory=dict)  # by command (LAYOUT's keys)

    @property
    def name(self) -> str:
        """The option as sentences name it: its last flag (--learning-rate, not --lr; --model, not -m)."""
        return self.flags[-1]

    @property
    def repeatable(self) -> bool:
        return self.shape in ("many", "axes")

    def help_in(self, command: str) -> str:
        """The help line ``command`` shows, its bound's range written in."""
        shown = self.shown.get(command)
        text = shown.help if shown is not None and shown.help is not None else self.help
        return text.replace(RANGE, self.bound.range_text) if self.bound is not None else text

    def default_in(self, command: str) -> object:
        shown = self.shown.get(command)
        return shown.default if shown is not None and shown.has_default else self.default

    def flags_in(self, command: str) -> tuple[str, ...]:
        shown = self.shown.get(command)
        return shown.flags if shown is not None and shown.flags else self.flags


LOCAL = ("local",)
SERVER = ("server",)
ENCODERS = ("encode", "sweep", "load")  # the workloads that read a file of lines
SPEED = ("speed", "mteb")  # the speed protocol: its own run, and mteb's SpeedTasks
MTEB = ("mteb", "train")  # MTEB tasks: their own run, and a training run's evaluations

OPTIONS: tuple[RunOption, ...] = (
    # -- the target ------------------------------------------------------------------------------------------
    RunOption("model", ("-m", "--model"), "Hugging Face id or local folder (default: the bundled all-MiniLM-L6-v2)",
              field="target.model", applies=LOCAL, hint="leave the option out for the bundled model", blank_is_default=True,
              label="model"),
    RunOption("device", ("--device",), "auto, cpu, cuda, cuda:N or mps (default: auto)", field="target.device", applies=LOCAL,
              default="auto", menu=DEVICE_KINDS, blank_is_default=True, label="device"),
    RunOption("dtype", ("--dtype",), "weights' dtype", field="target.dtype", applies=LOCAL, kind="choice",
              choices=("float32", "float16", "bfloat16"), default="float32", blank_is_default=True, label="dtype"),
    RunOption("truncate_dim", ("--truncate-dim",), f"Matryoshka: keep the first N dimensions ({RANGE}, at most the model's own)",
            bound=b.TRUNCATE_DIM, field="target.truncate_dim", applies=LOCAL, metavar="N"),
    RunOption("trust_remote_code", ("--trust-remote-code",), "allow the model's own code to run (off by default)",
              field="target.trust_remote_code", applies=LOCAL, kind="switch", default=False),
    RunOption("server", ("--server",), "an embedding server, e.g. http://127.0.0.1:8080 (llama-server --embeddings)",
              field="target.url", applies=SERVER, metavar="URL", label="server URL",
              shown={"dashboard": Shown("profile an embedding server instead of a local model")}),
    RunOption("api", ("--api",), "auto: ask the server which it serves; llama: POST /embedding; openai: POST /v1/embeddings "
              "(or /embeddings below the URL); tei: POST /embed; ollama: POST /api/embed", field="target.api", applies=SERVER,
              kind="choice", choices=("auto", "llama", "openai", "tei", "ollama"), default="auto", blank_is_default=True,
              label="server API", shown={"dashboard": Shown("the server's API (default auto: asked on connect)")}),
    RunOption("api_key_env", ("--api-key-env",), "the environment variable holding the API key (sent as a bearer token)",
              field="target.api_key_env", applies=SERVER, metavar="VAR"),
    RunOption("server_model", ("--server-model",), "openai: the 'model' field (default: the server's first model)",
              field="target.server_model", applies=SERVER, metavar="NAME"),
    RunOption("prompts_from", ("--prompts-from",), "apply this model's prompts client-side (a Hub id or folder)",
              field="target.prompts_from", applies=SERVER, metavar="MODEL"),
    RunOption("server_pid", ("--server-pid",), f"sample this server process, {RANGE} (default: found by the URL's port when local)",
            bound=b.SERVER_PID, field="target.server_pid", applies=SERVER, metavar="PID"),
    RunOption("timeout", ("--timeout",), f"seconds a request may take, from its connect to its last byte, {RANGE} (default 60)", bound=b.TIMEOUT_S, field="target.timeout_s",
            applies=SERVER, default=60.0, metavar="S"),
    RunOption("max_errors", ("--max-errors",), f"failed requests tolerated (retried) before the run stops, {RANGE} (default 0)",
            bound=b.MAX_ERRORS, field="target.max_errors", applies=SERVER, default=0, metavar="N"),
    # -- the recording, and what a command does with the run ---------------------------------------------------
    RunOption("sample_hz", ("--sample-hz",), f"resource samples per second, {RANGE} (default 10)", bound=b.SAMPLE_HZ,
            field="recording.sample_hz", default=10.0, metavar="HZ", label="sample Hz"),
    RunOption("profiles_dir", ("--profiles-dir",), "where the snapshot is saved (default: $EMBPROF_PROFILES_DIR or ./profiles)",
              metavar="DIR", shown={"dashboard": Shown("default: $EMBPROF_PROFILES_DIR or ./profiles")}),
    RunOption("quiet", ("-q", "--quiet"), "no progress lines, only the summary", kind="switch", default=False),
    RunOption("print_plan", ("--print-plan",), "print the run plan as JSON and exit, without running it", kind="switch",
              default=False),
    RunOption("no_autostart", ("--no-autostart",), "open the dashboard without starting a run", kind="switch", default=False),
    RunOption("plan", ("--plan",), "start the plan in FILE (any command's --print-plan writes one: `embprof train … --print-plan > p.json`)",
              metavar="FILE"),
    RunOption("list_tasks", ("--list-tasks",), "print every task name mteb knows and exit", kind="switch", default=False),
    # -- the workload ----------------------------------------------------------------------------------------
    # The workload names are the engine's: the dashboard's --workload takes any text, and an unknown one is
    # refused by the plan, in one sentence; `embprof run` names it as a subcommand.
    RunOption("workload", ("--workload",), "what runs at launch: a workload of `embprof run` or mteb (default encode)",
              field="workload.name", applies=WORKLOAD_NAMES, default="encode", metavar="WORKLOAD", menu=WORKLOAD_NAMES,
              label="workload"),
    RunOption("text", ("--text",), "the_ugly_duckling.txt (see below for the order it is looked for)", field="workload.text",
              applies=SPEED, metavar="FILE", label="file",
              shown={"mteb": Shown("CPUSpeedTask/GPUSpeedTask: the_ugly_duckling.txt"), "dashboard": Shown("speed: the_ugly_duckling.txt")}),
    RunOption("loops", ("--loops",), f"timed loops, {RANGE} (default 7, as mteb)", bound=b.LOOPS, field="workload.loops", applies=SPEED,
            default=7, metavar="N", label="repeats / loops",
            shown={"mteb": Shown(f"CPUSpeedTask/GPUSpeedTask: timed loops, {RANGE} (default 7)"),
                   "dashboard": Shown(f"speed: timed loops, {RANGE} (default 7)")}),
    RunOption("batch_size", ("--batch-size",), f"encode batch size, {RANGE} (default 32)", bound=b.BATCH_SIZE, field="workload.batch_size",
            applies=("encode", "speed", "similarity", "sweep", "mteb", "train"), default=32, metavar="N", label="batch size",
            shown={"encode": Shown(f"{RANGE} (default 32)"),
                   "sweep": with_default(None, f"when batch is not an axis, {RANGE} (default 32)"),  # None: batch may be an axis
                   "mteb": Shown(f"encode batch size, {RANGE} (default 32, as mteb)"),
                   "train": with_default(16, f"rows per step, {RANGE} (default 16)")}),
    RunOption("vs", ("--vs",), "a second model run alternately with the first (the loops become pairs)", field="workload.vs",
              applies=("encode", "speed"), metavar="MODEL",
              shown={"encode": Shown("a second model (id or folder; 'bundled' for all-MiniLM-L6-v2) run alternately with the first")}),
    RunOption("input", ("-i", "--input"), "one text per line; '-' for stdin (default: built-in sample corpus)", field="workload.input",
              applies=ENCODERS, metavar="FILE", label="file",
              shown={"sweep": Shown("texts, one per line (default: the built-in sample corpus)"),
                     "load": Shown("texts, one per line, sent in turn (default: the built-in sample corpus)"),
                     "dashboard": Shown("encode: lines to encode (default: the sample corpus)", flags=("--input",))}),
    RunOption("mode", ("--as",), "encode_query / encode_document with the model's own prompts, or plain encode",
              field="workload.mode", applies=("encode", "sweep"), kind="choice", choices=("plain", "query", "document"),
              default="plain", label="encode as", shown={"sweep": Shown("")}),
    RunOption("prompt_name", ("--prompt-name",), "one of the model's prompts (see `embprof prompts`)", field="workload.prompt_name",
              applies=("encode", "similarity", "sweep", "load", "train"), label="prompt name",
              shown={"similarity": Shown("use this prompt for both sides instead of the query/document prompts"),
                     "sweep": Shown("one of the model's prompts"),
                     "load": Shown("a prompt from --prompts-from, applied to every text"),
                     "train": Shown("or one of the model's prompts, by name (see `embprof prompts`)")}),
    # Any text: an empty raw prompt is how to encode without the model's default prompt. The form offers it to a
    # training run only (an encode there takes a prompt name).
    RunOption("prompt", ("--prompt",), "a raw prompt prefix, e.g. 'task: search result | query: ' ('' for none at all)",
              field="workload.prompt", applies=("encode", "train"), kind="raw", label="training prompt",
              shown={"train": Shown("a prompt prepended to every training text, e.g. 'task: clustering | query: '")}),
    RunOption("warmups", ("--warmups",), f"untimed warm-up passes, {RANGE} (default 1; recorded, not counted)", bound=b.WARMUPS,
            field="workload.warmups", applies=("encode", "sweep"), default=1, metavar="N"),
    RunOption("repeats", ("--repeats",), f"timed passes, {RANGE} (default 3; with --vs, the pairs)", bound=b.REPEATS, field="workload.repeats",
            applies=("encode",), default=3, metavar="N", label="repeats / loops",
            shown={"dashboard": Shown(f"encode: timed passes, {RANGE} (default 3)")}),
    RunOption("compare_model", ("--compare-model",),
              "with --server: embed the same texts with this local model ('bundled' for all-MiniLM-L6-v2) and report the cosine per text",
              field="workload.compare_model", applies=("encode",), metavar="MODEL"),
    RunOption("query", ("--query",), "a query (repeatable)", field="workload.queries", applies=("similarity",), shape="many",
              label="query"),
    RunOption("docs", ("--docs",), "documents, one per line", field="workload.docs", applies=("similarity",), metavar="FILE",
              label="file"),
    RunOption("query_prompt_name", ("--query-prompt-name",), "prompt for the queries only", field="workload.query_prompt_name",
              applies=("similarity",)),
    RunOption("doc_prompt_name", ("--doc-prompt-name",), "prompt for the documents only", field="workload.doc_prompt_name",
              applies=("similarity",)),
    RunOption("axis", ("--axis",), "an axis and its values (repeatable; several axes make a grid): lines, batch, tokens, threads, "
              "device, dtype, truncate_dim, max_seq_length", field="workload.axes", applies=("sweep",), shape="axes",
              metavar="NAME=V1,V2,…", label="sweep axes"),
    RunOption("target_ci", ("--target-ci",), f"repeat a point until its median's 95%% CI is within ±PERCENT, {RANGE} (default 2)",
            bound=b.TARGET_CI, field="workload.target_ci_percent", applies=("sweep",), default=2.0, metavar="PERCENT"),
    RunOption("budget", ("--budget",), f"stop repeating a point once the next repeat would pass S seconds, {RANGE} "
            "(default 30; at least 3 repeats run)", bound=b.BUDGET_S, field="workload.budget_s", applies=("sweep",), default=30.0, metavar="S"),
    RunOption("until_oom", ("--until-oom",), "grow the batch (or tokens) axis until out of memory or the RAM ceiling",
              field="workload.until_oom", applies=("sweep",), kind="switch", default=False),
    RunOption("ram_ceiling", ("--ram-ceiling",), f"with --until-oom: stop once peak RSS passes this many MiB, {RANGE}", bound=b.RAM_CEILING_MIB,
            field="workload.ram_ceiling_mib", applies=("sweep",), metavar="MIB"),
    RunOption("requests", ("--requests",), f"send N requests, {RANGE} (default 200)", bound=b.REQUESTS, field="workload.requests",
            applies=("load",), metavar="N", label="repeats / loops"),
    RunOption("duration", ("--duration",), f"send for S seconds instead, {RANGE}", bound=b.DURATION_S, field="workload.duration_s",
            applies=("load",), metavar="S"),
    RunOption("concurrency", ("--concurrency",), f"C requests in flight, each sent when one returns, {RANGE} (default 1)", bound=b.CONCURRENCY,
            field="workload.concurrency", applies=("load",), metavar="C"),
    RunOption("rate", ("--rate",), f"R requests per second on average, Poisson arrivals, {RANGE}", bound=b.RATE, field="workload.rate",
            applies=("load",), metavar="R"),
    RunOption("batch", ("--batch",), f"texts per request, {RANGE} (default 1)", bound=b.BATCH_SIZE, field="workload.batch", applies=("load",),
            default=1, metavar="K"),
    RunOption("load_processes", ("--load-processes",), f"client processes sending the load, each an event loop of its own, {RANGE} "
            "(default 1); their every request's times are merged", bound=b.LOAD_PROCESSES, field="workload.processes", applies=("load",),
            metavar="P"),
    RunOption("records", ("--records",), "write every request's times there too, one JSON-lines file per load process (send, answer, schedule)",
              field="workload.records", applies=("load",), metavar="DIR"),
    # None, not False: the load plan fills its defaults (200 requests, one connection) only when no knee is searched.
    RunOption("find_knee", ("--find-knee",), "step an open-loop rate up (from --rate, or half what one connection sustains) until the "
              "objective breaks, then bisect: the largest rate that holds it, with its curve", field="workload.find_knee",
              applies=("load",), kind="switch", default=None),
    RunOption("slo_p99", ("--slo-p99",), f"the objective's p99 latency, {RANGE} (default 200)", bound=b.SLO_P99_MS, field="workload.slo_p99_ms",
            applies=("load",), metavar="MS"),
    RunOption("slo_errors", ("--slo-errors",), f"the objective's failed requests, {RANGE} (default 0.1)", bound=b.SLO_ERRORS,
            field="workload.slo_errors_percent", applies=("load",), metavar="PCT"),
    RunOption("step_duration", ("--step-duration",), f"each step's length, {RANGE} (default 5)", bound=b.STEP_S, field="workload.step_s",
            applies=("load",), metavar="S"),
    RunOption("max_rate", ("--max-rate",), "the highest rate to try (default: no limit but the search's own)", bound=b.RATE,
            field="workload.max_rate", applies=("load",), metavar="R"),
    RunOption("text_tokens", ("--text-tokens",), f"texts of N tokens each (llama.cpp's tokenizer where the server has one; else estimated), "
            f"{RANGE}", bound=b.TEXT_TOKENS, field="workload.text_tokens", applies=("load",), metavar="N"),
    RunOption("mix", ("--mix",), "texts from several sources in stated shares, e.g. queries.txt:0.8,tokens=512:0.2 (a source is a file "
              "of lines or tokens=N); latency is also reported by source", field="workload.mix", applies=("load",), shape="mix",
              metavar="SPEC"),
    RunOption("tasks", ("-t", "--task"), "an MTEB task name (repeatable)", field="workload.tasks", applies=MTEB, shape="many",
              metavar="TASK", label="MTEB tasks",
              shown={"train": Shown("an MTEB task (repeatable)"), "dashboard": Shown("mteb: a task to run (repeatable)")}),
    RunOption("data_dir", ("--data-dir",), "local task data, for offline runs (layout below)", field="workload.data_dir", applies=MTEB,
              metavar="DIR", label="MTEB data dir",
              shown={"train": Shown("local MTEB task data, for offline runs (see `embprof mteb --help`)"),
                     "dashboard": Shown("mteb: local task data (see `embprof mteb --help`)")}),
    RunOption("results_dir", ("--results-dir",), "where results files go (default ./results)", field="workload.results_dir",
              applies=MTEB, default="results", metavar="DIR", shown={"train": Shown("where MTEB results files go (default ./results)")}),
    RunOption("train_file", ("--train-file",), 'JSON Lines: {"sentence1","sentence2","score"}, {"anchor","positive"} or '
              '{"anchor","positive","negative"}', field="workload.train_file", applies=("train",), required=True, metavar="FILE",
              label="training file"),
    RunOption("max_examples", ("--max-examples",), f"train on the first N rows of the file only, {RANGE}", bound=b.MAX_EXAMPLES,
            field="workload.max_examples", applies=("train",), metavar="N", label="max examples"),
    RunOption("loss", ("--loss",), "auto: CoSENT for scored pairs, MultipleNegativesRanking for pairs and triplets", field="workload.loss",
              applies=("train",), kind="choice", choices=("auto", "cosent", "mnrl", "triplet"), default="auto", label="loss"),
    RunOption("epochs", ("--epochs",), f"passes over the data, {RANGE} (default 1; a fraction is a share of one)", bound=b.EPOCHS,
            field="workload.epochs", applies=("train",), default=1.0, metavar="N", label="epochs"),
    RunOption("max_steps", ("--max-steps",), f"stop after N optimizer steps, whatever --epochs says, {RANGE}", bound=b.MAX_STEPS,
            field="workload.max_steps", applies=("train",), metavar="N", label="max steps"),
    RunOption("learning_rate", ("--lr", "--learning-rate"), f"peak learning rate, {RANGE} (default 2e-5)", bound=b.LEARNING_RATE,
            field="workload.learning_rate", applies=("train",), default=2e-5, metavar="LR", label="learning rate"),
    RunOption("warmup", ("--warmup",), f"share of the steps spent warming up the rate, {RANGE} (default 0.1)", bound=b.WARMUP_RATIO,
            field="workload.warmup_ratio", applies=("train",), default=0.1, metavar="SHARE"),
    RunOption("seed", ("--seed",), f"the trainer's seed, {RANGE} (default 42)", bound=b.SEED, field="workload.seed", applies=("train",),
            default=42, metavar="N"),
    RunOption("output", ("-o", "--output"), "a new folder for the trained model (default ./trained/<model>-<time>)",
              field="workload.output", applies=("train",), metavar="DIR", label="output folder"),
    RunOption("neighbours", ("--neighbours",), 'a labelled file, {"text","label"} per line: top-K neighbour accuracy (repeatable)',
              field="workload.neighbours", applies=("train",), shape="many", metavar="FILE", label="labelled files"),
    RunOption("top_k", ("--top-k",), f"neighbours per text, {RANGE} (default 5)", bound=b.TOP_K, field="workload.top_k", applies=("train",),
            default=5, metavar="K", label="top-k"),
    RunOption("distance", ("--distance",), "the neighbours' distance (default cosine)", field="workload.distance", applies=("train",),
              kind="choice", choices=("cosine", "euclidean"), default="cosine", label="distance"),
    RunOption("eval_batch_size", ("--eval-batch-size",), f"encode batch size of the evaluations, {RANGE} (default 32)", bound=b.BATCH_SIZE,
            field="workload.eval_batch_size", applies=("train",), default=32, metavar="N"),
)

OPTION: dict[str, RunOption] = {o.key: o for o in OPTIONS}
# Each plan field is filled by one option (the tests check it), so a refusal can name that option.
BY_FIELD: dict[str, RunOption] = {o.field: o for o in OPTIONS if o.field is not None}


def option_name(field_path: str) -> str:
    """The option that fills the plan field ``field_path`` ("workload.batch_size"), as a refusal names it ("--batch-size")."""
    return BY_FIELD[field_path].name


# -- where each command shows them: its groups of options, in the order they are added -------------------------------
# A group named twice is one group (the load's texts come after its knee search's options in the usage line).
Layout = tuple[tuple[str, tuple[str, ...]], ...]
TARGET: Layout = (
    ("target", ("model", "device", "dtype", "truncate_dim", "trust_remote_code")),
    ("server target (instead of a local model)",
     ("server", "api", "api_key_env", "server_model", "prompts_from", "server_pid", "timeout", "max_errors")),
)
RECORDING: Layout = (("recording", ("sample_hz", "profiles_dir", "quiet", "print_plan")),)

LAYOUT: dict[str, Layout] = {
    "dashboard": (("the dashboard (embprof with no command)",
                   ("model", "device", "dtype", "workload", "tasks", "server", "api", "data_dir", "no_autostart", "plan", "input",
                    "text", "repeats", "loops", "sample_hz", "profiles_dir")),),
    "speed": (*TARGET, ("speed", ("text", "loops", "batch_size", "vs")), *RECORDING),
    "encode": (*TARGET, ("encode", ("input", "mode", "prompt_name", "prompt", "batch_size", "warmups", "repeats", "vs", "compare_model")),
               *RECORDING),
    "similarity": (*TARGET, ("similarity", ("query", "docs", "prompt_name", "query_prompt_name", "doc_prompt_name")), *RECORDING),
    "sweep": (*TARGET, ("sweep", ("axis", "input", "mode", "prompt_name", "batch_size", "target_ci", "budget", "until_oom", "ram_ceiling")),
              *RECORDING),
    "load": (*TARGET, ("load", ("requests", "duration", "concurrency", "rate", "batch", "load_processes", "records")),
             ("finding the knee", ("find_knee", "slo_p99", "slo_errors", "step_duration", "max_rate")),
             ("load", ("input", "text_tokens", "mix", "prompt_name")), *RECORDING),
    "mteb": (*TARGET, ("mteb", ("tasks", "data_dir", "results_dir", "batch_size", "loops", "text", "list_tasks")), *RECORDING),
    "train": (*TARGET,
              ("training", ("train_file", "max_examples", "loss", "epochs", "max_steps", "batch_size", "learning_rate", "warmup", "prompt",
                            "prompt_name", "seed", "output")),
              ("evaluations (each runs before and after training)",
               ("tasks", "data_dir", "results_dir", "neighbours", "top_k", "distance", "eval_batch_size")),
              *RECORDING),
    "prompts": TARGET,  # a model's prompts: the target alone (the server options are refused, with a pointer)
}


def options_of(command: str) -> tuple[RunOption, ...]:
    """The options ``command`` takes, in the order it adds them."""
    return tuple(OPTION[key] for _, keys in LAYOUT[command] for key in keys)
