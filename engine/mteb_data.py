"""MTEB tasks by name, and local JSON Lines data loaded into mteb's own task objects.

The task object stays mteb's: its metadata, splits, prompts and evaluator are untouched; only
where its rows come from changes when a local folder has them. Layout, one file per split:
``<data-dir>/<folder>/<split>.jsonl`` (``<folder>/<subset>/<split>.jsonl`` for a task with
several subsets), STS rows ``{"sentence1", "sentence2", "score"}`` and classification rows
``{"text", "label"}``.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError
from .files import json_lines
from .text import one_line

SPEED_TASKS = ("CPUSpeedTask", "GPUSpeedTask")


def import_mteb() -> Any:
    """mteb, imported with its import-time chatter kept off the user's terminal."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mteb

    return mteb


def all_task_names() -> list[str]:
    import logging
    import warnings

    mteb = import_mteb()
    log = logging.getLogger("mteb")
    was = log.level
    log.setLevel(logging.CRITICAL + 1)  # a line per beta task otherwise
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tasks = mteb.get_tasks(exclude_superseded=False, exclude_private=False, exclude_beta=False)
    finally:
        log.setLevel(was)
    return sorted({t.metadata.name for t in tasks} | set(SPEED_TASKS))


def closest_task_names(name: str, known: list[str], n: int = 3) -> list[str]:
    """Case-insensitive first (``sts16`` → STS16), then by spelling."""
    folded = {k.lower(): k for k in known}
    exact = [folded[name.lower()]] if name.lower() in folded else []
    close = difflib.get_close_matches(name.lower(), list(folded), n=n, cutoff=0.6)
    out = exact + [folded[c] for c in close if folded[c] not in exact]
    return out[:n]


def get_task(name: str) -> Any:
    """mteb's task object for a name, or one sentence naming the closest names mteb knows."""
    import logging
    import warnings

    mteb = import_mteb()
    log = logging.getLogger("mteb")
    was = log.level
    log.setLevel(logging.CRITICAL + 1)  # its own "did you mean" goes to the log; ours is the one sentence
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return mteb.get_task(name)
    except KeyError:
        suggestions = closest_task_names(name, all_task_names())
        hint = f"; closest names: {', '.join(suggestions)}" if suggestions else ""
        raise UserError(f"mteb knows no task '{name}'{hint} (`embprof mteb --list-tasks` lists them)") from None
    finally:
        log.setLevel(was)


def needed_splits(task: Any) -> list[str]:
    """The splits mteb will read: the evaluation splits, plus the training split a classifier fits on."""
    splits = list(task.metadata.eval_splits)
    train = getattr(task, "train_split", None)
    if isinstance(train, str) and train not in splits and _is_classification(task):
        splits.insert(0, train)
    return splits


def _is_classification(task: Any) -> bool:
    from mteb.abstasks.classification import AbsTaskClassification

    return isinstance(task, AbsTaskClassification)


def folder_candidates(task_name: str, task_type: str) -> list[str]:
    """Folder names a task's data may sit under: ``STS16`` → STS16, sts16; ``SICK-R`` → sickr;
    ``Banking77Classification`` → banking77 (the task type dropped from the end)."""
    plain = re.sub(r"[^0-9a-z]", "", task_name.lower())
    out = [task_name, task_name.lower(), plain]
    suffix = re.sub(r"[^0-9a-z]", "", task_type.lower())
    if suffix and plain.endswith(suffix) and len(plain) > len(suffix):
        out.append(plain[: -len(suffix)])
    return list(dict.fromkeys(out))


@dataclass
class LocalData:
    folder: Path
    files: dict[str, dict[str, Path]]  # subset -> split -> file
    rows: dict[str, dict[str, int]] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {
            "folder": str(self.folder),
            "files": {sub: {sp: str(p) for sp, p in splits.items()} for sub, splits in self.files.items()},
            "rows": self.rows,
        }


LOCAL_TYPES = ("STS", "Classification")


