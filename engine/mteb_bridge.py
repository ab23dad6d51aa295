"""Where mteb meets the run: live phases from mteb's own timer and encode calls, and results in
mteb's own files.

mteb 2.x times its phases with a ``TimingStack`` that it hands to ``AbsTask.evaluate(timer=…)``,
and reports them only in the finished ``TaskResult``. Two taps make them live without changing
what mteb computes:

* the task's ``evaluate``/``load_data`` get a timer that forwards every call to mteb's own and
  opens the same phase, by the same name, in the run's event stream as it starts;
* the encoder mteb is given is mteb's own ``SentenceTransformerEncoderWrapper`` around the
  target's loaded model, with ``encode`` timed: the phase gets the number of texts, the prompt
  type and the prompt mteb chose, and the batch hooks time every forward pass inside it.

When the task ends its ``evaluation_phases`` are matched against what was seen live.
"""

from __future__ import annotations

import json
import os
import re
import time
import warnings
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Callable

from .context import RunContext
from .errors import UserError
from .files import atomic_write_bytes
from .results import MtebEncode, MtebPhase, finite_or_null
from .plan import BUNDLED_MODEL_ID
from .targets import SentenceTransformerTarget
from .versions import library_version

EXPERIMENT = re.compile(r"^(.*?)\s*\((\d+/\d+)\)$")  # "Running experiment (3/10)"


@dataclass
class LivePhase:
    """One phase mteb opened, as seen live: its name, where it was and when on the run's clock."""

    name: str
    split: str
    subset: str
    phase_id: int | None = None  # the run's phase that showed it, if one did
    start_ns: int = 0
    end_ns: int | None = None


@dataclass
class TaskSession:
    """The live state of one task's evaluation."""

    ctx: RunContext
    task_name: str
    live: list[LivePhase] = field(default_factory=list)
    encodes: list[MtebEncode] = field(default_factory=list)
    inner_timer: Any = None  # mteb's TimingStack, whose clock the final phases are relative to
    pending: LivePhase | None = None  # an "Encoding …" phase waiting for its encode call

    def open_phase(self, name: str, split: str, subset: str) -> tuple[LivePhase, AbstractContextManager[int] | None]:
        record = LivePhase(name=name, split=split, subset=subset, start_ns=self.ctx.now())
        self.live.append(record)
        if name.startswith("Encoding"):
            # The encode call inside names the phase with what only it knows (texts, prompt).
            self.pending = record
            return record, None
        shown, detail = name, ""
        m = EXPERIMENT.match(name)
        if m:
            shown, detail = m.group(1), m.group(2)
        where = "/".join(x for x in (split, subset if subset != "default" else "") if x)
        detail = " · ".join(x for x in (detail, where) if x)
        cm = self.ctx.phase(shown, detail)
        record.phase_id = cm.__enter__()
        return record, cm

    def close_phase(self, record: LivePhase, cm: AbstractContextManager[int] | None, exc: tuple[Any, Any, Any]) -> None:
        if self.pending is record:
            self.pending = None
        record.end_ns = self.ctx.now()
        if cm is not None:
            cm.__exit__(*exc)


class _LiveTimingContext:
    def __init__(self, session: TaskSession, inner: Any, name: str, split: str, subset: str) -> None:
        self.session = session
        self.inner = inner
        self.args = (name, split, subset)
        self.record: LivePhase | None = None
        self.cm: AbstractContextManager[int] | None = None

    def __enter__(self) -> _LiveTimingContext:
        self.inner.__enter__()
        self.record, self.cm = self.session.open_phase(*self.args)
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        try:
            if self.record is not None:
                self.session.close_phase(self.record, self.cm, (et, ev, tb))
        finally:
            self.inner.__exit__(et, ev, tb)


class LiveTimer:
    """Stands in for mteb's TimingStack: everything is forwarded to it; phases also go live."""

    def __init__(self, inner: Any, session: TaskSession) -> None:
        self._inner = inner
        self._session = session
        session.inner_timer = inner

    def __call__(self, name: str, split: str = "", subset: str = "", log_message: str | None = None) -> _LiveTimingContext:
        return _LiveTimingContext(self._session, self._inner(name, split=split, subset=subset, log_message=log_message), name, split, subset)

    def add_phase(self, name: str, start: float, end: float, split: str, subset: str) -> None:
        self._inner.add_phase(name, start, end, split=split, subset=subset)

    @property
    def phases(self) -> Any:
        return self._inner.phases

    @property
    def _start_time(self) -> Any:
        return self._inner._start_time

    @_start_time.setter
    def _start_time(self, value: Any) -> None:
        self._inner._start_time = value

    def plot(self) -> str:
        return str(self._inner.plot())


