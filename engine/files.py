"""Atomic file writes and input reading with one-sentence errors."""

from __future__ import annotations

import codecs
import functools
import json
import os
import re
import signal
import stat
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import OutputError, UserError
from .text import first_line, one_line, shown

# What embprof reads whole into memory. A snapshot is a few MB (its recorder is bounded), a plan or a
# matrix file a few KB; an input of texts can be large. Past these sizes the file is refused in one
# sentence rather than read until memory runs out (/dev/zero, a wrong file, a runaway log).
MAX_JSON_BYTES = 256 * 1024 * 1024
MAX_INPUT_BYTES = 1024 * 1024 * 1024
# Nesting deeper than any file embprof writes (its snapshots are under 12 levels deep): a deeper file is
# not one of them, and refusing it early keeps every reader clear of Python's recursion limit.
MAX_JSON_DEPTH = 64


def _umask() -> int:
    """The process's umask, read without changing it (os.umask can only be read by setting it, which
    races with other threads creating files); /proc gives it on Linux, else the set-and-restore."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _reason(exc: OSError) -> str:
    return (exc.strerror or exc.__class__.__name__).lower()


# The signals that stop embprof; pthread_sigmask is POSIX only (elsewhere nothing is held).
_STOP_SIGNALS = ({s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None}
                 if hasattr(signal, "pthread_sigmask") else set())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, fsync it, then rename over: readers never see half a file.

    A write that cannot complete (a full disk, a file-size limit, a read-only folder) removes its
    temporary file and leaves whatever was at ``path`` untouched; it raises ``OutputError`` naming the
    path and the reason. The file gets the permissions any new file would (0666 less the umask):
    mkstemp's own 0600 would hide snapshots from the rest of a team sharing the folder.
    """
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # A stop signal between the temporary file's creation and its name being known here would leave the file
        # behind: the stop signals are held for that instant, and acted on once the name is known.
        held = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS) if _STOP_SIGNALS else None
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        finally:
            if held is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, held)
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o666 & ~_umask())
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write '{one_line(path)}' ({_reason(exc)})", path) from exc
        raise


def expand_path(path: str | Path, what: str = "path") -> Path:
    """``path`` with ``~`` and ``~user`` expanded, or one sentence when that user does not exist."""
    try:
        return Path(path).expanduser()
    except RuntimeError:  # pathlib's "Could not determine home directory"
        raise UserError(f"{what} '{one_line(path)}' names a home folder that does not exist on this machine") from None


def check_output_path(output: str | Path, inputs: list[str | Path] | tuple[str | Path, ...] = (), what: str = "output file") -> Path:
    """Refuse, before any work, an output path that could only fail or destroy something.

    An empty path, a folder, a path under a file, and above all one of the command's own inputs
    (``export S.json -o S.json`` would replace the snapshot it is reading with its export).
    """
    if str(output) == "":
        raise UserError(f"the {what} path is empty")
    out = expand_path(output, what)
    if out.is_dir():
        raise UserError(f"{what} '{one_line(output)}' is a folder; give a file name")
    if out.exists() and not out.is_file():
        # A write renames a new file over the path: a device (/dev/null), a FIFO or a socket would be replaced by it.
        raise UserError(f"{what} '{one_line(output)}' is a device, pipe or socket, not a file: write to a file, or to stdout without -o")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{what} '{one_line(output)}' cannot be created: '{one_line(parent)}' is a file, not a folder")
            break
    for src in inputs:
        if _same_file(out, expand_path(src, what)):
            raise UserError(f"{what} '{one_line(output)}' is also an input ('{one_line(src)}'): writing it would destroy what is read")
    return out


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except OSError:
        return False


