"""One way to run a plan: the command line, the dashboard and a matrix cell's process all use ``Session``.

A session prepares the plan (bad input fails here, before anything is loaded or saved), runs it with
the caller's subscribers behind the snapshot recorder, takes a stop, builds the snapshot from the
recorded events and the environment, saves it where the caller says, and says the exit status. What
differs between callers is handed in: how a stop arrives (a signal handler, a key, Ctrl-C), where the
snapshot goes (the profiles folder, a cell's output file) and what the environment adds (a cell's
neighbours).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .errors import OutputError, UserError
from .events import ErrorEvent, Event, Subscriber
from .plan import RunPlan
from .snapshot import Recorder, Snapshot, build


class RunnerLike(Protocol):
    """What a session needs of a runner: the engine's ``Runner``, or a scripted one in the tests."""

    def run(self) -> None: ...
    def cancel(self, reason: str = ...) -> None: ...
    def wait(self, timeout: float | None = None) -> bool: ...
    @property
    def finished(self) -> bool: ...


RunnerFactory = Callable[[RunPlan, list[Subscriber]], RunnerLike]
# Where a snapshot goes: the path it was written to and, when that is not where it was asked to go
# (a full disk: ``snapshot.save_or_keep``), the sentence that says why.
Saver = Callable[[Snapshot], tuple[Path, str | None]]
# The environment a snapshot records, given the recorded events (a cell adds what else ran beside it).
EnvironmentOf = Callable[[list[Event]], dict[str, Any]]


def engine_runner(plan: RunPlan, subscribers: list[Subscriber]) -> RunnerLike:
    """The engine's runner for a plan. Preparing reads files and may reach a server: bad input raises
    UserError. The import is here because this runs on the run's thread: a dashboard shows its first
    frame before the targets and their libraries are imported."""
    from . import execute

    runner: RunnerLike = execute.prepare(plan).runner(subscribers)
    return runner


def default_environment(_events: list[Event]) -> dict[str, Any]:
    from . import environment

    return environment.capture()


class RunRefused(UserError):
    """The run stopped on its input (a file or value found wrong once loading began): exit 2, no snapshot."""


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended, and where its snapshot went."""

    snapshot: Snapshot
    path: Path | None  # None when the caller did not save it, or the save failed (save_error)
    moved: str | None  # why the snapshot is not where it was asked to go
    save_error: Exception | None
    error: ErrorEvent | None  # the run's last error, if any
    stopped_by: int | None  # the stop signal's number; SIGINT for a stop without one (a key)

    @property
    def exit_status(self) -> int:
        """0 complete, 1 failed, 128 + the signal for a run stopped before its end (130 for a key or an unknown stop)."""
        if self.stopped_by is not None or self.snapshot.status == "incomplete":
            return 128 + (self.stopped_by if self.stopped_by is not None else int(signal.SIGINT))
        return 0 if self.snapshot.status == "complete" else 1


class Session:
    """One plan made into one run and one snapshot.

    ``run()`` works on the calling thread (a dashboard's worker), ``start()`` on a thread of its own
    (a headless command that keeps its main thread for signals); either way ``finish()`` waits for the
    run, builds the snapshot and saves it.
    """

    def __init__(
        self,
        plan: RunPlan,
        subscribers: list[Subscriber],
        *,
        runner_factory: RunnerFactory = engine_runner,
        environment: EnvironmentOf = default_environment,
    ) -> None:
        self.plan = plan
        self.recorder = Recorder()
        self._environment = environment
        self._stopped_by: int | None = None
        self._thread: threading.Thread | None = None
        # The recorder first: a subscriber that fails (a closed terminal) must not cost the record.
        self.runner = runner_factory(plan, [self.recorder, *subscribers])

    def run(self) -> None:
        self.runner.run()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.runner.run, name="embprof-runner", daemon=True)
        self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        return self.runner.wait(timeout)

    @property
    def finished(self) -> bool:
        return self.runner.finished

    @property
    def stopped_by(self) -> int | None:
        return self._stopped_by

    def cancel(self, reason: str = "the user", signum: int | None = None) -> None:
        """Stop at the next batch boundary (what was measured is kept). ``signum``: the stop signal, for
        the exit status (the latest decides it, as a shell reports the signal that ended a process);
        the reason recorded is the first one's."""
        self._stopped_by = signum if signum is not None else int(signal.SIGINT)
        self.runner.cancel(reason)

    def finish(
        self,
        save: Saver | None,
        *,
        refuse_input_errors: bool = True,
        guard: Callable[[], AbstractContextManager[Any]] = nullcontext,
    ) -> RunOutcome:
        """Wait for the run, build its snapshot and save it with ``save`` (None: not saved).

        ``refuse_input_errors``: a run that ended on its input raises ``RunRefused`` and saves nothing,
        as a headless command refuses bad input (the dashboard shows and keeps such a run instead).
        ``guard``: held around the save (a command holds stop signals there, so a save is never cut in half).
        """
        self.runner.wait()
        if self._thread is not None:
            self._thread.join()
        errors = self.recorder.state.errors  # the fold keeps every ErrorEvent of the run
        error = errors[-1] if errors else None
        if refuse_input_errors and error is not None and error.error_kind == "input":
            raise RunRefused(error.message)
        snapshot = build(self.recorder, self._environment(self.recorder.events()))
        path: Path | None = None
        moved: str | None = None
        save_error: Exception | None = None
        if save is not None:
            with guard():
                try:
                    path, moved = save(snapshot)
                except (OutputError, OSError) as exc:
                    save_error = exc
        return RunOutcome(snapshot, path, moved, save_error, error, self._stopped_by)
