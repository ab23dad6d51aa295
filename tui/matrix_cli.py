"""`embprof matrix`: many configurations, cost and quality side by side, and the frontier."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

MATRIX_EXAMPLES = """\
examples:
  embprof matrix --backend torch,onnx,openvino --quantize none,int8 --precision float32,int8,binary \\
                 -t STS16 -t JSTS --data-dir datasets/          the bundled MiniLM, offline
  embprof matrix -m google/embeddinggemma-300m -m Qwen/Qwen3-Embedding-0.6B --device cpu,cuda \\
                 --dtype float32,bfloat16 --truncate-dim full,256,128
  embprof matrix --server http://127.0.0.1:8080 --server-of bundled --server-name "MiniLM q8_0 (llama.cpp)"
  embprof matrix --spec matrix.toml                       the same axes from a TOML or YAML file
  embprof matrix --spec matrix.toml --list-cells          the cells and the dropped combinations, without running
  embprof export results/matrix --format html -o matrix.html
A matrix's folder keeps each cell's snapshot: running the same matrix again runs only the cells that
have none (an interrupted cell runs again; --retry-failed runs failed ones again too).
"""


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def add_parser(sub: Any, formatter: type[argparse.HelpFormatter]) -> None:
    from . import options as o

    # As everywhere on the command line, an empty string names nothing: refused while parsing (o.NON_EMPTY).
    text = o.NON_EMPTY
    mx = sub.add_parser("matrix", help="many configurations: cost and quality per cell, and the quality-versus-cost frontier",
                        formatter_class=formatter, epilog=MATRIX_EXAMPLES,
                        description="Measure a grid of models, backends, weights, output precisions, dimensions and devices "
                        "(and servers): each cell in its own process, cost and quality on the same embeddings.")
    mx.add_argument("--spec", type=text, metavar="FILE", help="the matrix from a TOML or YAML file (options given here override it)")
    g = mx.add_argument_group("axes (comma-separated lists)")
    g.add_argument("-m", "--model", type=text, action="append", default=None, metavar="MODEL",
                   help="a Hub id or folder, repeatable (default: the bundled all-MiniLM-L6-v2; 'bundled' names it)")
    g.add_argument("--device", type=_csv, metavar="LIST", help="cpu, cuda, cuda:N, mps (default cpu)")
    g.add_argument("--dtype", type=_csv, metavar="LIST", help="torch weights: float32, float16, bfloat16 (default float32)")
    g.add_argument("--backend", type=_csv, metavar="LIST", help="torch, onnx, openvino (default torch)")
    g.add_argument("--quantize", type=_csv, metavar="LIST", help="weights: none, int8 (onnx / openvino; default none)")
    g.add_argument("--quantize-mode", choices=["per-channel", "per-tensor"], help="onnx int8 weight scales (default per-channel)")
    g.add_argument("--truncate-dim", type=o.MATRIX_TRUNCATE_DIMS, metavar="LIST",
                   help=f"full or N ({o.MATRIX_TRUNCATE_DIMS.least}–{o.MATRIX_TRUNCATE_DIMS.most}): Matryoshka dimensions kept (default full)")
    g.add_argument("--precision", type=_csv, metavar="LIST", help="output vectors: float32, int8, binary (default float32)")
    g.add_argument("--cell", type=text, action="append", default=None, metavar="K=V,…",
                   help="a chosen cell instead of every combination, repeatable: e.g. backend=onnx,quantize=int8 "
                   "(keys: model, device, dtype, backend, quantize, quantize_mode, truncate_dim, precision; the rest: each axis's first value)")
    g = mx.add_argument_group("servers (each is a cell too)")
    g.add_argument("--server", type=text, action="append", default=None, metavar="URL", help="an embedding server, repeatable")
    g.add_argument("--api", choices=["auto", "llama", "openai", "tei", "ollama"], help="the servers' API (default llama; auto: asked on connect)")
    g.add_argument("--server-of", type=text, action="append", default=None, metavar="MODEL",
                   help="the model a server serves, in --server order (one for all): its agreement is against that model")
    g.add_argument("--server-name", type=text, action="append", default=None, metavar="NAME", help="how the table names a server, in --server order")
    g = mx.add_argument_group("what each cell measures")
    g.add_argument("--cost-workload", type=text, metavar="WHAT", help="speed (the speed protocol's text, default) or encode:FILE (lines of FILE)")
    g.add_argument("--text", type=text, metavar="FILE", help="speed: the_ugly_duckling.txt (default: $EMBPROF_SPEED_TEXT or the cache)")
    g.add_argument("--loops", type=o.CELL_LOOPS, metavar="N", help=f"timed encodes of the cost text, {o.CELL_LOOPS.range_text} (default 10)")
    g.add_argument("--batch-size", type=o.BATCH_SIZE, metavar="N", help=f"{o.BATCH_SIZE.range_text} (default 32)")
    g.add_argument("-t", "--task", type=text, action="append", default=None, metavar="TASK", help="an mteb task, repeatable (default STS16 and JSTS)")
    g.add_argument("--data-dir", type=text, metavar="DIR", help="local task data (as for embprof mteb)")
    g.add_argument("--top-k", type=o.TOP_K, metavar="K", help=f"ranking overlap on the similarity example, {o.TOP_K.range_text} (default 3)")
    g.add_argument("--energy-window", type=o.ENERGY_WINDOW, metavar="S",
                   help=f"minimum energy window in seconds, {o.ENERGY_WINDOW.range_text} (default 1)")
    g = mx.add_argument_group("the run")
    g.add_argument("-o", "--out", type=text, metavar="DIR", default="results/matrix", help="the matrix's folder (default results/matrix)")
    g.add_argument("--retry-failed", action="store_true", help="run failed cells again too")
    g.add_argument("--cold", action="store_true",
                   help="start every cell in a fresh interpreter, not forked from the warm parent that imported once (slower)")
    g.add_argument("--ray", nargs="?", const="auto", default=None, type=text, metavar="ADDRESS",
                   help="run the cells on a Ray cluster: RAY_ADDRESS or a local one (auto), or the head's ADDRESS "
                        "(needs the ray extra: pip install 'embprof[ray]')")
    g.add_argument("--ray-cpus", type=o.RAY_CPUS, default=1, metavar="N",
                   help=f"with --ray: CPUs a CPU cell asks for, and its torch threads, {o.RAY_CPUS.range_text} (default 1)")
    g.add_argument("--list-cells", action="store_true", help="print the cells and the dropped combinations, and exit")
    g.add_argument("--print-spec", action="store_true", help="print the matrix as JSON and exit")
    g.add_argument("--dashboard", action="store_true", help="watch the matrix fill in, in the dashboard's Matrix view")
    g.add_argument("--sample-hz", type=o.SAMPLE_HZ, metavar="HZ",
                   help=f"resource samples per second in each cell, {o.SAMPLE_HZ.range_text} (default 10)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress lines, only the table")


def spec_of(args: argparse.Namespace) -> Any:
    from embprof.engine.errors import UserError
    from embprof.engine.files import repeated_key
    from embprof.engine.matrix import MatrixSpec, load_spec, validate_spec
    from embprof.engine.text import one_line

    loaded = load_spec(args.spec) if args.spec else MatrixSpec()
    # The options override the file: the axes by name, and the base plan's settings given flat (loops,
    # cost_input, sample_hz …), which the spec puts into its base plan over what the file's says.
    data: dict[str, Any] = loaded.model_dump(mode="json")
    explicit_models = args.model is not None
    if explicit_models:
        data["models"] = args.model
    elif args.server and not args.spec:
        data["models"] = []  # servers alone: no local model unless one is named
    for option, key in (("device", "devices"), ("dtype", "dtypes"), ("backend", "backends"), ("quantize", "quantize"),
                        ("truncate_dim", "truncate_dims"), ("precision", "precisions")):
        value = getattr(args, option)
        if value is not None:
            if not value:
                raise UserError(f"--{option.replace('_', '-')} has no values")
            if option == "truncate_dim":
                try:
                    value = [None if v == "full" else int(v) for v in value]
                except ValueError:
                    raise UserError(f"--truncate-dim takes full or whole numbers, not '{','.join(value)}'") from None
            data[key] = value
    if args.cell is not None:
        cells = []
        for text in args.cell:
            chosen: dict[str, Any] = {}
            for part in _csv(text):
                k, sep, v = part.partition("=")
                k = k.strip().replace("-", "_")
                if not sep or not v.strip():
                    raise UserError(f"--cell takes KEY=VALUE pairs separated by commas, not '{text}'")
                if k in chosen:  # backend=torch,backend=onnx: which one was meant cannot be known
                    raise repeated_key(f"--cell '{one_line(text)}'", k)
                # ASCII digits only: "²" passes isdigit() and is no number int() reads; as text it is refused by its type.
                whole = v.isascii() and v.isdigit()
                chosen[k] = (None if v == "full" else int(v)) if k == "truncate_dim" and (v == "full" or whole) else v.strip()
            cells.append(chosen)
        data["cells"] = cells
    if args.quantize_mode:
        data["quantize_mode"] = args.quantize_mode
    if args.server:
        names, ofs = args.server_name or [], args.server_of or []
        if len(names) not in (0, len(args.server)):
            raise UserError(f"--server-name is given {len(names)} times for {len(args.server)} servers")
        if len(ofs) not in (0, 1, len(args.server)):
            raise UserError(f"--server-of is given {len(ofs)} times for {len(args.server)} servers: give one, or one per server")
        servers = []
        for i, url in enumerate(args.server):
            s: dict[str, Any] = {"url": url, "api": args.api or "llama"}
            if names:
                s["name"] = names[i]
            if ofs:
                s["of"] = ofs[i] if len(ofs) > 1 else ofs[0]
            servers.append(s)
        data["servers"] = servers
    elif args.server_of or args.server_name:
        raise UserError("--server-of and --server-name go with --server")
    if args.cost_workload:
        kind, _, path = args.cost_workload.partition(":")
        if kind == "speed" and not path:
            data["cost"], data["cost_input"] = "speed", None
        elif kind == "encode" and path:
            data["cost"], data["cost_input"] = "encode", path
        else:
            raise UserError(f"--cost-workload takes speed or encode:FILE, not '{args.cost_workload}'")
    for option, key in (("text", "text"), ("loops", "loops"), ("batch_size", "batch_size"), ("data_dir", "data_dir"), ("top_k", "top_k"),
                        ("energy_window", "energy_min_window_s"), ("sample_hz", "sample_hz")):
        if getattr(args, option) is not None:
            data[key] = getattr(args, option)
    if args.task is not None:
        data["tasks"] = args.task
    return validate_spec(data)


def cmd_matrix(args: argparse.Namespace) -> int:
    from embprof.engine.matrix import ClusterLost, MatrixInterrupted, check_placements, expand, rows, run_matrix
    from embprof.engine.matrix.folder import check_folder, check_inputs_of

    from embprof.engine.errors import OutputError
    from embprof.engine.text import json_text, one_line

    from . import shutdown
    from .console import error_console, output_console
    from .exits import write_stdout
    from .matrix_tables import print_tables

    spec = spec_of(args)
    folder = Path(args.out)
    if args.print_spec:
        write_stdout(json_text(spec.to_json()))  # model names and paths are outside text
        return 0
    out = output_console()
    if args.list_cells:
        # A cell a line, read by scripts: a label, a reason or a note quoting a newline stays on its line.
        exp = expand(spec, folder) if not args.ray else _expand_on_cluster(spec, folder, args.ray)
        for i, c in enumerate(exp.cells, 1):
            out.print(f"{i:>3}. {one_line(c.label)}" + (" (reference)" if c.reference else "") + f"  [{c.cell_id}]", markup=False,
                      soft_wrap=True)
        for d in exp.dropped:
            out.print(f"  dropped: {one_line(d.label)}: {one_line(d.reason)}", markup=False, soft_wrap=True)
        for n in exp.notes:
            out.print(f"  note: {one_line(n)}", markup=False, soft_wrap=True)
        return 0
    if args.dashboard:
        from embprof.engine.errors import UserError

        # run_matrix makes every check that can refuse the matrix before it writes anything; the
        # dashboard makes them once more first, so that a refusal is a line here and not a screen.
        check_placements(spec, args.ray)
        check_folder(folder)
        check_inputs_of(spec, folder)

        if not sys.stdout.isatty() or not sys.stdin.isatty():
            raise UserError("the dashboard needs a terminal; without --dashboard the matrix runs headless")
        from .matrix_app import run_matrix_app

        return run_matrix_app(spec, folder, retry_failed=args.retry_failed, ray_address=args.ray, ray_cpus=args.ray_cpus, cold=args.cold)
    err = error_console()
    listener = progress_printer(err, args.quiet)
    lost: str | None = None
    try:
        manifest = run_matrix(spec, folder, listener, retry_failed=args.retry_failed, ray_address=args.ray, ray_cpus=args.ray_cpus,
                              cold=args.cold)
        interrupted, table_rows = False, manifest.rows
    except MatrixInterrupted:
        interrupted = True
        try:
            err.print(f"interrupted ({shutdown.name(shutdown.received())}): the finished cells are kept; "
                      "run the same matrix again to go on", markup=False)
        except OSError:  # no terminal left (SIGHUP): the cells are on disk whatever happens here
            pass
        manifest, table_rows = rows(folder)
    except ClusterLost as exc:  # only with --ray: the cluster went away mid-matrix
        interrupted, lost = False, str(exc)
        manifest, table_rows = rows(folder)
    try:
        print_tables(out, manifest, table_rows)
        out.print(f"matrix: {one_line(folder)}", markup=False, soft_wrap=True)
    except OutputError as exc:  # stdout cannot be written (a full disk behind `>`): the cells are on disk all the same
        said = f"{exc}: the matrix's table could not be shown; its cells are saved in {one_line(folder)}"
        if not interrupted and lost is None:
            raise OutputError(said, exc.path) from None
        err.print(f"embprof: error: {said}", markup=False, soft_wrap=True)  # a stop's or a lost cluster's line and status follow
    if lost is not None:
        err.print(f"embprof: error: {one_line(lost)}", markup=False, soft_wrap=True)
        return 1
    if interrupted:
        return shutdown.exit_status(shutdown.received())
    return 0 if all(r.status == "ok" for r in table_rows) else 1


def _expand_on_cluster(spec: Any, folder: Path, address: str) -> Any:
    """The cells as a run on the cluster would have them: its GPUs, not this machine's, decide the CUDA cells."""
    import tempfile

    from embprof.engine.matrix import expand
    from embprof.engine.matrix.ray import RayRun

    with tempfile.TemporaryDirectory(prefix="embprof-ray-list-") as tmp:
        run = RayRun(address, Path(tmp), 1, log_path=Path(tmp) / "ray-driver.log")
        try:
            cluster = run.survey()
        finally:
            run.close()
    return expand(spec, folder, have_cuda=cluster.has_gpu, where="any node of the Ray cluster")