def find_local(task: Any, data_dir: Path) -> tuple[LocalData | None, list[Path]]:
    """The task's local files under data_dir, or None and every file that was looked for.

    A folder that is there but lacks a split is an error, not a reason to fetch from the Hub:
    the user meant the local data.
    """
    splits = needed_splits(task)
    subsets = list(task.hf_subsets or ["default"])
    multi = bool(task.metadata.is_multilingual) and subsets != ["default"]
    looked: list[Path] = []
    for name in folder_candidates(task.metadata.name, str(task.metadata.type)):
        folder = data_dir / name
        if multi:
            found: dict[str, dict[str, Path]] = {}
            for sub in subsets:
                paths = {sp: folder / sub / f"{sp}.jsonl" for sp in splits}
                if all(p.is_file() for p in paths.values()):
                    found[sub] = paths
                else:
                    looked.extend(p for p in paths.values() if not p.is_file())
            if found:
                return _local(task, LocalData(folder, found)), []
        else:
            paths = {sp: folder / f"{sp}.jsonl" for sp in splits}
            missing = [p for p in paths.values() if not p.is_file()]
            if not missing:
                return _local(task, LocalData(folder, {"default": paths})), []
            if folder.is_dir():
                raise UserError(
                    f"{task.metadata.name}: the local folder '{one_line(folder)}' lacks {', '.join(p.name for p in missing)} "
                    f"(it needs {', '.join(f'{sp}.jsonl' for sp in splits)})"
                )
            looked.extend(missing)
    return None, looked


def _local(task: Any, data: LocalData) -> LocalData:
    if str(task.metadata.type) not in LOCAL_TYPES:
        raise UserError(
            f"{task.metadata.name} is a {task.metadata.type} task: local data is read for STS and classification tasks "
            "only; run it with the Hub's data (no --data-dir folder for it)"
        )
    return data


def _required_columns(task: Any) -> list[str]:
    if _is_classification(task):
        col = task.input_column_name
        cols = [col] if isinstance(col, str) else list(col)
        return [*cols, task.label_column_name]
    names = getattr(task, "column_names", None)
    if isinstance(names, tuple) and all(isinstance(c, str) for c in names):
        return [*names, "score"]
    return []


def _read_rows(path: Path) -> list[dict[str, Any]]:
    # Through the one JSON Lines reader: bounded, a byte-order mark and a bad line said the same as in every file embprof reads.
    rows = []
    for number, row in json_lines(str(path), "task data file", "one row of the task as a JSON object"):
        for key, value in row.items():
            # Python's JSON reader takes NaN and Infinity, which JSON itself does not have: a NaN gold score
            # would make the task's correlation NaN, and its results file no longer JSON.
            if isinstance(value, float) and not math.isfinite(value):
                literal = "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
                raise UserError(f"task data file '{one_line(path)}' line {number}: \"{one_line(key)}\" is {literal}, "
                                "which JSON does not allow: every value must be a finite number")
        rows.append(row)
    if not rows:
        raise UserError(f"task data file '{one_line(path)}' has no rows")
    return rows


def check_degenerate(task: Any, file: Path, ds: Any) -> None:
    """Refuse a split whose score could only be undefined or meaningless: one row, gold scores that
    never vary (a correlation with a constant is NaN), or labels of one class (nothing to tell apart)."""
    name = task.metadata.name
    shown = f"task data file '{one_line(file)}'"
    if len(ds) < 2:
        raise UserError(f"{shown} has {len(ds)} row{'s' if len(ds) != 1 else ''}: {name} needs at least 2 in each split")
    if _is_classification(task):
        column = task.label_column_name
        classes = {str(v) for v in ds[column]} if column in ds.column_names else set()
        if len(classes) == 1:
            raise UserError(f"{shown}: every \"{one_line(column)}\" is {one_line(repr(next(iter(classes))))}: "
                            f"{name} needs at least 2 classes to tell apart")
        return
    if "score" not in ds.column_names:
        return
    scores = ds["score"]
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in scores):
        if any(not math.isfinite(float(v)) for v in scores):  # a transform's own arithmetic can make one
            raise UserError(f"{shown}: a gold score is not a finite number")
        if len({float(v) for v in scores}) == 1:
            raise UserError(f"{shown}: every gold score is {float(scores[0]):g}: a correlation with scores that "
                            f"never vary is undefined, so {name} would score NaN")


