"""Atomic file writes and input reading with one-sentence errors."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from .errors import UserError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, fsync it, then rename over: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def ensure_writable_dir(path: Path, what: str) -> Path:
    """Fail before any work is done when results could not be saved at the end."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".embprof-probe.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise UserError(f"{what} '{path}' cannot be written to ({reason.lower()})") from exc
    return path


def read_lines(source: str) -> list[str]:
    """Non-blank lines of a UTF-8 file, or of standard input for '-'."""
    if source == "-":
        data = sys.stdin.buffer.read()
        name = "standard input"
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise UserError(f"input file '{source}' does not exist")
        if path.is_dir():
            raise UserError(f"input '{source}' is a folder, not a text file")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UserError(f"input file '{source}' cannot be read ({(exc.strerror or '').lower()})") from exc
        name = f"input file '{source}'"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{name} is not UTF-8 text (undecodable byte at offset {exc.start})") from exc
    lines = [line.rstrip("\r") for line in text.split("\n")]
    lines = [line for line in lines if line.strip()]
    if not lines:
        raise UserError(f"{name} has no lines to encode")
    return lines


def cache_dir() -> Path:
    """embprof's cache outside any project: $EMBPROF_CACHE_DIR, else $XDG_CACHE_HOME/embprof or ~/.cache/embprof."""
    explicit = os.environ.get("EMBPROF_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")) / "embprof"
