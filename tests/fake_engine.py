"""A fake event source at the engine boundary: scripted, deterministic runs, the snapshots of test-made
events, and a runner that plays them (for the dashboard's tests).

Every Result carries one of the engine's typed result models (engine/results.py): a change of the
snapshot schema breaks these doubles loudly instead of leaving them describing a format that is gone.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterable
from typing import Any, ClassVar

from embprof.engine.events import (
    BatchTimed,
    EncodeTimed,
    ErrorEvent,
    Event,
    Note,
    PhaseEnded,
    PhaseStarted,
    ResourceSample,
    Result,
    RunFinished,
    RunStarted,
    Subscriber,
)
from embprof.engine.plan import RunPlan
from embprof.engine.results import (
    KernelCounters,
    LatencyFit,
    LatencyStats,
    MemoryLimit,
    MtebRun,
    MtebTask,
    SamplerFacts,
    SimilarityResult,
    SweepPoint,
    SweepResult,
    TargetFacts,
)
from embprof.engine.snapshot import Recorder, Snapshot, build
from embprof.engine.workload_facts import (
    EncodeFacts,
    MtebFacts,
    SimilarityFacts,
    SweepFacts,
)

MS = 1_000_000
S = 1_000_000_000

CALL_MS = (510.0, 498.0, 530.0)  # the timed encode calls
WARMUP_MS = 640.0


def sample(t_ns: int, rss: float, cpu: float = 150.0, threads: int = 9, gpu: bool = False, server: bool = False) -> ResourceSample:
    """One resource sample: the process at ``rss`` MiB, the host's RAM and cores; ``gpu``: NVML's and torch's
    figures too; ``server``: a local server's process too."""
    extra: dict[str, Any] = {}
    if server:
        extra.update(server_rss_mib=300.0 + rss / 10, server_cpu_percent=180.0, server_threads=4)
    if gpu:
        extra = {"gpu_used_mib": 4096.0 + rss, "gpu_total_mib": 24576.0, "gpu_process_mib": rss * 2, "gpu_util_percent": 80.0,
                 "torch_allocated_mib": rss, "torch_reserved_mib": rss * 1.5, "torch_max_allocated_mib": rss,
                 "torch_max_reserved_mib": rss * 1.5}
    return ResourceSample(
        t_ns=t_ns, rss_mib=rss, sys_ram_used_mib=rss + 900.0, sys_ram_available_mib=20000.0, cpu_percent=cpu,
        per_core_percent=(cpu / 2, cpu / 2), threads=threads, **extra,
    )


# -- snapshots of test-made events ------------------------------------------------------------------------------


def recorder_of(events: Iterable[Event]) -> Recorder:
    """A Recorder that has been given ``events`` in order, as a run publishes them."""
    rec = Recorder()
    for e in events:
        rec(e)
    return rec


def snapshot_of(events: Iterable[Event], environment: dict[str, Any] | None = None, **fields: Any) -> Snapshot:
    """The snapshot the engine builds (engine.snapshot.build) of test-made events; ``fields`` set what a built
    snapshot does not say of itself (``migrated_from``, ``plan_note``: a migrated file's)."""
    snap = build(recorder_of(events), environment or {})
    return snap.model_copy(update=fields) if fields else snap


def recorded_run(status: str = "complete") -> tuple[list[Event], Recorder]:
    """A short run (a load, one timed encode call of one batch), recorded; the events are also returned as they
    were published."""
    events: list[Event] = [
        RunStarted(t_ns=0, run_id="r1", started_utc="2026-01-01T00:00:00+00:00",
                   target=TargetFacts(backend="sentence-transformers", model_name="m", device="cpu"),
                   workload=EncodeFacts(), sample_hz=10.0, plan=RunPlan()),
        sample(1, 100.0),
        PhaseStarted(t_ns=2, phase_id=1, name="load"),
        sample(3, 300.0),
        PhaseEnded(t_ns=4, phase_id=1, name="load", duration_ns=2),
        PhaseStarted(t_ns=5, phase_id=2, name="encode", detail="repeat 1/1"),
        BatchTimed(t_ns=6, phase_id=2, call_index=0, batch_index=0, items=2, tokens=10, padded_tokens=16, duration_ns=1_000_000, warmup=False,
                   group="encode"),
        EncodeTimed(t_ns=7, phase_id=2, call_index=0, label="repeat 1", items=2, tokens=10, words=6, duration_ns=2_000_000, warmup=False,
                    group="encode"),
        sample(8, 200.0),
        PhaseEnded(t_ns=9, phase_id=2, name="encode", duration_ns=4),
        Result(t_ns=10, result=KernelCounters(ru_maxrss_mib=310.0)),
        RunFinished(t_ns=11, status=status, duration_ns=11),  # type: ignore[arg-type]
    ]
    return events, recorder_of(events)


