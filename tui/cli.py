"""The `embprof` command line: parse, run the command, turn every failure into one sentence and an exit status.

Only argparse is imported at start-up: `embprof --help` must never pay for torch, and even the
engine is imported only by the command that needs it.
"""

from __future__ import annotations

import errno
import os
import sys

from .exits import EXIT_FAILED, EXIT_INPUT, EXIT_INTERNAL, EXIT_OK, EXIT_OUTPUT, fail, stdout_gone
from . import commands
from .parser import build_parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from embprof.engine.versions import library_version

        print(f"embprof {library_version('embprof')}")
        return EXIT_OK
    handlers = {
        None: commands.cmd_app,
        "run": commands.cmd_run,
        "rerun": commands.cmd_rerun,
        "mteb": commands.cmd_mteb,
        "train": commands.cmd_train,
        "compare": commands.cmd_compare,
        "prompts": commands.cmd_prompts,
        "list": commands.cmd_list,
        "show": commands.cmd_show,
        "export": commands.cmd_export,
        "schema": commands.cmd_schema,
        "matrix": commands.cmd_matrix,
    }
    from embprof.engine.errors import OutputError, UserError
    from embprof.engine.text import one_line

    from . import shutdown

    try:
        return handlers[args.command](args)
    except UserError as exc:
        return fail(f"embprof: error: {one_line(exc)}", EXIT_INPUT)
    except OutputError as exc:
        return fail(f"embprof: error: {one_line(exc)}", EXIT_OUTPUT)
    except KeyboardInterrupt as exc:  # before a run started (import, resolving the model) or outside one
        signum = exc.signum if isinstance(exc, shutdown.Stopped) else shutdown.received()
        return fail(f"embprof: interrupted ({shutdown.name(signum)}); nothing was measured, nothing saved", shutdown.exit_status(signum))
    except BrokenPipeError:  # `embprof show … | head`: the reader has all it wanted
        stdout_gone()
        return EXIT_OK
    except MemoryError:
        return fail("embprof: error: out of memory", EXIT_FAILED)
    except OSError as exc:
        # A file embprof writes through its own code is an OutputError; these come from a library or
        # the terminal: a full disk still says so, and what the system said is kept.
        where = f" '{one_line(exc.filename)}'" if exc.filename else ""
        reason = (exc.strerror or exc.__class__.__name__).lower()
        if exc.errno in _WRITE_ERRNOS:
            return fail(f"embprof: error: cannot write{where} ({reason})", EXIT_OUTPUT)
        return fail(f"embprof: error: {reason}{where}", EXIT_INPUT)
    except Exception as exc:  # noqa: BLE001 - the last net: one sentence, never a traceback (EMBPROF_DEBUG=1 shows it)
        if os.environ.get("EMBPROF_DEBUG"):
            raise
        first = (str(exc).strip().splitlines() or [""])[0]
        return fail(f"embprof: internal error: {exc.__class__.__name__}{': ' + one_line(first) if first else ''} "
                     "(EMBPROF_DEBUG=1 shows where)", EXIT_INTERNAL)


_WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EROFS, errno.EDQUOT, errno.EIO}


def entry() -> None:
    from . import shutdown

    shutdown.install()  # before anything slow is imported: a SIGTERM during `import torch` is a clean stop too
    for stream in (sys.stdout, sys.stderr):
        # A terminal or pipe that cannot show every character (PYTHONIOENCODING=ascii, LANG=C) gets
        # escapes for the rest, never a UnicodeEncodeError: the help's dashes and a model's name are text.
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
    if sys.stdout is None:  # started with stdout closed (`>&-`): whatever the command says would vanish
        sys.exit(fail("embprof: error: standard output is closed: nothing the command says could be seen", EXIT_INPUT))
    try:
        status = main()
    except KeyboardInterrupt as exc:  # a stop before main's own handling begins (its parser and first imports)
        signum = exc.signum if isinstance(exc, shutdown.Stopped) else shutdown.received()
        status = fail(f"embprof: interrupted ({shutdown.name(signum)}); nothing was measured, nothing saved",
                       shutdown.exit_status(signum))
    sys.exit(status)
