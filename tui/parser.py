"""The command line's parser: its commands, options, help texts and one-line errors.

Only argparse is imported here: `embprof --help` must never pay for torch, or even for the engine.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

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


def _add_target_args(p: argparse.ArgumentParser) -> None:
    from . import options as o

    g = p.add_argument_group("target")
    g.add_argument("-m", "--model", type=o.MODEL, help="Hugging Face id or local folder (default: the bundled all-MiniLM-L6-v2)")
    g.add_argument("--device", type=o.NON_EMPTY, default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    g.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"], help="weights' dtype")
    g.add_argument("--truncate-dim", type=o.TRUNCATE_DIM, metavar="N",
                   help=f"Matryoshka: keep the first N dimensions ({o.TRUNCATE_DIM.range_text}, at most the model's own)")
    g.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code to run (off by default)")
    g = p.add_argument_group("server target (instead of a local model)")
    g.add_argument("--server", type=o.NON_EMPTY, metavar="URL",
                   help="an embedding server, e.g. http://127.0.0.1:8080 (llama-server --embeddings)")
    g.add_argument("--api", choices=["llama", "openai"], default="llama", help="llama: POST /embedding; openai: POST /v1/embeddings")
    g.add_argument("--api-key-env", type=o.NON_EMPTY, metavar="VAR", help="the environment variable holding the API key (sent as a bearer token)")
    g.add_argument("--server-model", type=o.NON_EMPTY, metavar="NAME", help="openai: the 'model' field (default: the server's first model)")
    g.add_argument("--prompts-from", type=o.NON_EMPTY, metavar="MODEL", help="apply this model's prompts client-side (a Hub id or folder)")
    g.add_argument("--server-pid", type=o.SERVER_PID, metavar="PID",
                   help=f"sample this server process, {o.SERVER_PID.range_text} (default: found by the URL's port when local)")
    g.add_argument("--timeout", type=o.TIMEOUT, default=60.0, metavar="S",
                   help=f"seconds per request, {o.TIMEOUT.range_text} (default 60)")
    g.add_argument("--max-errors", type=o.MAX_ERRORS, default=0, metavar="N",
                   help=f"failed requests tolerated (retried) before the run stops, {o.MAX_ERRORS.range_text} (default 0)")


def _add_save_args(p: argparse.ArgumentParser) -> None:
    from . import options as o

    g = p.add_argument_group("recording")
    g.add_argument("--sample-hz", type=o.SAMPLE_HZ, default=10.0, metavar="HZ",
                   help=f"resource samples per second, {o.SAMPLE_HZ.range_text} (default 10)")
    g.add_argument(
        "--profiles-dir",
        type=o.NON_EMPTY,
        metavar="DIR",
        default=None,
        help="where the snapshot is saved (default: $EMBPROF_PROFILES_DIR or ./profiles)",
    )
    g.add_argument("-q", "--quiet", action="store_true", help="no progress lines, only the summary")
    g.add_argument("--print-plan", action="store_true", help="print the run plan as JSON and exit, without running it")


def build_parser() -> argparse.ArgumentParser:
    from . import options as o

    parser = Parser(
        prog="embprof",
        description="Profile text-embedding models: load and encode latency, memory, CPU, GPU, prompts and ranking.",
        epilog=MAIN_EXAMPLES,
        formatter_class=Formatter,
    )
    # An empty string names no file, folder, model, server or task: every such option refuses one (o.NON_EMPTY).
    # --prompt alone takes "": an empty raw prompt is how to encode without the model's default prompt.
    text = o.NON_EMPTY
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    app = parser.add_argument_group("the dashboard (embprof with no command)")
    app.add_argument("-m", "--model", type=o.MODEL, help="Hugging Face id or local folder (default: the bundled all-MiniLM-L6-v2)")
    app.add_argument("--device", type=text, default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    app.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"], help="weights' dtype")
    # The workload names are the engine's (plan.WORKLOADS): an unknown one is refused by the plan, in one sentence.
    app.add_argument("--workload", type=text, default="encode", metavar="WORKLOAD",
                     help="what runs at launch: a workload of `embprof run` or mteb (default encode)")
    app.add_argument("-t", "--task", type=text, action="append", default=[], metavar="TASK", help="mteb: a task to run (repeatable)")
    app.add_argument("--server", type=text, metavar="URL", help="profile an embedding server instead of a local model")
    app.add_argument("--api", choices=["llama", "openai"], default="llama", help="the server's API (default llama)")
    app.add_argument("--data-dir", type=text, metavar="DIR", help="mteb: local task data (see `embprof mteb --help`)")
    app.add_argument("--no-autostart", action="store_true", help="open the dashboard without starting a run")
    app.add_argument("--plan", type=text, metavar="FILE",
                     help="start the plan in FILE (any command's --print-plan writes one: `embprof train … --print-plan > p.json`)")
    app.add_argument("--input", type=text, metavar="FILE", help="encode: lines to encode (default: the sample corpus)")
    app.add_argument("--text", type=text, metavar="FILE", help="speed: the_ugly_duckling.txt")
    app.add_argument("--repeats", type=o.REPEATS, default=3, metavar="N", help=f"encode: timed passes, {o.REPEATS.range_text} (default 3)")
    app.add_argument("--loops", type=o.LOOPS, default=7, metavar="N", help=f"speed: timed loops, {o.LOOPS.range_text} (default 7)")
    app.add_argument("--sample-hz", type=o.SAMPLE_HZ, default=10.0, metavar="HZ",
                     help=f"resource samples per second, {o.SAMPLE_HZ.range_text} (default 10)")
    app.add_argument("--profiles-dir", type=text, metavar="DIR", default=None, help="default: $EMBPROF_PROFILES_DIR or ./profiles")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run a workload headless and save its snapshot", formatter_class=Formatter,
                         description="Run one workload against one target, sampled live, and save a snapshot.",
                         epilog=MAIN_EXAMPLES)
    run.add_argument("--plan", type=text, metavar="FILE", help="run the plan in FILE (as --print-plan writes it) instead of a workload named here")
    run.add_argument("--profiles-dir", type=text, metavar="DIR", default=None, help="with --plan: where the snapshot is saved")
    run.add_argument("-q", "--quiet", action="store_true", help="with --plan: no progress lines")
    run.add_argument("--print-plan", action="store_true", help="with --plan: print the plan (validated) and exit")
    wl = run.add_subparsers(dest="workload", metavar="WORKLOAD")

    sp = wl.add_parser("speed", help="MTEB v1 SpeedTask: 7 timed encodes of The Ugly Duckling", epilog=RUN_EXAMPLES["speed"], formatter_class=Formatter)
    _add_target_args(sp)
    g = sp.add_argument_group("speed")
    g.add_argument("--text", type=text, metavar="FILE", help="the_ugly_duckling.txt (see below for the order it is looked for)")
    g.add_argument("--loops", type=o.LOOPS, default=7, metavar="N", help=f"timed loops, {o.LOOPS.range_text} (default 7, as mteb)")
    g.add_argument("--batch-size", type=o.BATCH_SIZE, default=32, metavar="N",
                   help=f"encode batch size, {o.BATCH_SIZE.range_text} (default 32)")
    g.add_argument("--vs", type=text, metavar="MODEL", help="a second model run alternately with the first (the loops become pairs)")
    _add_save_args(sp)

    en = wl.add_parser("encode", help="encode lines from a file, stdin or the sample corpus", epilog=RUN_EXAMPLES["encode"], formatter_class=Formatter)
    _add_target_args(en)
    g = en.add_argument_group("encode")
    g.add_argument("-i", "--input", type=text, metavar="FILE", help="one text per line; '-' for stdin (default: built-in sample corpus)")
    g.add_argument("--as", dest="mode", choices=["plain", "query", "document"], default="plain",
                   help="encode_query / encode_document with the model's own prompts, or plain encode")
    g.add_argument("--prompt-name", type=text, help="one of the model's prompts (see `embprof prompts`)")
    g.add_argument("--prompt", help="a raw prompt prefix, e.g. 'task: search result | query: ' ('' for none at all)")
    g.add_argument("--batch-size", type=o.BATCH_SIZE, default=32, metavar="N", help=f"{o.BATCH_SIZE.range_text} (default 32)")
    g.add_argument("--warmups", type=o.WARMUPS, default=1, metavar="N",
                   help=f"untimed warm-up passes, {o.WARMUPS.range_text} (default 1; recorded, not counted)")
    g.add_argument("--repeats", type=o.REPEATS, default=3, metavar="N",
                   help=f"timed passes, {o.REPEATS.range_text} (default 3; with --vs, the pairs)")
    g.add_argument("--vs", type=text, metavar="MODEL",
                   help="a second model (id or folder; 'bundled' for all-MiniLM-L6-v2) run alternately with the first")
    g.add_argument("--compare-model", type=text, metavar="MODEL",
                   help="with --server: embed the same texts with this local model ('bundled' for all-MiniLM-L6-v2) and report the cosine per text")
    _add_save_args(en)

    si = wl.add_parser("similarity", help="rank documents for queries; score matrix and margin", epilog=RUN_EXAMPLES["similarity"], formatter_class=Formatter)
    _add_target_args(si)
    g = si.add_argument_group("similarity")
    g.add_argument("--query", type=text, action="append", default=[], help="a query (repeatable)")
    g.add_argument("--docs", type=text, metavar="FILE", help="documents, one per line")
    g.add_argument("--prompt-name", type=text, help="use this prompt for both sides instead of the query/document prompts")
    g.add_argument("--query-prompt-name", type=text, help="prompt for the queries only")
    g.add_argument("--doc-prompt-name", type=text, help="prompt for the documents only")
    _add_save_args(si)

    sw = wl.add_parser("sweep", help="measure across axes (lines, batch, tokens, threads, device, dtype, …) and fit latency",
                       epilog=RUN_EXAMPLES["sweep"], formatter_class=Formatter)
    _add_target_args(sw)
    g = sw.add_argument_group("sweep")
    g.add_argument("--axis", type=text, action="append", default=[], metavar="NAME=V1,V2,…",
                   help="an axis and its values (repeatable; several axes make a grid): lines, batch, tokens, threads, "
                   "device, dtype, truncate_dim, max_seq_length")
    g.add_argument("-i", "--input", type=text, metavar="FILE", help="texts, one per line (default: the built-in sample corpus)")
    g.add_argument("--as", dest="mode", choices=["plain", "query", "document"], default="plain")
    g.add_argument("--prompt-name", type=text, help="one of the model's prompts")
    g.add_argument("--batch-size", type=o.BATCH_SIZE, default=None, metavar="N",
                   help=f"when batch is not an axis, {o.BATCH_SIZE.range_text} (default 32)")
    g.add_argument("--target-ci", type=o.TARGET_CI, default=2.0, metavar="PERCENT",
                   help=f"repeat a point until its median's 95%% CI is within ±PERCENT, {o.TARGET_CI.range_text} (default 2)")
    g.add_argument("--budget", type=o.BUDGET, default=30.0, metavar="S",
                   help=f"stop repeating a point once the next repeat would pass S seconds, {o.BUDGET.range_text} "
                   "(default 30; at least 3 repeats run)")
    g.add_argument("--until-oom", action="store_true", help="grow the batch (or tokens) axis until out of memory or the RAM ceiling")
    g.add_argument("--ram-ceiling", type=o.RAM_CEILING, metavar="MIB",
                   help=f"with --until-oom: stop once peak RSS passes this many MiB, {o.RAM_CEILING.range_text}")
    _add_save_args(sw)

    ld = wl.add_parser("load", help="load an embedding server: requests at a concurrency or a Poisson rate", epilog=RUN_EXAMPLES["load"],
                       formatter_class=Formatter)
    _add_target_args(ld)
    g = ld.add_argument_group("load")
    g.add_argument("--requests", type=o.REQUESTS, metavar="N", help=f"send N requests, {o.REQUESTS.range_text} (default 200)")
    g.add_argument("--duration", type=o.DURATION, metavar="S", help=f"send for S seconds instead, {o.DURATION.range_text}")
    g.add_argument("--concurrency", type=o.CONCURRENCY, metavar="C",
                   help=f"C requests in flight, each sent when one returns, {o.CONCURRENCY.range_text} (default 1)")
    g.add_argument("--rate", type=o.RATE, metavar="R",
                   help=f"R requests per second on average, Poisson arrivals, {o.RATE.range_text}")
    g.add_argument("--batch", type=o.LOAD_BATCH, default=1, metavar="K", help=f"texts per request, {o.LOAD_BATCH.range_text} (default 1)")
    g.add_argument("--load-processes", type=o.LOAD_PROCESSES, default=None, metavar="P",
                   help=f"client processes sending the load, each an event loop of its own, {o.LOAD_PROCESSES.range_text} (default 1); "
                        "their every request's times are merged")
    g.add_argument("--records", type=text, metavar="DIR",
                   help="write every request's times there too, one JSON-lines file per load process (send, answer, schedule)")
    k = ld.add_argument_group("finding the knee")
    k.add_argument("--find-knee", action="store_true", default=None,
                   help="step an open-loop rate up (from --rate, or half what one connection sustains) until the objective "
                        "breaks, then bisect: the largest rate that holds it, with its curve")
    k.add_argument("--slo-p99", type=o.SLO_P99, metavar="MS", help=f"the objective's p99 latency, {o.SLO_P99.range_text} (default 200)")
    k.add_argument("--slo-errors", type=o.SLO_ERRORS, metavar="PCT",
                   help=f"the objective's failed requests, {o.SLO_ERRORS.range_text} (default 0.1)")
    k.add_argument("--step-duration", type=o.STEP_DURATION, metavar="S", help=f"each step's length, {o.STEP_DURATION.range_text} (default 5)")
    k.add_argument("--max-rate", type=o.RATE, metavar="R", help="the highest rate to try (default: no limit but the search's own)")
    g.add_argument("-i", "--input", type=text, metavar="FILE", help="texts, one per line, sent in turn (default: the built-in sample corpus)")
    g.add_argument("--text-tokens", type=o.TEXT_TOKENS, metavar="N",
                   help=f"texts of N tokens each (llama.cpp's tokenizer where the server has one; else estimated), {o.TEXT_TOKENS.range_text}")
    g.add_argument("--mix", type=text, metavar="SPEC",
                   help="texts from several sources in stated shares, e.g. queries.txt:0.8,tokens=512:0.2 (a source is a file "
                        "of lines or tokens=N); latency is also reported by source")
    g.add_argument("--prompt-name", type=text, help="a prompt from --prompts-from, applied to every text")
    _add_save_args(ld)

    mt = sub.add_parser("mteb", help="run MTEB tasks with the sampler on; results in mteb's layout", epilog=MTEB_EXAMPLES,
                        formatter_class=Formatter,
                        description="Run MTEB tasks with mteb's own evaluators, with memory, CPU and GPU sampled through every phase.")
    _add_target_args(mt)
    g = mt.add_argument_group("mteb")
    g.add_argument("-t", "--task", dest="tasks", type=text, action="append", default=[], metavar="TASK",
                   help="an MTEB task name (repeatable)")
    g.add_argument("--data-dir", type=text, metavar="DIR", help="local task data, for offline runs (layout below)")
    g.add_argument("--results-dir", type=text, metavar="DIR", default="results", help="where results files go (default ./results)")
    g.add_argument("--batch-size", type=o.BATCH_SIZE, default=32, metavar="N",
                   help=f"encode batch size, {o.BATCH_SIZE.range_text} (default 32, as mteb)")
    g.add_argument("--loops", type=o.LOOPS, default=7, metavar="N",
                   help=f"CPUSpeedTask/GPUSpeedTask: timed loops, {o.LOOPS.range_text} (default 7)")
    g.add_argument("--text", type=text, metavar="FILE", help="CPUSpeedTask/GPUSpeedTask: the_ugly_duckling.txt")
    g.add_argument("--list-tasks", action="store_true", help="print every task name mteb knows and exit")
    _add_save_args(mt)

    tr = sub.add_parser("train", help="fine-tune a model with sentence-transformers' trainer: cost per step, scores before and after",
                        epilog=TRAIN_EXAMPLES, formatter_class=Formatter,
                        description="Fine-tune a local model with sentence-transformers' own trainer, sampled live and timed per step "
                                    "(data, forward, backward, optimizer), with the same evaluations before and after.")
    _add_target_args(tr)
    g = tr.add_argument_group("training")
    g.add_argument("--train-file", type=text, required=True, metavar="FILE",
                   help='JSON Lines: {"sentence1","sentence2","score"}, {"anchor","positive"} or {"anchor","positive","negative"}')
    g.add_argument("--max-examples", type=o.MAX_EXAMPLES, metavar="N", help=f"train on the first N rows of the file only, {o.MAX_EXAMPLES.range_text}")
    g.add_argument("--loss", choices=["auto", "cosent", "mnrl", "triplet"], default="auto",
                   help="auto: CoSENT for scored pairs, MultipleNegativesRanking for pairs and triplets")
    g.add_argument("--epochs", type=o.EPOCHS, default=1.0, metavar="N", help=f"passes over the data, {o.EPOCHS.range_text} (default 1; a fraction is a share of one)")
    g.add_argument("--max-steps", type=o.MAX_STEPS, metavar="N", help=f"stop after N optimizer steps, whatever --epochs says, {o.MAX_STEPS.range_text}")
    g.add_argument("--batch-size", type=o.BATCH_SIZE, default=16, metavar="N", help=f"rows per step, {o.BATCH_SIZE.range_text} (default 16)")
    g.add_argument("--lr", "--learning-rate", dest="learning_rate", type=o.LEARNING_RATE, default=2e-5, metavar="LR", help=f"peak learning rate, {o.LEARNING_RATE.range_text} (default 2e-5)")
    g.add_argument("--warmup", type=o.WARMUP, default=0.1, metavar="SHARE", help=f"share of the steps spent warming up the rate, {o.WARMUP.range_text} (default 0.1)")
    g.add_argument("--prompt", help="a prompt prepended to every training text, e.g. 'task: clustering | query: '")
    g.add_argument("--prompt-name", type=text, help="or one of the model's prompts, by name (see `embprof prompts`)")
    g.add_argument("--seed", type=o.SEED, default=42, metavar="N", help=f"the trainer's seed, {o.SEED.range_text} (default 42)")
    g.add_argument("-o", "--output", type=text, metavar="DIR",
                   help="a new folder for the trained model (default ./trained/<model>-<time>)")
    g = tr.add_argument_group("evaluations (each runs before and after training)")
    g.add_argument("-t", "--task", dest="tasks", type=text, action="append", default=[], metavar="TASK", help="an MTEB task (repeatable)")
    g.add_argument("--data-dir", type=text, metavar="DIR", help="local MTEB task data, for offline runs (see `embprof mteb --help`)")
    g.add_argument("--results-dir", type=text, metavar="DIR", default="results", help="where MTEB results files go (default ./results)")
    g.add_argument("--neighbours", type=text, action="append", default=[], metavar="FILE",
                   help='a labelled file, {"text","label"} per line: top-K neighbour accuracy (repeatable)')
    g.add_argument("--top-k", type=o.TOP_K, default=5, metavar="K", help=f"neighbours per text, {o.TOP_K.range_text} (default 5)")
    g.add_argument("--distance", choices=["cosine", "euclidean"], default="cosine", help="the neighbours' distance (default cosine)")
    g.add_argument("--eval-batch-size", type=o.BATCH_SIZE, default=32, metavar="N", help=f"encode batch size of the evaluations, {o.BATCH_SIZE.range_text} (default 32)")
    _add_save_args(tr)

    pr = sub.add_parser("prompts", help="list a model's built-in prompts", formatter_class=Formatter,
                        epilog="examples:\n  embprof prompts\n  embprof prompts --model google/embeddinggemma-300m --tsv > prompts.tsv\n")
    _add_target_args(pr)
    pr.add_argument("--tsv", action="store_true", help="tab-separated: name, role, prompt")

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