# -- scripted runs -----------------------------------------------------------------------------------------------


def scripted_mteb(t: int, rss: float, gpu: bool) -> tuple[list[Event], int, float]:
    """Two MTEB tasks after the load: STS16 done, Banking77Classification failed in its scoring.

    Each encoding phase times one encode call of its own group (mteb's texts are not counted in
    words: ``words=None``), so the run has several kinds of calls and no pooled headline.
    """
    tasks = ("STS16", "Banking77Classification")
    ev: list[Event] = [Result(t_ns=t, result=MtebRun(tasks=tasks, model_name="fake/minilm", revision="no_revision_available",
                                                     results_dir="results"))]
    pid = 3
    call = 0
    plan = {
        "STS16": [("Encoding samples 1", "test · 1186 texts · no prompt", 900, 40.0), ("Encoding samples 2", "test · 1186 texts · no prompt", 880, 5.0),
                  ("Scoring", "test", 20, 0.0)],
        "Banking77Classification": [("Encoding training samples", "test · 5416 texts · no prompt", 2400, 120.0),
                                    ("Encoding test samples", "test · 3080 texts · no prompt", 1400, 30.0), ("Scoring", "test", 300, 0.0)],
    }
    for task, phases in plan.items():
        task_pid, task_t0 = pid, t
        ev.append(PhaseStarted(t_ns=t, phase_id=task_pid, name=task, detail="STS · test · local data", parent_id=0))
        pid += 1
        failed = task == "Banking77Classification"
        for name, detail, ms, grow in phases:
            ev.append(PhaseStarted(t_ns=t, phase_id=pid, name=name, detail=detail, parent_id=task_pid))
            for _ in range(2):
                t += ms * MS // 2
                rss += grow / 2
                ev.append(sample(t, rss, cpu=180.0, threads=11, gpu=gpu))
            if name.startswith("Encoding"):
                texts = int(detail.split(" · ")[1].split()[0])
                ev.append(EncodeTimed(t_ns=t, phase_id=pid, call_index=call, label=name, items=texts, tokens=texts * 12, words=None,
                                      duration_ns=ms * MS, warmup=False, group=f"{task} › {name}"))
                call += 1
            ok = not (failed and name == "Scoring")
            ev.append(PhaseEnded(t_ns=t, phase_id=pid, name=name, duration_ns=ms * MS, ok=ok))
            pid += 1
        ev.append(PhaseEnded(t_ns=t, phase_id=task_pid, name=task, duration_ns=t - task_t0, ok=not failed))
        if failed:
            result = MtebTask(task=task, status="failed", phase_id=task_pid, seconds=(t - task_t0) / S,
                              error="ValueError: the classifier could not be fitted")
        else:
            result = MtebTask(task=task, status="ok", phase_id=task_pid, seconds=(t - task_t0) / S, type="STS",
                              main_score_name="cosine_spearman", main_score=0.789859,
                              results_file="results/fake__minilm/no_revision_available/STS16.json")
        ev.append(Result(t_ns=t, result=result))
    ev.append(ErrorEvent(t_ns=t, error_kind="runtime", message="TasksFailed: 1 of 2 tasks failed (Banking77Classification)"))
    return ev, t, rss


def sweep_point(n: int, med: float, ci: float, stop: str, reps: int, rss: float) -> SweepPoint:
    return SweepPoint(params={"lines": n}, label=f"lines={n}", lines=n, batch_size=32, status="ok", median_s=med,
                      ci_half_width_percent=ci, stop=stop, repeats=reps, items_per_s=n / med, peak_rss_mib=rss,
                      gflops_estimate=n * 0.9 / med, stats=LatencyStats(count=reps, samples_s=(med,) * reps))


