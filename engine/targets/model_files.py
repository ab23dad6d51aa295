"""A model folder's files, checked before anything loads.

transformers, tokenizers and sentence-transformers read a model folder deep inside the load, after a
run has started: a truncated weights file, a ``config.json`` cut short, or a weights file that is a
link to a device ends there as a library's traceback, or as a read that never ends (``/dev/zero``).
Every backend resolves its model through ``SentenceTransformerTarget.resolve``, which calls
``check_model_folder`` here first: each file the load will read is a regular file (a link is
followed), each JSON file parses, and each weights file holds the bytes its own header describes. A
fault is one sentence naming the file, before the run starts.

A UTF-8 byte-order mark is accepted here as in every file embprof reads (``files.decode_text``). The
libraries refuse one ("Unexpected UTF-8 BOM"), so a folder that has one is loaded through a view of
it (``bom_free_view``): the same folder, its files linked, with those JSON files copied without the
mark. The folder itself is never changed.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..files import MAX_JSON_BYTES, cache_dir, decode_text, read_file_bytes
from ..text import one_line

# The JSON files sentence-transformers and transformers read from a model's folder and from each
# module's sub-folder, with what each holds (modules.json is a list of modules; the others objects).
CONFIG_FILES: dict[str, type] = {
    "modules.json": list,
    "config_sentence_transformers.json": dict,
    "sentence_bert_config.json": dict,
    "config.json": dict,
    "tokenizer.json": dict,
    "tokenizer_config.json": dict,
    "special_tokens_map.json": dict,
    "added_tokens.json": dict,
    "model.safetensors.index.json": dict,
    "pytorch_model.bin.index.json": dict,
}
# safetensors' own bound on its header (safetensors::tensor::MAX_HEADER_SIZE): a larger one is not a header.
MAX_SAFETENSORS_HEADER = 100_000_000
# The first bytes of a PyTorch file in the format before 1.6 (a pickle of the magic number): no zip to check.
LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"
WHAT = "model file"


@dataclass(frozen=True, slots=True)
class FolderCheck:
    """A model folder that passed: its JSON files that begin with a byte-order mark, if any."""

    folder: Path
    bom_files: tuple[Path, ...]


def check_model_folder(folder: Path) -> FolderCheck:
    """Every file the load will read from ``folder``, checked; one sentence naming the first fault."""
    boms: list[Path] = []
    modules = _check_configs(folder, boms)
    weights_folders = [folder]
    for entry in modules:
        sub = entry.get("path") if isinstance(entry, dict) else None
        if not isinstance(sub, str) or not sub or Path(sub).is_absolute() or ".." in Path(sub).parts:
            continue
        path = folder / sub
        if path.is_dir():
            _check_configs(path, boms)
            weights_folders.append(path)
    for place in weights_folders:
        _check_weights(place)
    return FolderCheck(folder, tuple(boms))


def _shown(path: Path) -> str:
    return f"{WHAT} '{one_line(path)}'"


def _regular_size(path: Path) -> int:
    """The size of the file ``path`` names, links followed; one sentence when it is not a regular file."""
    try:
        st = path.stat()
    except FileNotFoundError:
        target = _link_target(path)
        raise UserError(f"{_shown(path)} is a link to nothing ('{one_line(target)}' does not exist)"
                        if target is not None else f"{_shown(path)} does not exist") from None
    except OSError as exc:
        raise UserError(f"{_shown(path)} cannot be read ({(exc.strerror or exc.__class__.__name__).lower()})") from None
    if stat.S_ISDIR(st.st_mode):
        raise UserError(f"{_shown(path)} is a folder, not a file")
    if not stat.S_ISREG(st.st_mode):
        via = f" (a link to '{one_line(_link_target(path))}')" if path.is_symlink() else ""
        raise UserError(f"{_shown(path)} is not a regular file{via}: a device, pipe or socket is never read as a model")
    return st.st_size


def _link_target(path: Path) -> str | None:
    try:
        return os.readlink(path) if path.is_symlink() else None
    except OSError:
        return None


def _present(path: Path) -> bool:
    """Whether ``path`` is there at all: a file, a folder, a device, or a link (a dangling one too)."""
    return path.is_symlink() or path.exists()


def _check_configs(folder: Path, boms: list[Path]) -> list[Any]:
    """The folder's JSON files checked; its modules.json's entries (empty when it has none)."""
    modules: list[Any] = []
    for name, shape in CONFIG_FILES.items():
        path = folder / name
        if not _present(path):
            continue
        _regular_size(path)  # a link to nothing or to a device is said as such, before any read
        raw = read_file_bytes(path, WHAT, MAX_JSON_BYTES)
        data = _parse(raw, path)
        if raw.startswith(codecs.BOM_UTF8):
            boms.append(path)
        if shape is list:
            if not isinstance(data, list) or not all(isinstance(m, dict) for m in data):
                raise UserError(f"{_shown(path)} does not hold a list of modules (each a JSON object)")
            modules = data
        elif not isinstance(data, dict):
            raise UserError(f"{_shown(path)} does not hold a JSON object")
        elif name.endswith(".index.json"):
            _check_index(path, data)
    return modules


def _parse(raw: bytes, path: Path) -> Any:
    """JSON, said as ``files.parse_json_bytes`` says it, without its walk for depth: a tokenizer's
    vocabulary is hundreds of thousands of entries, and nothing here keeps what it parsed. Each file by
    the rules of what reads it: tokenizer.json by the tokenizers library's strict parser (orjson's
    rules are the same, and it is faster), the others by Python's json, as transformers reads them."""
    text = decode_text(raw, _shown(path))
    try:
        if path.name == "tokenizer.json":
            import orjson

            return orjson.loads(text)
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{_shown(path)} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise UserError(f"{_shown(path)} is nested too deeply to be a model's file") from None