def progress_printer(err: Any, quiet: bool) -> Any:
    from embprof.engine.matrix import MatrixEvent
    from embprof.engine.tables import fmt
    from embprof.engine.text import one_line

    def listener(e: MatrixEvent) -> None:
        if quiet and e.kind != "note":
            return
        # A label, a phase or a reason (a cell's last words, Ray's) quoting a newline stays on its cell's line.
        label, text = one_line(e.label), one_line(e.text)
        if e.kind == "note":
            err.print(f"{label + ': ' if label else ''}{text}", markup=False, soft_wrap=True)
        elif e.kind == "export":
            err.print(f"export: {text}", markup=False, soft_wrap=True)
        elif e.kind == "start":
            err.print(f"[{e.index}/{e.total}] {label}" + (f" {text}" if text else ""), markup=False, soft_wrap=True)
        elif e.kind == "skip":
            err.print(f"[{e.index}/{e.total}] {label}: {text}", markup=False, soft_wrap=True)
        elif e.kind == "end" and e.row is not None:
            r = e.row
            figures = f"quality {fmt(r.quality, 4)} · p50 {fmt(r.p50_s, 4)} s · status {r.status}"
            err.print(f"[{e.index}/{e.total}] {label}: {figures}" + (f" ({one_line(r.reason)})" if r.reason else ""), markup=False,
                      soft_wrap=True)

    return listener