def read_file_bytes(path: str | Path, what: str, limit: int) -> bytes:
    """A regular file's bytes, or one sentence why not: missing, a folder, a device or pipe, too large, unreadable."""
    p = expand_path(path, what)
    name = f"{what} '{one_line(path)}'"
    try:
        st = p.stat()
    except FileNotFoundError:
        raise UserError(f"{name} does not exist") from None
    except NotADirectoryError:
        raise UserError(f"{name} does not exist (a part of its path is a file)") from None
    except OSError as exc:
        raise UserError(f"{name} cannot be read ({_reason(exc)})") from None
    if stat.S_ISDIR(st.st_mode):
        raise UserError(f"{name} is a folder, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{name} is not a regular file (a device, pipe or socket)")
    if st.st_size > limit:
        raise UserError(f"{name} is too large ({st.st_size / 2**20:,.0f} MiB; at most {limit / 2**20:,.0f} MiB is read)")
    try:
        with open(p, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise UserError(f"{name} cannot be read ({_reason(exc)})") from None
    if len(data) > limit:  # it grew while it was read
        raise UserError(f"{name} is too large (more than {limit / 2**20:,.0f} MiB)")
    return data


def json_depth_exceeds(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when ``value`` nests deeper than ``limit`` lists and objects (walked without recursion).

    Each container is walked once: YAML's aliases can make a small file a structure shared a billion
    times over ("billion laughs"), and walking every path through it would never end."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    seen: set[int] = set()
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (dict, list)):
            if depth > limit:
                return True
            if id(v) in seen:
                continue
            seen.add(id(v))
            stack.extend((x, depth + 1) for x in (v.values() if isinstance(v, dict) else v))
    return False


def decode_text(raw: bytes, name: str, encoding: str = "utf-8") -> str:
    """UTF-8 text with something in it, or one sentence naming ``name``: not UTF-8, or empty.

    A leading byte-order mark is accepted and dropped, in every file read through here as in ``read_lines``
    (Windows editors write one; JSON's RFC 8259 lets a parser ignore it); the offset of a bad byte counts it."""
    bom = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    try:
        text = raw[bom:].decode(encoding)
    except UnicodeDecodeError as exc:
        raise UserError(f"{name} is not UTF-8 text (undecodable byte at offset {bom + exc.start})") from None
    if not text.strip():
        raise UserError(f"{name} is empty")
    return text


class _RepeatedKey(Exception):
    def __init__(self, key: object, line: int | None = None) -> None:
        super().__init__(key)
        self.key = key
        self.line = line


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose every key is given once: json (and orjson) keep the last of two silently, so a
    plan could say ``"repeats": 3`` and run with the ``"repeats": 300`` further down."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _RepeatedKey(key)
            seen.add(key)
    return out


def repeated_key(name: str, key: object, where: str = "") -> UserError:
    """The one sentence for a key given twice, whatever the file's format or the option it is in (``where``:
    the line, or the two spellings, when they are known)."""
    return UserError(f"{name} gives the key '{shown(key)}' twice" + (f" ({where})" if where else "") + ": give each key once")


def parse_json_bytes(raw: bytes, name: str) -> Any:
    """JSON from bytes, or one sentence naming ``name`` and why not (not UTF-8, not JSON, a key given twice,
    nested too deeply)."""
    text = decode_text(raw, name)
    try:
        data = json.loads(text, object_pairs_hook=_unique_object)
    except _RepeatedKey as exc:
        raise repeated_key(name, exc.key) from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{name} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise UserError(f"{name} is nested too deeply to be one of embprof's files") from None
    if json_depth_exceeds(data):
        raise UserError(f"{name} is nested too deeply to be one of embprof's files (more than {MAX_JSON_DEPTH} levels)")
    return data


def read_json_file(path: str | Path, what: str, limit: int = MAX_JSON_BYTES) -> Any:
    """A JSON file embprof reads (a snapshot, a plan, a matrix file): bounded in size and depth, one sentence on any fault."""
    return parse_json_bytes(read_file_bytes(path, what, limit), f"{what} '{one_line(path)}'")


# TOML refuses a key given twice itself; its message names the line (or the table), not always the key.
_TOML_AT = re.compile(r"\(at line (\d+), column \d+\)")
_TOML_DECLARED = re.compile(r"Cannot declare \((.*)\) twice")
_TOML_INLINE = re.compile(r"Duplicate inline table key '(.*)' \(at")


def _toml_repeated_key(message: str, text: str) -> tuple[str, int | None] | None:
    """The key and line of tomllib's refusal of a key given twice, or None for any other refusal."""
    at = _TOML_AT.search(message)
    line = int(at.group(1)) if at else None
    declared, inline = _TOML_DECLARED.match(message), _TOML_INLINE.match(message)
    if declared:
        return ".".join(re.findall(r"'((?:[^'\\]|\\.)*)'", declared.group(1))), line
    if inline:
        return inline.group(1), line
    if not message.startswith("Cannot overwrite a value"):
        return None
    lines = text.splitlines()
    if line is None:  # "at end of document": the last line that says something
        line = next((i + 1 for i in range(len(lines) - 1, -1, -1) if lines[i].strip()), None)
    if line is None or line > len(lines) or "=" not in lines[line - 1]:
        return None
    return lines[line - 1].split("=", 1)[0].strip().strip("\"'"), line


def parse_toml(text: str, name: str) -> Any:
    """TOML, or one sentence naming ``name``: not TOML, or a key given twice (named, as everywhere)."""
    import tomllib

    try:
        return tomllib.loads(text)
    except Exception as exc:  # tomllib's own error, or a RecursionError of a deeply nested file: never a traceback
        found = _toml_repeated_key(first_line(exc), text)
        if found is not None:
            key, line = found
            raise repeated_key(name, key, f"line {line}" if line is not None else "") from None
        raise UserError(f"{name} is not valid TOML: {one_line(first_line(exc))}") from None


@functools.cache
def _yaml_loader() -> Any:
    """PyYAML's safe loader (no tag constructs an object or runs anything), refusing a key given twice in a
    mapping, which it would otherwise keep the last of silently. Made once, when YAML is first read."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML has no type information
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            if isinstance(node, yaml.MappingNode):
                seen: set[Any] = set()
                for key_node, _ in node.value:
                    # A merge (<<) may be overridden by the mapping's own keys: that is YAML's meaning, not a repeat.
                    if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = self.construct_object(key_node)
                    if key in seen:
                        raise _RepeatedKey(key, key_node.start_mark.line + 1)
                    seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def parse_yaml(text: str, name: str) -> Any:
    """YAML read safely, or one sentence naming ``name``: not YAML, a tag, or a key given twice (named, as everywhere)."""
    loader = _yaml_loader()(text)
    try:
        return loader.get_single_data()
    except _RepeatedKey as exc:
        raise repeated_key(name, exc.key, f"line {exc.line}") from None
    except Exception as exc:  # PyYAML's errors, a tag refused, a RecursionError: one sentence, never a traceback
        raise UserError(f"{name} is not valid YAML: {one_line(first_line(exc))}") from None
    finally:
        loader.dispose()


def json_lines(path: str, what: str, shape: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """The objects of a JSON Lines file with their line numbers, blank lines skipped, read through the
    bounded reader; a line that is not a JSON object is one sentence naming it (``shape``: what each
    line should hold, said with it)."""
    name = one_line(path)
    raw = decode_text(read_file_bytes(path, what, MAX_INPUT_BYTES), f"{what} '{name}'")
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line, object_pairs_hook=_unique_object)
        except _RepeatedKey as exc:
            raise repeated_key(f"{what} '{name}'", exc.key, f"line {number}") from None
        except ValueError:
            raise UserError(f"{what} '{name}' line {number} is not JSON: each line holds {shape}") from None
        if not isinstance(row, dict):
            raise UserError(f"{what} '{name}' line {number} is not a JSON object: each line holds {shape}")
        yield number, row


def ensure_writable_dir(path: Path, what: str) -> Path:
    """Fail before any work is done when results could not be saved at the end, and create nothing.

    A check that passes may still be followed by one that refuses the command (a missing input, a model
    that is not found), and a refused command leaves no trace: the folder is made by whatever first
    writes into it (``atomic_write_bytes``, ``folder_lock``). What is probed is the folder itself when it
    exists, else the nearest folder above it that does: that is where the first write creates it."""
    if str(path) == "":
        raise UserError(f"the {what} path is empty")
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} '{one_line(path)}' is a file, not a folder")
    probe_in = path
    while not probe_in.exists():
        # A dangling link stops here as well: creating through it fails, and the probe below says so.
        if probe_in.is_symlink() or probe_in.parent == probe_in:
            break
        probe_in = probe_in.parent
    if probe_in.exists() and not probe_in.is_dir():
        raise UserError(f"{what} '{one_line(path)}' cannot be written to ('{one_line(probe_in)}' is a file, not a folder)")
    try:
        fd, probe = tempfile.mkstemp(prefix=".embprof-probe.", dir=probe_in)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"{what} '{one_line(path)}' cannot be written to ({_reason(exc)})") from exc
    return path


def read_lines(source: str) -> list[str]:
    """Non-blank lines of a UTF-8 file, or of standard input for '-'."""
    if source == "-":
        if sys.stdin is None:
            raise UserError("standard input is closed: give the texts with --input FILE")
        data = sys.stdin.buffer.read(MAX_INPUT_BYTES + 1)
        if len(data) > MAX_INPUT_BYTES:
            raise UserError(f"standard input is too large (more than {MAX_INPUT_BYTES / 2**20:,.0f} MiB)")
        name = "standard input"
    else:
        if source == "":
            raise UserError("the input file name is empty (give a file, or '-' for standard input)")
        data = read_file_bytes(source, "input file", MAX_INPUT_BYTES)
        name = f"input file '{one_line(source)}'"
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark (Windows editors write one) is not part of the first text
    except UnicodeDecodeError as exc:
        raise UserError(f"{name} is not UTF-8 text (undecodable byte at offset {exc.start})") from exc
    lines = [line.rstrip("\r") for line in text.split("\n")]
    lines = [line for line in lines if line.strip()]
    if not lines:
        raise UserError(f"{name} has no lines to encode")
    return lines


@contextmanager
def folder_lock(folder: Path, what: str) -> Iterator[None]:
    """Hold ``folder`` for one embprof at a time: a second one is refused in one sentence naming the first.

    An advisory lock (flock) on ``folder/.embprof.lock``: the kernel lets it go when the holder exits
    however it exits (SIGKILL included), so a crashed run never leaves the folder locked.
    """
    import fcntl

    lock_path = folder / ".embprof.lock"
    try:
        folder.mkdir(parents=True, exist_ok=True)  # the folder is made here, once every check has passed (ensure_writable_dir makes none)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise UserError(f"{what} '{one_line(folder)}' cannot be locked ({_reason(exc)})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            raise UserError(f"{what} '{one_line(folder)}' is in use by another embprof"
                            + (f" (process {holder})" if holder.isdigit() else "")
                            + "; wait for it to finish, or give another folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode("ascii"), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def cache_dir() -> Path:
    """embprof's cache outside any project: $EMBPROF_CACHE_DIR, else $XDG_CACHE_HOME/embprof or ~/.cache/embprof."""
    explicit = os.environ.get("EMBPROF_CACHE_DIR")
    if explicit:
        return expand_path(explicit, "EMBPROF_CACHE_DIR")
    return Path(os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")) / "embprof"