def tap_task(task: Any, session: TaskSession) -> None:
    """Give this task object's evaluate and load_data a live timer (on the instance only)."""
    from mteb.timing import TimingStack

    evaluate, load_data = task.evaluate, task.load_data

    def live_evaluate(*args: Any, timer: Any = None, **kwargs: Any) -> Any:
        return evaluate(*args, timer=LiveTimer(timer if timer is not None else TimingStack(), session), **kwargs)

    def live_load_data(*args: Any, timer: Any = None, **kwargs: Any) -> Any:
        return load_data(*args, timer=LiveTimer(timer if timer is not None else TimingStack(), session), **kwargs)

    task.evaluate = live_evaluate
    task.load_data = live_load_data


def reconcile(session: TaskSession, final_phases: list[dict[str, Any]] | None, mono_ref: float, ns_ref: int) -> tuple[MtebPhase, ...]:
    """mteb's own phase list for the task, each placed on the run's clock and paired with the
    phase seen live (same name, split and subset, in order)."""
    out: list[dict[str, Any]] = []
    start_abs = getattr(session.inner_timer, "_start_time", None)
    unmatched = list(session.live)
    for p in final_phases or []:
        match = next((r for r in unmatched if (r.name, r.split, r.subset) == (p["name"], p.get("split", ""), p.get("subset", ""))), None)
        if match is not None:
            unmatched.remove(match)
        mteb_s = float(p["end"]) - float(p["start"])
        row: dict[str, Any] = {
            "name": p["name"],
            "split": p.get("split", ""),
            "subset": p.get("subset", ""),
            "mteb_seconds": mteb_s,
            "seen_live": match is not None,
            "phase_id": match.phase_id if match is not None else None,
        }
        if match is not None and match.end_ns is not None:
            row["start_s"] = match.start_ns / 1e9
            row["live_seconds"] = (match.end_ns - match.start_ns) / 1e9
            row["difference_ms"] = (row["live_seconds"] - mteb_s) * 1e3
        elif start_abs is not None:
            # Only mteb saw it (a fallback phase it adds itself): place it by mteb's monotonic clock.
            row["start_s"] = (ns_ref + (start_abs + float(p["start"]) - mono_ref) * 1e9) / 1e9
        out.append(row)
    # mteb lists a phase when it ends (an experiment before the scoring that holds it); by start reads better.
    out.sort(key=lambda r: r.get("start_s", float("inf")))
    return tuple(MtebPhase(**r) for r in out)


def _prompt_choice(model_prompts: dict[str, str] | None, task_metadata: Any, prompt_type: Any) -> tuple[str | None, str | None]:
    if not model_prompts:
        return None, None
    from mteb.models.abs_encoder import get_prompt_name

    name = get_prompt_name(model_prompts, task_metadata, prompt_type)
    return name, (model_prompts.get(name) if name else None)


Transform = Callable[[Any], Any]