def _check_index(path: Path, index: dict[str, Any]) -> None:
    """A sharded model's index: every shard it names is in the folder."""
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict):
        raise UserError(f"{_shown(path)} has no \"weight_map\" of tensors to files")
    for shard in sorted({str(v) for v in weight_map.values()}):
        if Path(shard).name != shard:
            raise UserError(f"{_shown(path)} names a file outside its folder ('{one_line(shard)}')")
        if not _present(path.parent / shard):
            raise UserError(f"{_shown(path)} names '{one_line(shard)}', which is not in the folder")


def _check_weights(folder: Path) -> None:
    """The weights sentence-transformers loads from ``folder``: its safetensors files when it has any
    (they are preferred), else its PyTorch files."""
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return  # the folder itself was checked by its resolution; the load says what it cannot read
    safetensors = [n for n in names if n.endswith(".safetensors")]
    torch_files = [n for n in names if n.startswith("pytorch_model") and n.endswith(".bin")]
    for name in safetensors:
        _check_safetensors(folder / name)
    if not safetensors:
        for name in torch_files:
            _check_torch_file(folder / name)


def _check_safetensors(path: Path) -> None:
    """A safetensors file: an 8-byte header length, the JSON header, then every tensor's bytes at the
    offsets the header gives; a file shorter than that is truncated."""
    size = _regular_size(path)
    if size < 8:
        raise UserError(f"{_shown(path)} is truncated ({size} bytes: not even a safetensors header's length)")
    with open(path, "rb") as fh:
        length = int.from_bytes(fh.read(8), "little")
        if length > MAX_SAFETENSORS_HEADER:
            raise UserError(f"{_shown(path)} is not a safetensors file (its first bytes give a header of {length:,} bytes)")
        if 8 + length > size:
            raise UserError(f"{_shown(path)} is truncated: its header alone is {8 + length:,} bytes and the file holds {size:,}")
        header = fh.read(length)
    try:
        data = json.loads(header.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        data = None
    if not isinstance(data, dict):
        raise UserError(f"{_shown(path)} is not a safetensors file (its header is not a JSON object)")
    end = 0
    for name, info in data.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            raise UserError(f"{_shown(path)} is not a safetensors file (tensor '{one_line(name)}' has no valid data offsets)")
        end = max(end, offsets[1])
    expected = 8 + length + end
    if expected > size:
        raise UserError(f"{_shown(path)} is truncated: its header describes {expected:,} bytes and the file holds {size:,}")


def _check_torch_file(path: Path) -> None:
    """A PyTorch weights file: since PyTorch 1.6 a zip archive, whose directory sits at its end (a
    truncated one has none); before that a pickle, recognised by its magic number."""
    size = _regular_size(path)
    with open(path, "rb") as fh:
        head = fh.read(len(LEGACY_TORCH_MAGIC))
    if head.startswith(LEGACY_TORCH_MAGIC):
        return
    if not head.startswith(b"PK\x03\x04"):
        raise UserError(f"{_shown(path)} is not a PyTorch weights file ({'empty' if size == 0 else 'neither a zip archive nor a pickle'})")
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise UserError(f"{_shown(path)} is truncated: its zip archive has no directory at its end ({size:,} bytes)") from None
    for m in members:
        if m.header_offset + m.compress_size > size:
            raise UserError(f"{_shown(path)} is truncated: '{one_line(m.filename)}' runs past its end")


# -- the byte-order mark -------------------------------------------------------------------------
def bom_free_view(check: FolderCheck) -> Path:
    """A folder that reads as ``check.folder`` with its JSON files' byte-order marks dropped.

    Built once per folder listing and marked files, in embprof's cache under a temporary name and
    renamed into place whole (a concurrent build leaves the one that won); its other files are links
    to the originals, so nothing large is copied and the weights read are the folder's own."""
    folder = check.folder.resolve()
    # By their place in the folder, not where a link leads: in the Hub's cache every file is a link to a blob.
    marked = {p.relative_to(check.folder) for p in check.bom_files}
    key = hashlib.sha256()
    key.update(str(folder).encode("utf-8", "surrogateescape"))
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files + dirs):
            key.update(b"\0" + os.path.relpath(os.path.join(root, name), folder).encode("utf-8", "surrogateescape"))
    for rel in sorted(marked):
        key.update(b"\0" + (folder / rel).read_bytes())
    parent = cache_dir() / "bom-free"
    final = parent / key.hexdigest()[:24]
    view = final / folder.name
    if view.is_dir():
        return view
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=parent))
        try:
            _mirror(folder, tmp / folder.name, marked, Path())
            try:
                os.rename(tmp, final)
            except OSError:
                if not view.is_dir():  # not another process's identical view: a real failure
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as exc:
        first = one_line(sorted(check.bom_files)[0])
        raise UserError(f"{WHAT} '{first}' begins with a byte-order mark, which the model's libraries do not read, and "
                        f"embprof's copy without it could not be written in '{one_line(parent)}' "
                        f"({(exc.strerror or exc.__class__.__name__).lower()})") from None
    return view


def _mirror(src: Path, dst: Path, marked: set[Path], rel: Path) -> None:
    """``dst`` made a folder whose entries link to ``src``'s, but for the marked files (copied without their
    mark) and the folders that hold one (mirrored the same way)."""
    dst.mkdir()
    for entry in sorted(src.iterdir()):
        here = rel / entry.name
        target = dst / entry.name
        if here in marked:
            target.write_bytes(entry.read_bytes()[len(codecs.BOM_UTF8):])
        elif entry.is_dir() and any(here in m.parents for m in marked):
            _mirror(entry, target, marked, here)
        else:
            target.symlink_to(entry.resolve())