def load_local(task: Any, data: LocalData) -> list[str]:
    """Put the local rows into the task object, then run the task's own dataset_transform.

    Rows may be in mteb's own form (``text``/``label``, ``sentence1``/``sentence2``/``score``) or in
    the form of the Hub dataset the task reads. A transform that renames the Hub's columns fails on
    rows already in mteb's form; those rows are then used as they are, and the returned note says so.
    """
    from datasets import Dataset, DatasetDict

    required = _required_columns(task)
    per_subset: dict[str, Any] = {}
    for sub, splits in data.files.items():
        per_subset[sub] = DatasetDict({split: Dataset.from_list(_read_rows(path)) for split, path in splits.items()})
    multi = not (list(per_subset) == ["default"] and not task.metadata.is_multilingual)
    if multi:
        task.hf_subsets = [s for s in task.hf_subsets if s in per_subset]

    def install() -> None:
        task.dataset = {k: DatasetDict(dict(v)) for k, v in per_subset.items()} if multi else DatasetDict(dict(per_subset["default"]))

    install()
    notes: list[str] = []
    try:
        task.dataset_transform()
    except Exception as exc:
        in_mteb_form = all(set(required) <= set(ds.column_names) for dd in per_subset.values() for ds in dd.values())
        if not (required and in_mteb_form):
            raise UserError(
                f"{task.metadata.name}'s own dataset_transform failed on the local data in '{one_line(data.folder)}': "
                f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            ) from None
        install()
        notes.append(
            f"{task.metadata.name}: the local rows are already in mteb's form, so its dataset_transform "
            f"(written for the Hub's columns) was not applied"
        )
    for sub, dd in (task.dataset.items() if multi else [("default", task.dataset)]):
        for split, ds in dd.items():
            missing = [c for c in required if c not in ds.column_names]
            if missing:
                raise UserError(
                    f"task data file '{one_line(data.files[sub][split])}' lacks the column{'s' if len(missing) > 1 else ''} "
                    f"{', '.join(repr(m) for m in missing)} that {task.metadata.name} reads"
                )
            check_degenerate(task, data.files[sub][split], ds)
            data.rows.setdefault(sub, {})[split] = len(ds)
    task.data_loaded = True
    return notes


def size_mismatches(task: Any, data: LocalData) -> list[str]:
    """Splits whose local row count differs from the size mteb's metadata gives for its own data."""
    if task.metadata.is_multilingual:
        return []
    try:
        expected = task.metadata.n_samples or {}
    except Exception:
        return []
    out = []
    for split, n in data.rows.get("default", {}).items():
        want = expected.get(split)
        if want is not None and want != n:
            out.append(
                f"{task.metadata.name} {split}: the local data has {n} rows, mteb's dataset has {want}; "
                "its scores are not comparable to published MTEB results"
            )
    return out


def in_hub_cache(task: Any) -> bool:
    """Whether the task's Hub dataset is already in the local Hugging Face cache (usable offline)."""
    path = str((task.metadata.dataset or {}).get("path", ""))
    if "/" not in path:
        return False
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        return (Path(HF_HUB_CACHE) / f"datasets--{path.replace('/', '--')}").is_dir()
    except Exception:
        return False


def hub_reachable(timeout: float = 10.0) -> bool:
    """Whether datasets can be fetched: not when HF_HUB_OFFLINE/HF_DATASETS_OFFLINE say so, or the Hub is unreachable."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").lower() in ("1", "true", "yes"):
            return False
    try:
        from huggingface_hub import HfApi

        HfApi().dataset_info("mteb/sts16-sts", timeout=timeout)
    except Exception as exc:
        from huggingface_hub.errors import RepositoryNotFoundError

        return isinstance(exc, RepositoryNotFoundError)  # reached the Hub, which answered
    return True
