"""The command line's parser: its commands, options, help texts and one-line errors.

Only argparse is imported here, and the engine's standard-library tables (``engine.fields``, the run
options each command takes; ``engine.bounds``): `embprof --help` must never pay for torch, or for the
rest of the engine.
"""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

from .exits import EXIT_INPUT

MAIN_EXAMPLES = """\
examples:
  embprof                                             open the dashboard; profiles the bundled model at once
  embprof --model google/embeddinggemma-300m --device cuda --workload speed
  embprof run encode                                  profile the bundled all-MiniLM-L6-v2 on the sample corpus
  embprof run speed --model google/embeddinggemma-300m --device cuda
  embprof run encode --input notes.txt --as query --batch-size 16
  embprof run similarity --query "Which metal is liquid?" --docs docs.txt
  embprof mteb -t STS16 -t Banking77Classification   MTEB tasks with the sampler on; results in ./results
  embprof mteb -m google/embeddinggemma-300m -t JSTS --data-dir datasets/
  embprof prompts --model google/embeddinggemma-300m --tsv
  embprof list
  embprof run sweep --axis lines=25,50,100,200        latency by lines, fitted: "0.28 s + 8.4 ms a line"
  embprof train --train-file pairs.jsonl -t STSBenchmark --neighbours labelled.jsonl -o my-model   fine-tune, scored before and after
  embprof run encode --vs google/embeddinggemma-300m  two models alternately, the ratio pair by pair
  embprof compare profiles/a.json profiles/b.json
  embprof show profiles/<run>.json
  embprof export profiles/<run>.json --format md -o report.md
"""

MTEB_EXAMPLES = """\
examples:
  embprof mteb -t STS16                               one task on the bundled model, data from the Hub
  embprof mteb -m google/embeddinggemma-300m -t JSICK -t JSTS --device cuda
  embprof mteb -t STS16 -t Banking77Classification --data-dir datasets/   offline, local JSON Lines
  embprof mteb -t CPUSpeedTask                        mteb 1.x's speed task, written in its 1.x results form
  embprof mteb --list-tasks | grep STS
local data (--data-dir DIR): DIR/<folder>/<split>.jsonl, the folder named after the task
(STS16 → sts16, SICK-R → sickr, Banking77Classification → banking77); STS rows
{"sentence1", "sentence2", "score"}, classification rows {"text", "label"}.
results: DIR/<org__model>/<revision>/<Task>.json and model_meta.json (default DIR: ./results),
mteb's own layout: mteb.ResultCache(cache_path=".").load_results() reads ./results.
"""

TRAIN_EXAMPLES = """\
examples:
  embprof train --train-file stsb-train.jsonl --max-examples 1000 -t STSBenchmark --data-dir datasets/ \\
      --neighbours banking77-test.jsonl -o minilm-stsb
  embprof train -m google/embeddinggemma-300m --train-file triplets.jsonl --prompt-name Clustering --epochs 3 -o gemma-ft
  embprof train --train-file pairs.jsonl --loss mnrl --max-steps 200 --batch-size 64 --device cuda
training files (JSON Lines, one example per line): {"sentence1", "sentence2", "score"} (CoSENT),
{"anchor", "positive"} or {"anchor", "positive", "negative"} (MultipleNegativesRanking; --loss triplet for TripletLoss).
Ctrl-C stops at the end of the current step: the steps measured are kept, and the partly trained model is not saved.
"""

RUN_EXAMPLES = {
    "load": """\
examples:
  embprof run load --server http://127.0.0.1:8080 --requests 500 --concurrency 8
  embprof run load --server http://127.0.0.1:8080/ --api openai --duration 30 --rate 50
  embprof run load --server https://api.example.com --api openai --api-key-env EMBED_API_KEY --server-model m
the client's own ceiling (a trivial local endpoint, same client) is measured first and reported beside the result.
""",
    "sweep": """\
examples:
  embprof run sweep --axis lines=25,50,100,200          latency by lines, fitted as fixed + per line
  embprof run sweep --axis threads=1,2 --axis batch=8,32
  embprof run sweep --axis device=cpu,cuda --axis dtype=float32,bfloat16 -m google/embeddinggemma-300m
  embprof run sweep --axis tokens=32,128,512             text length in tokens
  embprof run sweep --axis batch=1 --until-oom --device cuda      the largest batch that fits
  embprof run sweep --axis batch=8 --until-oom --ram-ceiling 4000 on the CPU, a RAM ceiling instead
""",
    "speed": """\
examples:
  embprof run speed                                   MTEB v1 CPUSpeedTask protocol on the bundled model
  embprof run speed --device cuda                     the GPUSpeedTask
  embprof run speed --text the_ugly_duckling.txt --loops 7
the text: --text FILE, else $EMBPROF_SPEED_TEXT, else the user cache, else a checked download.
""",
    "encode": """\
examples:
  embprof run encode                                  the built-in sample corpus, English and Japanese
  embprof run encode --input lines.txt --as document --batch-size 64 --repeats 5
  cat queries.txt | embprof run encode --input - --as query
  embprof run encode --model google/embeddinggemma-300m --prompt-name STS
  embprof run encode --prompt "task: search result | query: "
""",
    "similarity": """\
examples:
  embprof run similarity                              the built-in ranking check (a distractor that denies the key phrase)
  embprof run similarity --query "Which planet is red?" --docs planets.txt
  embprof run similarity --model google/embeddinggemma-300m --prompt-name STS
""",
}


class Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32, width=100)


class Parser(argparse.ArgumentParser):
    """argparse's parser, its errors one line each: ``embprof: error: <what> (see <prog> --help)``, exit 2.

    A usage block above the error pushes the sentence that matters off a small terminal and breaks
    scripts that read the last line; the usage is one ``--help`` away. Subparsers are made of this
    class too (argparse gives them the class of their parent)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_INPUT, f"embprof: error: {_one_sentence(message)} (see {self.prog} --help)\n")


# The phrases the converters in .options start with: they read on from the option's name.
_VERB_PHRASES = ("must ", "takes ", "cannot ")


def _one_sentence(message: str) -> str:
    """argparse's "argument -m/--model: cannot be empty" as "--model cannot be empty"; outside text escaped."""
    from embprof.engine.text import one_line

    head, sep, rest = message.partition(": ")
    if sep and head.startswith("argument ") and " " not in head[len("argument "):]:
        name = head[len("argument "):].split("/")[-1]
        message = f"{name} {rest}" if rest.startswith(_VERB_PHRASES) else f"{name}: {rest}"
    return one_line(message)


def add_run_options(p: argparse.ArgumentParser, command: str) -> None:
    """The run options ``command`` takes, added from the engine's one table (``engine.fields``): their
    flags, converters, defaults, metavars and help texts, in the groups and the order it lays out.

    The converters hold the table's bound objects, so a value the command line takes is one the plan
    takes; an empty string names no file, folder, model, server or task, and every text option refuses
    one, except the raw --prompt ("" is how to encode without the model's default prompt)."""
    from embprof.engine.fields import LAYOUT, OPTION

    from . import options as o

    layout = LAYOUT[command]
    # A group named twice in the layout is one group: it is made once, where it is first named.
    groups = {title: p.add_argument_group(title) for title in dict.fromkeys(title for title, _ in layout)}
    for title, keys in layout:
        for key in keys:
            opt = OPTION[key]
            flags = opt.flags_in(command)
            kw: dict[str, Any] = {"dest": opt.key, "help": opt.help_in(command) or None}
            if opt.kind == "switch":
                kw.update(action="store_true", default=opt.default_in(command))
            else:
                if opt.bound is not None:
                    kw["type"] = o.converter(opt.bound)
                elif opt.kind == "text":
                    kw["type"] = o.Text(opt.hint)
                if opt.kind == "choice":
                    kw["choices"] = list(opt.choices)
                if opt.repeatable:
                    kw.update(action="append", default=[])  # a fresh list: argparse hands the default itself on
                else:
                    kw["default"] = opt.default_in(command)
                if opt.metavar is not None:
                    kw["metavar"] = opt.metavar
                if opt.required:
                    kw["required"] = True
            groups[title].add_argument(*flags, **kw)


