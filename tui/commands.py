"""The command line's commands: each takes the parsed options and returns an exit status.

The engine is imported by the command that needs it, never at start-up.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .exits import EXIT_OK, stdout_gone, write_stdout

if TYPE_CHECKING:
    from collections.abc import Callable

    from embprof.engine.plan import RunPlan

def profiles_dir(arg: str | None) -> Path:
    return Path(arg or os.environ.get("EMBPROF_PROFILES_DIR") or "profiles")


def _plan_of(args: argparse.Namespace) -> RunPlan:
    """The run plan of a command line: from --plan FILE, or from the options (the one assembly, in the engine)."""
    from embprof.engine.errors import UserError
    from embprof.engine.plan import load_plan, plan_from_options

    plan_file = getattr(args, "plan", None)
    if plan_file:
        if getattr(args, "workload", None):
            raise UserError("give a workload or --plan FILE, not both")
        return load_plan(plan_file)
    if not getattr(args, "workload", None):
        raise UserError("name a workload (encode, speed, similarity, sweep, load) or give --plan FILE; see embprof run --help")
    return plan_from_options(vars(args))


def cmd_run(args: argparse.Namespace) -> int:
    plan = _plan_of(args)
    if getattr(args, "print_plan", False):
        from embprof.engine.text import json_text

        write_stdout(json_text(plan.to_json()))
        return EXIT_OK
    return execute_plan(plan, args)


def cmd_rerun(args: argparse.Namespace) -> int:
    from embprof.engine.errors import UserError
    from embprof.engine.snapshot import load

    snap = load(args.file)
    if snap.plan is None:
        raise UserError(f"snapshot '{args.file}' holds no run plan to run again: {snap.plan_note or 'it was not recorded'}")
    if args.print_plan:
        from embprof.engine.text import json_text

        write_stdout(json_text(snap.plan.to_json()))  # the plan as the snapshot file holds it: outside text
        return EXIT_OK
    return execute_plan(snap.plan, args)


# The tables a finished run prints (the rest are in `embprof show`).
RUN_TABLES = {"latency", "latency-by-kind", "throughput", "peaks", "speed", "tokens", "similarity", "errors", "mteb", "notes", "sweep",
              "fit", "fit-notes", "memory-limit", "vs", "load", "load-split", "load-sources", "knee", "knee-steps", "agreement", "requests", "server", "training", "training-steps",
              "before-after"}


def execute_plan(plan: RunPlan, args: argparse.Namespace) -> int:
    """Run a plan headless: progress on stderr, tables on stdout, the snapshot saved."""
    from embprof.engine import snapshot as snap_mod
    from embprof.engine.errors import OutputError
    from embprof.engine.files import ensure_writable_dir
    from embprof.engine.report import summary_tables
    from embprof.engine.results import MtebTask
    from embprof.engine.session import Session
    from embprof.engine.text import one_line

    from . import shutdown
    from .console import ConsoleProgress, error_console, output_console, render_table

    out_dir = ensure_writable_dir(profiles_dir(args.profiles_dir), "profiles folder")
    err = error_console()
    out = output_console()
    session = Session(plan, [ConsoleProgress(err, quiet=args.quiet)])  # bad input fails here, before anything is loaded or saved
    session.start()
    while not session.finished:
        try:
            session.wait(0.2)
        except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM or SIGHUP (shutdown.Stopped): all stop the run the same way
            signum = exc.signum if isinstance(exc, shutdown.Stopped) else None
            if session.stopped_by is None:
                where = shutdown.stop_point(plan.workload.name, plan.target.kind == "server")
                _quietly(err.print, f"embprof: interrupted ({shutdown.name(signum)}): {where}; "
                                    "the snapshot keeps what was measured")
            session.cancel(shutdown.name(signum), signum)
    # Saved before anything is printed: after SIGHUP the terminal is gone and printing can fail, the
    # file must not depend on it. A stop signal that arrives during the save waits for it to finish.
    outcome = session.finish(lambda snap: snap_mod.save_or_keep(snap, out_dir), guard=shutdown.deferred)
    late = shutdown.received()
    if outcome.stopped_by is None and late is not None:  # a stop that arrived during the save still decides the exit status
        outcome = dataclasses.replace(outcome, stopped_by=late)
    snapshot, error = outcome.snapshot, outcome.error
    wanted = set(RUN_TABLES)
    if plan.workload.name == "sweep":
        wanted -= {"latency", "throughput"}  # the sweep table has each point's figures already
    if plan.workload.name == "train":
        wanted -= {"latency", "latency-by-kind", "throughput"}  # the evaluations' encodes: in `embprof show`
    unshown: OutputError | None = None
    try:
        for table in summary_tables(snapshot):
            if table.name in wanted or table.name.startswith("similarity"):
                render_table(out, table)
        files = sorted({r.results_file for r in snapshot.summary.results.values()
                        if isinstance(r, MtebTask) and r.results_file})
        for f in files:
            out.print(f"results: {one_line(f)}", soft_wrap=True, markup=False)
        out.print(f"status: {snapshot.status}")
        if outcome.path is not None:
            # The last line, read by scripts: one line whatever the profiles folder's name holds.
            out.print(f"snapshot: {one_line(outcome.path)}", soft_wrap=True, markup=False)
    except BrokenPipeError:  # `embprof run … | head`: the snapshot is saved; the exit status still tells how the run went
        stdout_gone()
    except OutputError as exc:  # stdout itself cannot be written (a full disk behind `>`): the run and its snapshot stand
        unshown = exc
    if outcome.save_error is not None:
        raise outcome.save_error
    if outcome.moved is not None:
        raise OutputError(outcome.moved)

    def say(line: str) -> None:
        err.print(line, markup=False)  # a message quotes outside text: never markup

    if args.quiet:
        # No progress lines, but a task's failure is not progress: why it failed is said (its note is not printed).
        for r in snapshot.summary.results.values():
            if isinstance(r, MtebTask) and r.status == "failed":
                _quietly(say, f"embprof: {one_line(r.task)}{' (' + r.stage + ')' if r.stage else ''} failed: "
                              f"{one_line(r.error or 'no reason recorded')}")
    if snapshot.status == "failed" and error is not None:
        # The run's failure as the last line on stderr, as every other failure is (its detail is in the snapshot).
        where = f" during {one_line(error.phase)}" if error.phase else ""
        _quietly(say, f"embprof: error: the run failed ({error.error_kind}{where}): {one_line(error.message)}; "
                      "its snapshot keeps what was measured")
    if unshown is not None:
        saved = f"its snapshot was saved: {one_line(outcome.path)}" if outcome.path is not None else "its snapshot was not saved"
        line = f"embprof: error: {unshown}: the run's summary could not be shown; {saved}"
        if outcome.stopped_by is not None:  # a stop signal's exit status stands
            _quietly(say, line)
            return outcome.exit_status
        raise OutputError(line.removeprefix("embprof: error: "), unshown.path)
    return outcome.exit_status


def _quietly(say: Callable[[str], object], line: str) -> None:
    """A progress line that may find the terminal gone (SIGHUP): losing it must not stop the save."""
    try:
        say(line)
    except OSError:
        pass


def cmd_mteb(args: argparse.Namespace) -> int:
    if args.list_tasks:
        from embprof.engine.mteb_data import all_task_names

        from embprof.engine.text import one_line

        write_stdout("".join(one_line(name) + "\n" for name in all_task_names()))  # mteb's names: a name a line
        return EXIT_OK
    args.workload = "mteb"
    return cmd_run(args)


def cmd_train(args: argparse.Namespace) -> int:
    args.workload = "train"
    return cmd_run(args)


def cmd_prompts(args: argparse.Namespace) -> int:
    from embprof.engine.context import RunContext
    from embprof.engine.events import EventBus
    from embprof.engine.targets import make_target
    from embprof.engine.plan import plan_from_options

    from .console import output_console

    if args.server or args.prompts_from or args.api_key_env or args.server_model:
        from embprof.engine.errors import UserError

        # The prompts a server run applies are its --prompts-from model's: that model is listed with --model.
        raise UserError("prompts lists a local model's prompts: the server options do not apply here "
                        "(for the prompts a server run applies: embprof prompts --model MODEL, MODEL as given to --prompts-from)")
    target = make_target(plan_from_options({**vars(args), "workload": "encode", "server": None}).target)
    target.resolve()
    target.load(RunContext(EventBus()))
    prompts = target.prompts
    roles: dict[str, list[str]] = {}
    for mode, role in (("query", "query default"), ("document", "document default"), ("plain", "encode default")):
        name = target.default_prompt_for(mode)  # type: ignore[arg-type]
        if name:
            roles.setdefault(name, []).append(role)
    from embprof.engine.text import one_line, tsv_field

    if args.tsv:
        # A model's prompts are its own text (Qwen3's query prompt holds a newline): escaped, a prompt a line.
        write_stdout("name\trole\tprompt\n" + "".join(
            f"{tsv_field(name)}\t{tsv_field(', '.join(roles.get(name, [])))}\t{tsv_field(text)}\n" for name, text in prompts.items()))
        return EXIT_OK
    from rich.markup import escape
    from rich.table import Table

    name = target.describe().model_name
    table = Table(title=f"Prompts of {escape(one_line(name))}", title_justify="left")
    table.add_column("name")
    table.add_column("role")
    table.add_column("prompt")
    for key, text in prompts.items():
        table.add_row(escape(one_line(key)), ", ".join(roles.get(key, [])), escape(repr(text)))
    console = output_console()
    if prompts:
        console.print(table)
    else:
        console.print(f"{one_line(name)} has no built-in prompts.", markup=False)
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    from embprof.engine.errors import UserError
    from embprof.engine.listing import snapshot_row
    from embprof.engine.text import one_line
    from rich.markup import escape
    from rich.table import Table

    from .console import output_console

    folder = profiles_dir(args.profiles_dir)
    if str(folder) == "":
        raise UserError("the profiles folder path is empty")
    if folder.exists() and not folder.is_dir():
        raise UserError(f"'{one_line(folder)}' is a file, not a profiles folder (to read one snapshot: embprof show FILE)")
    console = output_console()
    try:
        files = sorted(f for f in folder.glob("*.json") if not f.name.startswith(".")) if folder.is_dir() else []
    except OSError as exc:
        raise UserError(f"profiles folder '{one_line(folder)}' cannot be read ({(exc.strerror or '').lower()})") from None
    if not files:
        why = "" if folder.is_dir() else " (a link that leads nowhere)" if folder.is_symlink() else " (the folder does not exist)"
        console.print(f"no snapshots in {escape(one_line(str(folder)))}{why}")
        return EXIT_OK
    table = Table(title=f"Snapshots in {escape(one_line(str(folder)))}", title_justify="left")
    # The file name is what `show`, `compare` and `export` take, so it stays whole where the other columns still
    # have room to fold into; on a terminal narrower than that it is cut, as it has to be.
    longest = max(len(f.name) for f in files)
    room = console.width - longest >= 64
    table.add_column("file", no_wrap=room, min_width=longest if room else None)
    for col in ("workload", "model", "device", "status", "mean s", "peak RSS MiB"):
        table.add_column(col, justify="right" if col in ("mean s", "peak RSS MiB") else "left", overflow="fold")
    for f in files:
        row = snapshot_row(f)
        if row.unreadable is not None:
            table.add_row(escape(one_line(f.name)), "[red]unreadable[/]", escape(one_line(row.unreadable)), "", "", "", "")
            continue
        table.add_row(
            escape(one_line(row.file)),
            escape(one_line(row.workload)),
            escape(one_line(row.model)),
            escape(one_line(row.device)),
            row.status,
            f"{row.mean_s:.4f}" if row.mean_s is not None else "n/a",
            f"{row.peak_rss_mib:.0f}" if row.peak_rss_mib is not None else "n/a",
        )
    console.print(table)
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    from embprof.engine.report import summary_tables
    from embprof.engine.snapshot import load

    from .console import output_console, render_table

    snap = load(args.file)
    console = output_console()
    for table in summary_tables(snap):
        render_table(console, table)
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from embprof.engine.errors import UserError
    from embprof.engine.files import atomic_write_bytes, check_output_path
    from embprof.engine.report import export
    from embprof.engine.snapshot import load
    from embprof.engine.text import one_line

    if args.output is not None:
        # A matrix folder's manifest and cells are its inputs as much as the folder itself.
        inputs = [args.file, Path(args.file) / "matrix.json"] if Path(args.file).is_dir() else [args.file]
        out = check_output_path(args.output, inputs, "output file")
        if Path(args.file).is_dir():
            for own in ("cells", "references", "results"):  # what the matrix reads and writes of its own
                if (Path(args.file) / own).resolve() in out.resolve().parents:
                    raise UserError(f"output file '{one_line(args.output)}' is inside the matrix's {own} folder: write it elsewhere")
    if Path(args.file).is_dir():
        from .matrix_cli import export_matrix

        return export_matrix(args)
    if args.format == "html":
        raise UserError("--format html writes a matrix's report: give the matrix's folder (embprof matrix -o DIR)")

    snap = load(args.file)
    images: list[str] = []
    if args.format == "md" and args.output and args.charts != "none":
        from embprof.engine.charts import knee_charts, sweep_charts

        out = Path(args.output)
        images = [p.name for p in sweep_charts(snap, out.parent, out.stem, args.charts, avoid=[args.file])]
        images += [p.name for p in knee_charts(snap, out.parent, out.stem, args.charts, avoid=[args.file])]
    text = export(snap, args.format, args.table, images)
    if args.output:
        atomic_write_bytes(Path(args.output), text.encode("utf-8"))
    else:
        write_stdout(text)
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:

    from embprof.engine.compare import compare_tables
    from embprof.engine.errors import UserError
    from embprof.engine.files import atomic_write_bytes, check_output_path
    from embprof.engine.tables import tables_csv, tables_json, tables_markdown
    from embprof.engine.snapshot import load
    from .console import SafeConsole, output_console, render_table

    if len(args.files) < 2:
        raise UserError("compare needs at least two snapshot files")
    if args.output is not None:
        check_output_path(args.output, list(args.files), "output file")
    snaps = [load(f) for f in args.files]
    names = [Path(f).stem for f in args.files]
    tables = compare_tables(snaps, names)
    if args.format == "text":
        import io

        buf = io.StringIO() if args.output else None
        # On stdout: the terminal's width, or a pipe's wide default (output_console), as every other table.
        console = SafeConsole(highlight=False, file=buf, width=140) if buf is not None else output_console()
        for t in tables:
            render_table(console, t)
        if buf is None:
            return EXIT_OK
        text = buf.getvalue()
    elif args.format == "md":
        images: list[str] = []
        if args.output and args.charts != "none":
            from embprof.engine.charts import compare_chart

            out = Path(args.output)
            images = [p.name for p in compare_chart(snaps, names, out.parent, out.stem, args.charts, avoid=list(args.files))]
        text = tables_markdown("# embprof comparison", tables, images)
    elif args.format == "csv":
        text = tables_csv(tables)
    else:
        text = tables_json(tables)
    if args.output:
        atomic_write_bytes(Path(args.output), text.encode("utf-8"))
    else:
        write_stdout(text)
    return EXIT_OK


def cmd_app(args: argparse.Namespace) -> int:
    from embprof.engine.errors import UserError
    from embprof.engine.plan import plan_from_options

    # The plan first: a bad --device or --server is one sentence before any terminal is touched.
    if args.plan:
        from embprof.engine.plan import load_plan

        if args.model or args.server or args.workload != "encode":
            raise UserError("give --plan FILE or the run's own options (--model, --server, --workload), not both")
        plan = load_plan(args.plan)
    else:
        plan = plan_from_options(vars(args))
    if not sys.stdout.isatty() or not sys.stdin.isatty():
        raise UserError("the dashboard needs a terminal; for scripts use `embprof run …` (see embprof --help)")
    from .app import EmbprofApp

    from . import shutdown

    app = EmbprofApp(plan, autostart=not args.no_autostart, profiles_dir=profiles_dir(args.profiles_dir))
    app.run()
    if app.stopped_by is not None:
        return shutdown.exit_status(app.stopped_by)
    return EXIT_OK


def cmd_matrix(args: argparse.Namespace) -> int:
    from .matrix_cli import cmd_matrix as run

    return run(args)


def cmd_schema(_args: argparse.Namespace) -> int:
    import json

    from embprof.engine.snapshot import json_schema

    write_stdout(json.dumps(json_schema(), indent=1) + "\n")
    return EXIT_OK
