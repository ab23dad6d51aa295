"""What a set of files holds, as one digest: the key of whatever was computed from them.

A cached result (an exported ONNX graph, a matrix cell's measurement) is reused only while the files
it was computed from hold the same bytes; their paths say nothing about that (a folder is edited in
place, or the same model is copied elsewhere). A file's digest is the SHA-256 of its bytes; a
folder's is that of its files' relative names, sizes and digests.

Hashing gigabytes of weights on every run would cost more than what it guards, so each file's digest
is kept in a small JSON cache beside the results (``FileHashes``), keyed by its path and what the
kernel says of it: device, inode, size, mtime and ctime, in nanoseconds. Every write to a file
updates its ctime, and no call sets a ctime back (``touch`` and ``os.utime`` move it forward too),
so a file whose bytes changed is hashed again even when its size and mtime were put back. A digest
is only kept for a file whose last change was some seconds before it was read: a write within the
file system's timestamp granularity of the hashing would otherwise leave the stat unchanged (the
"racy" case git's index guards against the same way).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import OutputError, UserError
from ..files import atomic_write_bytes, read_json_file

# What sentence-transformers never loads from a model folder (a repository's own ONNX and OpenVINO
# exports, GGUFs, TensorFlow and Flax weights): the Hub fetch skips them, and so does a model's digest.
NOT_LOADED = ("onnx/*", "openvino/*", "*.onnx", "*.onnx_data", "*.gguf", "*.h5", "*.msgpack", "*.ot")
# A digest is kept only for a file last changed at least this long before it was read (see above).
SETTLED_NS = 2_000_000_000
HASHES_VERSION = 1
_CHUNK = 1 << 22


@dataclass(frozen=True, slots=True)
class TreeDigest:
    """A folder's files as one digest, with how many there were and their bytes (for a reader)."""

    digest: str
    files: int
    bytes: int


def _stat_key(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


class FileHashes:
    """Files' SHA-256 digests, kept in ``path`` (a JSON file) between runs; None: kept in memory only.

    One process writes the file at a time as far as embprof is concerned (a matrix's folder is locked;
    the ONNX cache's is shared, and a lost update costs one hash next time, never a wrong digest)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._entries: dict[str, list[int | str]] = {}
        self._changed = False
        self._lock = threading.Lock()
        if path is not None and path.is_file():
            try:
                data = read_json_file(path, "file digest cache")
            except UserError:  # a damaged cache only costs the hashing again
                data = None
            if isinstance(data, dict) and data.get("version") == HASHES_VERSION and isinstance(data.get("files"), dict):
                self._entries = {str(k): v for k, v in data["files"].items() if _valid(v)}

    def digest(self, file: Path | str) -> str:
        """The SHA-256 of ``file``'s bytes (symbolic links followed); OSError if it cannot be read."""
        name = os.path.abspath(file)
        before = os.stat(name)
        key = _stat_key(before)
        with self._lock:
            found = self._entries.get(name)
        if found is not None and found[:5] == key:
            return str(found[5])
        started = time.time_ns()
        with open(name, "rb") as fh:
            h = hashlib.sha256()
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
        digest = h.hexdigest()
        after = os.stat(name)
        # Changed while it was read, or too recently to trust its stat to show the next change: not kept.
        if _stat_key(after) == key and max(after.st_mtime_ns, after.st_ctime_ns) < started - SETTLED_NS:
            with self._lock:
                self._entries[name] = [*key, digest]
                self._changed = True
        return digest

    def tree(self, folder: Path, skip: tuple[str, ...] = ()) -> TreeDigest:
        """Every file under ``folder`` (links to files followed, hidden names and ``skip``'s patterns left out) as one digest."""
        h = hashlib.sha256()
        count = total = 0
        for rel, path in _files(folder, skip):
            size = os.stat(path).st_size
            h.update(f"{rel}\0{size}\0{self.digest(path)}\n".encode("utf-8", "surrogateescape"))
            count += 1
            total += size
        return TreeDigest(h.hexdigest(), count, total)

    def save(self) -> None:
        """Write the cache if anything was added; entries of files that are gone are dropped. A cache that
        cannot be written (a read-only folder, a full disk) costs the hashing again next time, nothing else."""
        with self._lock:
            if self.path is None or not self._changed:
                return
            self._entries = {k: v for k, v in self._entries.items() if os.path.exists(k)}
            data = {"version": HASHES_VERSION, "files": self._entries}
            self._changed = False
        try:
            atomic_write_bytes(self.path, json.dumps(data).encode("utf-8"))
        except OutputError:
            pass


def _valid(entry: object) -> bool:
    return (isinstance(entry, list) and len(entry) == 6 and all(isinstance(x, int) and not isinstance(x, bool) for x in entry[:5])
            and isinstance(entry[5], str))


def _files(folder: Path, skip: tuple[str, ...]) -> list[tuple[str, str]]:
    """(relative name, path) of the files under ``folder``, sorted; a folder's hidden entries (.git,
    .cache) are no part of what it holds."""
    out: list[tuple[str, str]] = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            if name.startswith("."):
                continue
            path = os.path.join(root, name)
            rel = Path(os.path.relpath(path, folder)).as_posix()
            if any(fnmatch.fnmatch(rel, pattern) for pattern in skip) or not os.path.isfile(path):
                continue
            out.append((rel, path))
    out.sort()
    return out