SWEEP = SweepResult(
    axes={"lines": (25, 50, 100)},
    points=tuple(sweep_point(*p) for p in ((25, 0.49, 1.2, "precision", 6, 610.0), (50, 0.70, 1.8, "precision", 9, 640.0),
                                           (100, 1.12, 3.5, "budget", 14, 700.0))),
    fits=(LatencyFit(group={}, formula="280 ms + 8.4 ms a line", r2=0.998, terms=("fixed", "per_line"),
                     coef={"fixed": 0.28, "per_line": 0.0084}, ci95={}, observations=4, timings=29),),
)
NO_FIT = MemoryLimit(axis="batch", largest_that_fits=None, stopped="peak RSS 950 MiB crossed the 900 MiB ceiling at batch 8",
                     ceiling_mib=900.0, curve=())


def target_facts(*, gpu: bool = False, llama: bool = False) -> TargetFacts:
    if llama:
        return TargetFacts(backend="http", model_name="fake-llama.gguf", api="llama", url="http://127.0.0.1:8080")
    return TargetFacts(backend="sentence-transformers", model_name="fake/minilm", device="cpu", device_resolved="cuda" if gpu else "cpu",
                       dtype="float32", max_seq_length=256)


def scripted_run(*, gpu: bool = False, similarity: bool = False, fail_load: bool = False, mteb: bool = False,
                 sweep: bool | SweepResult = False, server: bool = False, llama: bool = False) -> list[Event]:
    """A complete encode run: import, load, one warm-up, three timed calls of two batches each.

    ``llama``: against llama.cpp's native API, which reports no token counts (tokens are None).
    """
    start_target = (TargetFacts(model_name="fake-llama.gguf", backend="http") if llama else
                    TargetFacts(model_name="fake/minilm", backend="sentence-transformers", device="cpu", dtype="float32"))
    ev: list[Event] = [
        RunStarted(t_ns=0, run_id="20260101T000000Z-fake01", started_utc="2026-01-01T00:00:00+00:00",
                   target=start_target,
                   workload=MtebFacts() if mteb else SweepFacts() if sweep else SimilarityFacts() if similarity else EncodeFacts(),
                   sample_hz=10.0),
    ]
    if not gpu:
        ev.append(Note(t_ns=1, text="host-only sampling: NVML unavailable (fake); GPU columns are N/A"))
    t = 10 * MS
    rss = 200.0
    ev += [PhaseStarted(t_ns=t, phase_id=1, name="import", detail="torch + sentence_transformers")]
    for _ in range(5):
        t += 100 * MS
        rss += 60
        ev.append(sample(t, rss, gpu=gpu))
    ev.append(PhaseEnded(t_ns=t, phase_id=1, name="import", duration_ns=t - 10 * MS))
    if fail_load:
        ev += [
            PhaseStarted(t_ns=t, phase_id=2, name="load", detail="fake/missing"),
            PhaseEnded(t_ns=t + MS, phase_id=2, name="load", duration_ns=MS, ok=False),
            ErrorEvent(t_ns=t + 2 * MS, error_kind="input", message="could not load model 'fake/missing': no such model", phase="load"),
            RunFinished(t_ns=t + 3 * MS, status="failed", duration_ns=t + 3 * MS),
        ]
        return ev
    ev += [PhaseStarted(t_ns=t, phase_id=2, name="load", detail="fake/minilm")]
    t += 200 * MS
    rss += 90
    ev += [sample(t, rss, gpu=gpu), PhaseEnded(t_ns=t, phase_id=2, name="load", duration_ns=200 * MS)]
    ev += [Result(t_ns=t, result=target_facts(gpu=gpu, llama=llama))]
    if mteb:
        more, t, rss = scripted_mteb(t, rss, gpu)
        ev += more
        ev += [
            Result(t_ns=t + MS, result=KernelCounters(ru_maxrss_mib=rss + 3.0)),
            RunFinished(t_ns=t + 2 * MS, status="failed", duration_ns=t + 2 * MS),
        ]
        return ev
    pid = 3
    calls = [("warm-up", WARMUP_MS, True)] + [(f"repeat {i + 1}", ms, False) for i, ms in enumerate(CALL_MS)]
    for ci, (label, ms, warm) in enumerate(calls):
        name = "warm-up" if warm else "encode"
        detail = "1/1" if warm else f"{ci}/3"
        ev.append(PhaseStarted(t_ns=t, phase_id=pid, name=name, detail=detail))
        for bi, frac in enumerate((0.7, 0.3)):
            t += int(ms * frac * MS)
            rss += 15 if ci == 2 and bi == 0 else 1
            ev.append(sample(t, rss, cpu=190.0, threads=12, gpu=gpu, server=server))
            ev.append(BatchTimed(t_ns=t, phase_id=pid, call_index=ci, batch_index=bi, items=17,
                                 tokens=None if llama else 400 if bi == 0 else 80,
                                 padded_tokens=None if llama else 560 if bi == 0 else 110, duration_ns=int(ms * frac * MS) - MS,
                                 warmup=warm, group="encode"))
        ev.append(EncodeTimed(t_ns=t, phase_id=pid, call_index=ci, label=label, items=34, tokens=None if llama else 480, words=300,
                              duration_ns=int(ms * MS), warmup=warm, group="encode"))
        ev.append(PhaseEnded(t_ns=t, phase_id=pid, name=name, duration_ns=int(ms * MS)))
        pid += 1
    if sweep:
        ev.append(Result(t_ns=t, result=sweep if isinstance(sweep, SweepResult) else SWEEP))
    if similarity:
        ev.append(Result(t_ns=t, result=SimilarityResult(
            queries=("Which metal is liquid at room temperature?",),
            documents=("Aluminium is light.", "Mercury is liquid at room temperature.", "Offices are warm.", "Gallium is not liquid at room temperature."),
            scores=((0.37, 0.77, 0.27, 0.68),), rankings=((1, 3, 0, 2),), margins=(0.09,), expected=(1,),
            top1_correct=(True,), query_prompt="", document_prompt="", similarity_fn="cosine",
        )))
    ev += [
        Result(t_ns=t + MS, result=KernelCounters(ru_maxrss_mib=rss + 3.0)),
        Result(t_ns=t + MS, result=SamplerFacts(hz=10.0, samples=14, cpu_time_s=0.01, cpu_percent_of_one_core=0.4,
                                                host_only_reason="" if gpu else "NVML unavailable (fake)")),
        RunFinished(t_ns=t + 2 * MS, status="complete", duration_ns=t + 2 * MS),
    ]
    return ev


