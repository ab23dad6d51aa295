"""Reading old snapshots: schema version 1 (results as free dicts, no run plan) and version 2 (the
workload's settings as a free dict) migrated to version 3.

Version 2 to 3: the ``workload`` dict (each workload's settings and what it learned of its inputs,
under names of its own) becomes the typed facts of ``workload_facts``; the settings themselves are
the plan's, which version 2 already carries. A file without a plan keeps its recorded settings in
the facts' ``recorded``, so its report still says how it ran.

Version 1 to 3:

The migration is a function of the file alone. Results become their typed models; figures that
version 1 wrote as 0 where nothing was measured (tokens through llama.cpp's native API, words in
MTEB runs, the spread of a single call) become None; each timed call gets the group (kind of call)
that version 2 records; the run plan is rebuilt from the settings the file kept where they say
enough (a run that read standard input, or a similarity run with its own queries, did not keep
its texts: it gets no plan, and ``plan_note`` says why). The summary is folded again from the
migrated events by the same fold that makes new snapshots.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from . import results as R
from .errors import UserError
from .events import Event
from .fold import RunState
from .workload_facts import (
    NAMES,
    CellFacts,
    EncodeFacts,
    LoadFacts,
    MtebFacts,
    SimilarityFacts,
    SpeedFacts,
    SweepFacts,
    TrainFacts,
)

_NUMBERED = re.compile(r"\s+\d+$")


def _pick(model: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k in model.model_fields}


def _stats(d: dict[str, Any] | None) -> dict[str, Any]:
    d = dict(d or {})
    out = _pick(R.LatencyStats, d)
    if out.get("count", 0) <= 1:
        # Version 1 wrote a single call's spread as 0: it is unknown, not zero.
        out["std_s"] = None
        out["cv_percent"] = None
    return out


def _target(d: dict[str, Any]) -> dict[str, Any]:
    out = _pick(R.TargetFacts, d)
    if d.get("backend") == "http":
        out["device"] = out["device_resolved"] = out["dtype"] = None  # version 1 wrote "server" for all three
    out.setdefault("backend", "sentence-transformers")
    out.setdefault("model_name", str(d.get("model_name") or "unknown"))
    if isinstance(out.get("server_build"), (int, float)):
        out["server_build"] = str(out["server_build"])
    return out


def _result(name: str, data: dict[str, Any], target: dict[str, Any], reports_tokens: bool) -> dict[str, Any] | None:
    d = dict(data)
    if name == "target":
        return {"kind": "target", **_target(d)}
    if name.startswith("mteb:"):
        out = _pick(R.MtebTask, d)
        out["kind"] = "mteb_task"
        out["encodes"] = [
            {**_pick(R.MtebEncode, e), "tokens": e.get("tokens") if reports_tokens else None,
             "batches": e.get("batches") if target.get("backend") != "http" else None}
            for e in d.get("encodes") or []
        ]
        out["mteb_phases"] = [_pick(R.MtebPhase, p) for p in d.get("mteb_phases") or []]
        if isinstance(d.get("speed"), dict):
            out["speed"] = _result("speed", d["speed"], target, reports_tokens)
        return out
    kinds: dict[str, type[BaseModel]] = {
        "sampler": R.SamplerFacts, "kernel_counters": R.KernelCounters, "encode": R.EncodeResult, "tokens": R.TokenLengths,
        "agreement": R.Agreement, "speed": R.SpeedResult, "similarity": R.SimilarityResult, "sweep": R.SweepResult,
        "vs": R.VersusResult, "client_ceiling": R.ClientCeiling, "load": R.LoadResult, "server_metrics": R.ServerMetrics,
        "requests": R.RequestErrors, "mteb": R.MtebRun,
    }
    model = kinds.get(name)
    if model is None:
        return None
    out = _pick(model, d)
    out["kind"] = name
    if "stats" in d:
        out["stats"] = _stats(d.get("stats"))
    if name == "encode":
        if not d.get("embedding_dim"):
            out["embedding_dim"] = None
        if not reports_tokens:
            out["tokens_per_s"] = None
    elif name == "tokens":
        hist = d.get("histogram") or {}
        out["histogram_counts"] = hist.get("counts", [])
        out["histogram_edges"] = hist.get("edges", [])
    elif name == "speed":
        device = str(target.get("device_resolved") or "")
        if target.get("backend") == "http":
            out["task_name"], out["task_name_why"] = None, "a server: neither CPUSpeedTask nor GPUSpeedTask"
        elif device not in ("cpu",) and not device.startswith("cuda"):
            out["task_name"], out["task_name_why"] = None, f"device {device}: mteb's SpeedTasks name only cpu and cuda"
    elif name == "sweep":
        out["points"] = [
            {**_pick(R.SweepPoint, p), "gflops_estimate": p.get("gflops"), "stats": _stats(p.get("stats")),
             "padding_percent": p.get("padding_percent") if reports_tokens else None}
            for p in d.get("points") or []
        ]
        out["fits"] = [_pick(R.LatencyFit, f) | {"timings": f.get("timings", 0)} for f in d.get("fits") or []]
        limit = d.get("memory_limit")
        if isinstance(limit, dict):
            axis = limit.get("axis")
            out["memory_limit"] = {**_pick(R.MemoryLimit, limit), "curve": [
                {**_pick(R.MemoryPoint, c), "value": c.get(axis)} for c in limit.get("curve") or []]}
    elif name == "vs":
        out["a"], out["b"] = _target(d["a"]), _target(d["b"])
        out["a_stats"], out["b_stats"] = _stats(d.get("a_stats")), _stats(d.get("b_stats"))
    elif name == "client_ceiling":
        out["texts_per_request"] = 1
        if not out.get("requests_per_s"):
            out["requests_per_s"] = None
    elif name == "load":
        out["latency"] = _stats(d.get("latency"))
        if not reports_tokens:
            out["tokens_per_s"] = None
    return out


def _group(workload: str, label: str, phase_path: str) -> str:
    if label == "compare (local)":
        return label
    if workload == "mteb":
        return phase_path
    if workload == "encode":
        return "encode"
    if workload.endswith("-vs"):
        return label.split(" ", 1)[0]
    if workload == "speed":
        return "warm-up" if label == "warm-up" else _NUMBERED.sub("", label)
    if workload == "sweep":
        return label.removesuffix(" warm-up")
    return label


def _plan(target: dict[str, Any], workload: dict[str, Any], sample_hz: float) -> tuple[dict[str, Any] | None, str]:
    from .plan import validate_plan

    name = str(workload.get("name"))
    if target.get("backend") == "http":
        # Not server_pid: version 1 did not say whether it was given or found by the port, and a found
        # process id would tie the plan to a process that is long gone.
        t: dict[str, Any] = {"kind": "server", **{k: target.get(k) for k in ("url", "api", "prompts_from", "api_key_env")}}
        t.update({k: target[k] for k in ("timeout_s", "max_errors") if target.get(k) is not None})
    else:
        t = {"kind": "local", **{k: target.get(k) for k in ("model", "device", "dtype", "truncate_dim")},
             "trust_remote_code": bool(target.get("trust_remote_code"))}
    src = workload.get("input")
    inp = None if src in (None, "built-in sample corpus") else src
    if inp == "-":
        return None, "a schema-1 run that read standard input did not keep its lines: it cannot be run again"
    w: dict[str, Any]
    base = name.removesuffix("-vs")
    vs = workload.get("vs_model")
    vs = "bundled" if vs == "bundled all-MiniLM-L6-v2" else vs
    if base == "encode":
        w = {"name": "encode", "input": inp, **{k: workload.get(k) for k in ("mode", "prompt_name", "prompt", "batch_size", "warmups",
                                                                              "repeats", "compare_model")}}
        if name.endswith("-vs"):
            w.update(vs=vs, repeats=workload.get("pairs"))
    elif base == "speed":
        w = {"name": "speed", "text": workload.get("text_path"), "loops": workload.get("loops"), "batch_size": workload.get("batch_size")}
        if name.endswith("-vs"):
            w.update(vs=vs, loops=workload.get("pairs"))
    elif name == "similarity":
        if workload.get("source") != "built-in example":
            return None, "a schema-1 similarity run did not keep its queries: it cannot be run again"
        w = {"name": "similarity", **{k: workload.get(k) for k in ("prompt_name", "query_prompt_name", "doc_prompt_name", "batch_size")}}
    elif name == "sweep":
        axes = workload.get("axes") or {}
        w = {"name": "sweep", "axes": axes, "input": inp, "mode": workload.get("mode"), "prompt_name": workload.get("prompt_name"),
             "batch_size": None if "batch" in axes else workload.get("batch_size"), "warmups": workload.get("warmups"),
             "target_ci_percent": workload.get("target_ci_percent"), "budget_s": workload.get("budget_s_per_point"),
             "until_oom": workload.get("until_oom"), "ram_ceiling_mib": workload.get("ram_ceiling_mib")}
    elif name == "load":
        w = {"name": "load", "input": inp, "requests": workload.get("requests"), "duration_s": workload.get("duration_s"),
             "concurrency": workload.get("concurrency"), "rate": workload.get("rate_per_s"), "batch": workload.get("texts_per_request"),
             "prompt_name": workload.get("prompt_name")}
    elif name == "mteb":
        w = {"name": "mteb", **{k: workload.get(k) for k in ("tasks", "data_dir", "results_dir", "batch_size", "loops")}}
    else:
        return None, f"a schema-1 run of workload '{name}' cannot be rebuilt as a plan"
    w = {k: v for k, v in w.items() if v is not None}
    try:
        plan = validate_plan({"target": t, "workload": w, "recording": {"sample_hz": sample_hz}})
    except UserError as exc:
        return None, f"the schema-1 settings do not make a valid plan ({exc})"
    return plan.model_dump(mode="json"), "rebuilt from the settings of a schema-1 snapshot"


# Versions 1 and 2 wrote each fact under its own name, but two that a plan field now also has: (workload, fact) -> old name.
_OLD_NAME = {("mteb", "speed_loops"): "loops", ("train", "loss_class"): "loss"}
# Each workload's facts by the names versions 1 and 2 wrote them under (old name -> fact name).
_FACT_KEYS: dict[str, dict[str, str]] = {
    name: {_OLD_NAME.get((name, fact), fact): fact for fact in model.model_fields if fact not in ("name", "recorded")}
    for model in (EncodeFacts, SpeedFacts, SimilarityFacts, SweepFacts, LoadFacts, MtebFacts, TrainFacts, CellFacts)
    for name in (model.model_fields["name"].default,)
}
_VS_KEYS = {"vs_model": "vs_model", "pairs": "pairs", "order": "order"}


def _scalar(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return value


def workload_facts(settings: dict[str, Any], has_plan: bool) -> dict[str, Any]:
    """A version-1 or -2 ``workload`` dict as version 3's facts (JSON). ``has_plan``: the file's plan
    holds the settings; without one, the settings that are not facts are kept as ``recorded``."""
    name = str(settings.get("name"))
    if name not in NAMES:
        raise ValueError(f"its workload '{name}' is not one this embprof knows")
    base = name.removesuffix("-vs")
    keys = _FACT_KEYS[base]
    taken = {"name", *keys}

    def pick(names: dict[str, str]) -> dict[str, Any]:
        return {new: settings[old] for old, new in names.items() if settings.get(old) is not None}

    facts: dict[str, Any] = {"name": base, **pick(keys)}
    if name != base:
        facts = {"name": name, "inner": facts, **pick(_VS_KEYS)}
        taken |= set(_VS_KEYS)
    if not has_plan:
        recorded = {k: _scalar(v) for k, v in settings.items() if k not in taken}
        if recorded:
            facts["recorded"] = recorded
    return facts


def from_v2(data: dict[str, Any]) -> dict[str, Any]:
    """A version-2 snapshot's JSON as version 3's."""
    has_plan = data.get("plan") is not None
    out = dict(data)
    out["schema_version"] = 3
    out["migrated_from"] = data.get("migrated_from") or 2
    out["workload"] = workload_facts(dict(data["workload"]), has_plan)
    events = []
    for e in data.get("events") or []:
        if isinstance(e, dict) and e.get("kind") == "run_started" and isinstance(e.get("workload"), dict):
            e = {**e, "workload": workload_facts(e["workload"], has_plan)}
        events.append(e)
    if "events" in data:
        out["events"] = events
    return out


def from_v1(data: dict[str, Any]) -> dict[str, Any]:
    """A version-1 snapshot's JSON as version 3's."""
    target = dict(data["target"])
    workload = dict(data["workload"])
    name = str(workload.get("name"))
    reports_tokens = not (target.get("backend") == "http" and target.get("api") == "llama")
    events: list[dict[str, Any]] = [dict(e) for e in data["events"]]
    # A phase's path, for the MTEB runs' groups; each call's group, for its batches and requests.
    phases: dict[int, tuple[str, int]] = {}
    for e in events:
        if e.get("kind") == "phase_started":
            phases[e["phase_id"]] = (e["name"], e.get("parent_id", 0))

    def path(pid: int) -> str:
        names: list[str] = []
        while pid in phases:
            n, pid = phases[pid]
            names.insert(0, n)
        return " › ".join(names)

    call_group: dict[int, str] = {}
    for e in events:
        if e.get("kind") == "encode_timed":
            call_group[e["call_index"]] = _group(name, str(e.get("label", "")), path(e.get("phase_id", 0)))
    sample_hz = 10.0
    out_events: list[dict[str, Any]] = []
    for e in events:
        kind = e.get("kind")
        if kind == "run_started":
            sample_hz = float(e.get("sample_hz") or 10.0)
            e["target"] = _target(e.get("target") or {})
        elif kind == "result":
            converted = _result(str(e.get("name")), e.get("data") or {}, target, reports_tokens)
            if converted is None:
                continue
            e = {"kind": "result", "t_ns": e["t_ns"], "result": converted}
        elif kind == "encode_timed":
            e["group"] = call_group.get(e["call_index"], "")
            if not reports_tokens:
                e["tokens"] = None
            if name == "mteb":
                e["words"] = None  # version 1 wrote 0: mteb's texts were never counted
        elif kind == "batch_timed":
            e["group"] = call_group.get(e["call_index"], "")
            if not reports_tokens:
                e["tokens"] = e["padded_tokens"] = None
            elif target.get("backend") == "http":
                e["padded_tokens"] = None
        elif kind == "request_timed":
            e["group"] = "load" if name == "load" else call_group.get(e["call_index"], "")
        out_events.append(e)
    plan, note = _plan(target, workload, sample_hz)
    facts = workload_facts(workload, plan is not None)
    for e in out_events:
        if e.get("kind") == "run_started":
            e["plan"] = plan
            e["workload"] = facts
    # The events validate as version 2's, then fold into the summary as a new snapshot's would.
    adapter: TypeAdapter[Any] = TypeAdapter(list[Annotated[Event, Field(discriminator="kind")]])
    try:
        typed = adapter.validate_python(out_events)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ValueError(f"{'.'.join(str(x) for x in first.get('loc', ()))}: {first.get('msg')}") from None
    state = RunState()
    for ev in typed:
        state.apply(ev)
    old_summary = data.get("summary") or {}
    summary = state.summary(timeline_stride=int(old_summary.get("timeline_stride") or 1))
    return {
        "schema_version": 3,
        "tool": "embprof",
        "tool_version": data.get("tool_version", "unknown"),
        "run_id": data["run_id"],
        "created_utc": data["created_utc"],
        "status": data["status"],
        "migrated_from": 1,
        "plan": plan,
        "plan_note": note,
        "environment": data.get("environment") or {},
        "target": state.target.model_dump(mode="json") if state.target is not None else _target(target),
        "workload": facts,
        "summary": summary.model_dump(),
        "events": out_events,
    }
