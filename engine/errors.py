"""Errors the engine raises on purpose; each carries one sentence a user can act on."""

from __future__ import annotations


class UserError(Exception):
    """Bad input: a missing file, an unknown model or prompt, an unusable folder.

    The command line prints ``str(error)`` as one sentence and exits 2; nothing is saved.
    """


class RunCancelled(Exception):
    """Raised inside the workload, between batches, once a stop was asked for."""


class PartialFailure(Exception):
    """Part of the work failed and was recorded; what succeeded is kept. The run ends failed,
    and ``str(error)`` is the one sentence that says which parts."""


class OutputError(OSError):
    """A file could not be written (a full disk, a file-size limit, a read-only or vanished folder).

    The write left no temporary file and did not touch what was at ``path`` before. The command line
    prints ``str(error)`` and exits 3. An OSError, so that code catching a failed write keeps doing so.
    """

    def __init__(self, message: str, path: object = None) -> None:
        super().__init__(message)
        self.path = path