class FakeRunner:
    """Publishes a scripted run, as the engine's runner does, on the thread that calls ``run``.

    Held (``hold``), it stops before event ``hold_at`` (by default before each timed encode phase: after the
    warm-up) until it is cancelled or released. Cancelled there, it ends as a stopped run does (a cancelled
    error, then incomplete); released (``release``: its own Event, or one the test passes in and sets), it goes on.
    """

    instances: ClassVar[list[FakeRunner]] = []

    def __init__(self, events: list[Event], subscribers: list[Subscriber], hold: bool = False, plan: RunPlan | None = None, *,
                 hold_at: int | None = None, release: threading.Event | None = None) -> None:
        self.plan = plan
        if plan is not None and events and isinstance(events[0], RunStarted):
            # The plan travels in RunStarted, as from the engine: the snapshot stores what ran.
            events = [dataclasses.replace(events[0], plan=plan), *events[1:]]
        self.events = events
        self.subscribers = subscribers
        self.hold = hold
        self.hold_before = {hold_at} if hold_at is not None else {
            i for i, e in enumerate(events) if isinstance(e, PhaseStarted) and e.name == "encode"}
        self.cancelled = threading.Event()
        self.release = release if release is not None else threading.Event()
        self._done = threading.Event()
        FakeRunner.instances.append(self)

    def _emit(self, e: Event) -> None:
        for s in self.subscribers:
            s(e)

    def run(self) -> None:
        try:
            for i, e in enumerate(self.events):
                if self.hold and i in self.hold_before:
                    while not (self.cancelled.is_set() or self.release.is_set()):
                        self.cancelled.wait(0.01)
                    if self.cancelled.is_set():
                        self._emit(ErrorEvent(t_ns=e.t_ns, error_kind="cancelled", message="stopped by the user"))
                        self._emit(RunFinished(t_ns=e.t_ns, status="incomplete", duration_ns=e.t_ns))
                        return
                self._emit(e)
        finally:
            self._done.set()

    def cancel(self, reason: str = "the user") -> None:
        self.cancelled.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    @property
    def finished(self) -> bool:
        return self._done.is_set()


def factory(**kw: Any):  # type: ignore[no-untyped-def]
    """A runner_factory for EmbprofApp that plays ``scripted_run(**kw)``; ``hold=True`` pauses it.
    The plans it was given are in ``FakeRunner.instances[i].plan``."""
    hold = kw.pop("hold", False)

    def make(plan: RunPlan, subscribers: list[Subscriber]) -> FakeRunner:
        return FakeRunner(scripted_run(**kw), subscribers, hold=hold, plan=plan)

    return make