def make_encoder(target: Any, session_of: Any, transform: Transform | None = None) -> Any:
    """mteb's own encoder wrapper around the target's loaded model, with encode timed; for a
    server or an exported graph, an mteb encoder that calls the target's own encode.

    ``transform`` (a matrix cell's output precision) maps the embeddings before mteb scores them,
    so the scorer sees exactly the vectors the cell stores."""
    if not isinstance(target, SentenceTransformerTarget):
        return _generic_encoder(target, session_of, transform)
    from mteb.models.sentence_transformer_wrapper import SentenceTransformerEncoderWrapper

    class ProfiledEncoder(SentenceTransformerEncoderWrapper):
        def encode(self, inputs: Any, *, task_metadata: Any, hf_split: str, hf_subset: str, prompt_type: Any = None, **kwargs: Any) -> Any:
            session: TaskSession = session_of()
            ctx = session.ctx
            dataset = getattr(inputs, "dataset", None)
            # Words are not counted here (None, not 0): reading every text would add to mteb's own timing of this phase.
            texts = len(dataset) if dataset is not None else 0
            prompt_name, prompt = _prompt_choice(self.model_prompts, task_metadata, prompt_type)
            ptype = getattr(prompt_type, "value", prompt_type)
            pending, session.pending = session.pending, None
            name = pending.name if pending is not None else "encode"
            where = "/".join(x for x in (hf_split, hf_subset if hf_subset != "default" else "") if x)
            detail = " · ".join(
                x for x in (where, f"{texts} texts", f"prompt {prompt_name}" if prompt_name else "no prompt", ptype or "") if x
            )
            with ctx.phase(name, detail) as phase_id:
                if pending is not None:
                    pending.phase_id = phase_id
                # Each encoding phase of each task is its own kind of call (texts of another length and side).
                group = f"{session.task_name} › {name}"
                with target.timed_call(ctx, label=f"{session.task_name} {hf_split}", items=texts, words=None, group=group) as call:
                    out = super().encode(
                        inputs, task_metadata=task_metadata, hf_split=hf_split, hf_subset=hf_subset, prompt_type=prompt_type, **kwargs
                    )
            if transform is not None:
                out = transform(out)
            check_finite(out, hf_split)
            session.encodes.append(
                MtebEncode(
                    phase_id=phase_id,
                    phase=name,
                    split=hf_split,
                    subset=hf_subset,
                    texts=texts,
                    prompt_type=ptype,
                    prompt_name=prompt_name,
                    prompt=prompt,
                    seconds=call.duration_ns / 1e9,
                    tokens=call.tokens,
                    batches=call.batches,
                )
            )
            return out

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mteb's deprecation chatter about sentence-transformers' API
        encoder = ProfiledEncoder(target.model)
    name, revision = results_identity(target, encoder.mteb_model_meta)
    encoder.mteb_model_meta = encoder.mteb_model_meta.model_copy(update={"name": name, "revision": revision})
    return encoder


def _generic_encoder(target: Any, session_of: Any, transform: Transform | None) -> Any:
    from mteb.models import ModelMeta
    from mteb.models.abs_encoder import AbsEncoder
    from mteb.models.model_meta import ScoringFunction

    class ServerEncoder(AbsEncoder):
        def __init__(self) -> None:
            prompts, _invalid = AbsEncoder.validate_task_to_prompt_name(dict(target.prompts), raise_for_invalid_keys=False)
            self.model_prompts = prompts or None
            facts = target.describe()
            name = str(facts.model_name or facts.url)
            self.mteb_model_meta = ModelMeta.create_empty(overwrites={
                "name": name if "/" in name else f"{facts.backend}/{name}", "revision": "no_revision_available",
                "similarity_fn_name": ScoringFunction.COSINE})  # mteb compares it by identity

        def encode(self, inputs: Any, *, task_metadata: Any, hf_split: str, hf_subset: str, prompt_type: Any = None, **kwargs: Any) -> Any:
            session: TaskSession = session_of()
            ctx = session.ctx
            texts = [t for batch in inputs for t in batch["text"]]
            prompt_name, prompt = _prompt_choice(self.model_prompts, task_metadata, prompt_type)
            ptype = getattr(prompt_type, "value", prompt_type)
            pending, session.pending = session.pending, None
            name = pending.name if pending is not None else "encode"
            where = "/".join(x for x in (hf_split, hf_subset if hf_subset != "default" else "") if x)
            detail = " · ".join(x for x in (where, f"{len(texts)} texts", f"prompt {prompt_name}" if prompt_name else "no prompt", ptype or "") if x)
            with ctx.phase(name, detail) as phase_id:
                if pending is not None:
                    pending.phase_id = phase_id
                out = target.encode(ctx, texts, prompt=prompt or "", batch_size=int(kwargs.get("batch_size") or 32),
                                    label=f"{session.task_name} {hf_split}", group=f"{session.task_name} › {name}")
            session.encodes.append(MtebEncode(phase_id=phase_id, phase=name, split=hf_split, subset=hf_subset, texts=len(texts),
                                              prompt_type=ptype, prompt_name=prompt_name, prompt=prompt,
                                              seconds=out.duration_ns / 1e9, tokens=out.tokens, batches=out.batches))
            vectors = out.embeddings if transform is None else transform(out.embeddings)
            check_finite(vectors, hf_split)
            return vectors

    return ServerEncoder()