def build_parser() -> argparse.ArgumentParser:
    from . import options as o

    parser = Parser(
        prog="embprof",
        description="Profile text-embedding models: load and encode latency, memory, CPU, GPU, prompts and ranking.",
        epilog=MAIN_EXAMPLES,
        formatter_class=Formatter,
    )
    # An empty string names no file, folder, model, server or task: every such option refuses one (o.NON_EMPTY).
    text = o.NON_EMPTY
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    add_run_options(parser, "dashboard")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run a workload headless and save its snapshot", formatter_class=Formatter,
                         description="Run one workload against one target, sampled live, and save a snapshot.",
                         epilog=MAIN_EXAMPLES)
    run.add_argument("--plan", type=text, metavar="FILE", help="run the plan in FILE (as --print-plan writes it) instead of a workload named here")
    run.add_argument("--profiles-dir", type=text, metavar="DIR", default=None, help="with --plan: where the snapshot is saved")
    run.add_argument("-q", "--quiet", action="store_true", help="with --plan: no progress lines")
    run.add_argument("--print-plan", action="store_true", help="with --plan: print the plan (validated) and exit")
    wl = run.add_subparsers(dest="workload", metavar="WORKLOAD")

    # Each workload's options come from the engine's table (engine.fields), as the dashboard's form's do.
    for name, help_ in (("speed", "MTEB v1 SpeedTask: 7 timed encodes of The Ugly Duckling"),
                        ("encode", "encode lines from a file, stdin or the sample corpus"),
                        ("similarity", "rank documents for queries; score matrix and margin"),
                        ("sweep", "measure across axes (lines, batch, tokens, threads, device, dtype, …) and fit latency"),
                        ("load", "load an embedding server: requests at a concurrency or a Poisson rate")):
        add_run_options(wl.add_parser(name, help=help_, epilog=RUN_EXAMPLES[name], formatter_class=Formatter), name)

    mt = sub.add_parser("mteb", help="run MTEB tasks with the sampler on; results in mteb's layout", epilog=MTEB_EXAMPLES,
                        formatter_class=Formatter,
                        description="Run MTEB tasks with mteb's own evaluators, with memory, CPU and GPU sampled through every phase.")
    add_run_options(mt, "mteb")

    tr = sub.add_parser("train", help="fine-tune a model with sentence-transformers' trainer: cost per step, scores before and after",
                        epilog=TRAIN_EXAMPLES, formatter_class=Formatter,
                        description="Fine-tune a local model with sentence-transformers' own trainer, sampled live and timed per step "
                                    "(data, forward, backward, optimizer), with the same evaluations before and after.")
    add_run_options(tr, "train")

    pr = sub.add_parser("prompts", help="list a model's built-in prompts", formatter_class=Formatter,
                        epilog="examples:\n  embprof prompts\n  embprof prompts --model google/embeddinggemma-300m --tsv > prompts.tsv\n")
    add_run_options(pr, "prompts")
    pr.add_argument("--tsv", action="store_true", help="tab-separated: name, role, prompt; a backslash, tab, line end or control character in a field is written as a backslash escape (\\\\, \\t, \\n, \\xNN), so each prompt is one line")

    ls = sub.add_parser("list", help="list saved snapshots", formatter_class=Formatter,
                        epilog="examples:\n  embprof list\n  embprof list --profiles-dir runs/\n")
    ls.add_argument("--profiles-dir", type=text, metavar="DIR", default=None, help="default: $EMBPROF_PROFILES_DIR or ./profiles")

    cp = sub.add_parser("compare", help="snapshots side by side: ratios, noise tests, environment differences",
                        formatter_class=Formatter,
                        epilog="examples:\n  embprof compare profiles/a.json profiles/b.json\n"
                        "  embprof compare a.json b.json c.json --format md -o compare.md    (charts beside it)\n")
    cp.add_argument("files", type=text, nargs="+", help="two or more snapshot JSON files; the first is the reference (A)")
    cp.add_argument("--format", choices=["text", "md", "csv", "json"], default="text")
    cp.add_argument("-o", "--output", type=text, metavar="FILE", help="write here (atomically); md also writes its charts beside it")
    cp.add_argument("--charts", choices=["svg", "png", "none"], default="svg", help="image format of the charts (default svg)")

    sh = sub.add_parser("show", help="print a snapshot", formatter_class=Formatter,
                        epilog="examples:\n  embprof show profiles/20261128T101500Z-ab12cd-speed-all-MiniLM-L6-v2.json\n")
    sh.add_argument("file", type=text, help="a snapshot JSON file")

    ex = sub.add_parser("export", help="write a snapshot as JSON, CSV or Markdown", formatter_class=Formatter,
                        epilog="examples:\n  embprof export run.json --format md -o report.md\n"
                        "  embprof export run.json --format csv --table batches -o batches.csv\n"
                        "  embprof export run.json --format csv --table timeline\n"
                        "tables: summary (long form), run, phases, timings, throughput, peaks, speed, tokens,\n"
                        "        similarity, encodes, batches, timeline, phase-events\n")
    ex.add_argument("file", type=text, help="a snapshot JSON file, or a matrix's folder (embprof matrix -o DIR)")
    ex.add_argument("--format", choices=["json", "csv", "md", "html"], default="md",
                    help="html: a matrix's report, one self-contained file with its charts (default md)")
    ex.add_argument("--table", type=text, default="summary", help="with --format csv: which table (default summary)")
    ex.add_argument("-o", "--output", type=text, metavar="FILE",
                    help="write here (atomically) instead of stdout; md writes a sweep's charts beside it")
    ex.add_argument("--charts", choices=["svg", "png", "none"], default="svg", help="image format of a sweep's or a knee search's charts (default svg)")

    rr = sub.add_parser("rerun", help="run a snapshot's plan again: the same target, workload and recording", formatter_class=Formatter,
                        epilog="examples:\n  embprof rerun profiles/<run>.json\n  embprof rerun profiles/<run>.json --print-plan > plan.json\n")
    rr.add_argument("file", type=text, help="a snapshot JSON file")
    rr.add_argument("--profiles-dir", type=text, metavar="DIR", default=None,
                    help="where the new snapshot is saved (default: $EMBPROF_PROFILES_DIR or ./profiles)")
    rr.add_argument("-q", "--quiet", action="store_true", help="no progress lines, only the summary")
    rr.add_argument("--print-plan", action="store_true", help="print the snapshot's plan as JSON and exit")

    sub.add_parser("schema", help="print the snapshot's JSON Schema")
    from .matrix_cli import add_parser as add_matrix_parser

    add_matrix_parser(sub, Formatter)
    return parser