def export_matrix(args: argparse.Namespace) -> int:
    """A matrix's folder as md (charts beside the file), html (one self-contained file), csv or json."""
    import json

    from embprof.engine.files import atomic_write_bytes
    from embprof.engine.frontier import frontiers
    from embprof.engine.matrix import rows
    from embprof.engine.matrix_report import matrix_charts, matrix_html, matrix_markdown, matrix_tables
    from embprof.engine.tables import tables_json, to_csv

    folder = Path(args.file)
    manifest, table_rows = rows(folder)
    fr = frontiers(table_rows)
    title = f"embprof matrix: {folder.name}"
    if args.format == "md":
        images: list[str] = []
        if args.output and args.charts != "none":
            out = Path(args.output)
            images = [p.name for p in matrix_charts(table_rows, fr, out.parent, out.stem, args.charts)]
        text = matrix_markdown(title, table_rows, fr, manifest.dropped, images)
    elif args.format == "html":
        meta = {"cells": len(table_rows), "finished": sum(r.status != "pending" for r in table_rows),
                "cost workload": next((r.cost_workload for r in table_rows if r.cost_workload), None),
                "tasks": ", ".join(manifest.spec.base.workload.tasks), "matrix": str(folder)}
        text = matrix_html(title, table_rows, fr, manifest.dropped, meta)
    elif args.format == "csv":
        text = to_csv(matrix_tables(table_rows, fr, manifest.dropped)[0])
    else:
        text = json.dumps({"rows": [r.model_dump(mode="json") for r in table_rows],
                           "frontiers": [f.model_dump(mode="json") for f in fr],
                           "dropped": [{"label": d.label, "reason": d.reason} for d in manifest.dropped],
                           "tables": json.loads(tables_json(matrix_tables(table_rows, fr, manifest.dropped)))}, indent=1) + "\n"
    if args.output:
        atomic_write_bytes(Path(args.output), text.encode("utf-8"))
    else:
        from .exits import write_stdout

        write_stdout(text)
    return 0