def check_finite(vectors: Any, split: str) -> None:
    """Refuse vectors that hold NaN or infinite values (a diverged model's) before mteb scores them: its
    scorers would fail deep inside scikit-learn ("Input contains NaN"), or score NaN."""
    import numpy as np

    if hasattr(vectors, "detach"):  # a torch tensor (bfloat16 has no numpy type)
        vectors = vectors.detach().float().cpu().numpy()
    values = np.asarray(vectors)
    if values.dtype.kind not in "fc":
        return  # integers (a quantized output) are finite
    flat = values.reshape(-1)
    chunk = 1 << 22  # a task's vectors can be gigabytes: the mask is made a slice at a time
    bad = sum(int(len(part) - np.count_nonzero(np.isfinite(part))) for part in (flat[i:i + chunk] for i in range(0, flat.size, chunk)))
    if bad:
        raise UserError(f"{bad:,} of the {values.size:,} embedding values the model gave for the {split} texts "
                        "are NaN or infinite: mteb cannot score them, and no results file was written")


def results_identity(target: SentenceTransformerTarget, meta: Any) -> tuple[str, str]:
    """The model name and revision the results are filed under, as mteb files them."""
    name = meta.name if meta.name and meta.name != "no_model_name/available" else None
    if target.spec.model is None:
        name = BUNDLED_MODEL_ID
    elif name is None:
        name = target.spec.model if not Path(target.location).is_dir() else f"local/{Path(target.location).resolve().name}"
    return name, meta.revision or "no_revision_available"


def results_folder(results_dir: Path, meta: Any) -> Path:
    return results_dir / str(meta.model_name_as_path()) / str(meta.revision or "no_revision_available")


def strict_json(data: Any, indent: int) -> tuple[bytes, list[str]]:
    """``data`` as strict JSON (no bare NaN or Infinity: a non-finite number is null), and where each
    null stands for one (``results.finite_or_null``)."""
    clean, nulled = finite_or_null(data)
    return json.dumps(clean, default=str, indent=indent, allow_nan=False).encode("utf-8"), nulled


def write_task_result(result: Any, meta: Any, results_dir: Path) -> tuple[Path, list[str]]:
    """``<results>/<org__model>/<revision>/<Task>.json`` and ``model_meta.json``, in mteb's own
    serialisation (TaskResult.to_disk, ModelMeta.to_dict), each written atomically; and the scores
    written as null because they were not finite (mteb's own writer would leave a bare ``NaN``)."""
    folder = results_folder(results_dir, meta)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{result.task_name}.json"
    import tempfile

    fd, name = tempfile.mkstemp(prefix=f".{result.task_name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    tmp = Path(name)
    try:
        result.to_disk(tmp)  # mteb's own serialisation, then an atomic rename into place
        raw = tmp.read_bytes()
    finally:
        tmp.unlink(missing_ok=True)
    # Python's json reads the NaN it wrote; only a file that holds one is written again, in mteb's own layout.
    written, nulled = strict_json(json.loads(raw), indent=2)
    atomic_write_bytes(path, written if nulled else raw)
    atomic_write_bytes(folder / "model_meta.json", strict_json(meta.to_dict(), indent=4)[0])
    return path, nulled


def write_speed_result(task_name: str, scores: dict[str, Any], evaluation_time: float, meta: Any, results_dir: Path) -> Path:
    """A SpeedTask result in mteb 1.x's form, which mteb 2.x no longer writes."""
    folder = results_folder(results_dir, meta)
    data = {
        "dataset_revision": "1.0",
        "task_name": task_name,
        "mteb_version": library_version("mteb"),
        "scores": {"test": [{**scores, "hf_subset": "default", "languages": ["eng-Latn"]}]},
        "evaluation_time": evaluation_time,
        "kg_co2_emissions": None,
    }
    path = folder / f"{task_name}.json"
    atomic_write_bytes(path, strict_json(data, indent=2)[0])
    atomic_write_bytes(folder / "model_meta.json", strict_json(meta.to_dict(), indent=4)[0])
    return path


def monotonic_pair(ctx: RunContext) -> tuple[float, int]:
    """The same instant on mteb's clock (time.monotonic) and the run's."""
    return time.monotonic(), ctx.now()
