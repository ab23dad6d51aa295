"""Where the speed workload's text comes from.

The MTEB v1 SpeedTask read mteb's own copy of H. C. Andersen's "The Ugly Duckling"; mteb 2.x
dropped it. The text is not ours to ship, so it is resolved in this order: ``--text FILE``, then
``$EMBPROF_SPEED_TEXT``, then the user cache, then a download from a pinned mteb 1.x commit,
checked by sha256 before it is cached.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .files import MAX_INPUT_BYTES, atomic_write_bytes, cache_dir, decode_text, expand_path, read_file_bytes
from .text import one_line

MTEB_V1_COMMIT = "6e72dc0e30577c2fde2bb5c6cb55c79bf8e1eaec"
SPEED_TEXT_URL = (
    f"https://raw.githubusercontent.com/embeddings-benchmark/mteb/{MTEB_V1_COMMIT}/mteb/abstasks/the_ugly_duckling.txt"
)
SPEED_TEXT_SHA256 = "3f3b60074ae67290c25429e2977213ce9bfd94c73474aafbf243a07174bf6e5f"
CACHE_NAME = "the_ugly_duckling.txt"


@dataclass(frozen=True, slots=True)
class SpeedText:
    text: str
    path: str
    source: str  # "--text", "EMBPROF_SPEED_TEXT", "cache" or "download"
    sha256: str

    @property
    def paragraphs(self) -> list[str]:
        # mteb 1.x: text.split("\n\n"), nothing else; 43 paragraphs for the canonical file.
        return self.text.split("\n\n")

    @property
    def words(self) -> int:
        return len(self.text.split())

    @property
    def canonical(self) -> bool:
        return self.sha256 == SPEED_TEXT_SHA256


def _read(path: Path, source: str) -> SpeedText:
    data = read_file_bytes(path, f"speed text file (from {source})", MAX_INPUT_BYTES)
    text = decode_text(data, f"speed text file '{one_line(path)}'")
    return SpeedText(text=text, path=str(path), source=source, sha256=hashlib.sha256(data).hexdigest())


def resolve_speed_text(explicit: str | None = None) -> SpeedText:
    if explicit:
        return _read(expand_path(explicit, "speed text"), "--text")
    env = os.environ.get("EMBPROF_SPEED_TEXT")
    if env:
        return _read(expand_path(env, "speed text"), "EMBPROF_SPEED_TEXT")
    cached = cache_dir() / CACHE_NAME
    if cached.is_file():
        found = _read(cached, "cache")
        if found.canonical:
            return found
    return _download(cached)


def _download(dest: Path) -> SpeedText:
    url = os.environ.get("EMBPROF_SPEED_TEXT_URL", SPEED_TEXT_URL)
    how = (
        "pass --text FILE or set EMBPROF_SPEED_TEXT=FILE to mteb 1.x's the_ugly_duckling.txt "
        f"(sha256 {SPEED_TEXT_SHA256[:12]}…)"
    )
    try:
        with urllib.request.urlopen(url, timeout=15) as response:
            data = response.read()
    except Exception as exc:
        raise UserError(f"the speed text is not available offline and could not be downloaded ({exc}): {how}") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != SPEED_TEXT_SHA256:
        raise UserError(f"the downloaded speed text does not match its pinned sha256 (got {digest[:12]}…): {how}")
    try:
        atomic_write_bytes(dest, data)
        path = str(dest)
    except OSError:
        path = url  # an unwritable cache costs a download next time, not this run
    return SpeedText(text=data.decode("utf-8"), path=path, source="download", sha256=digest)
