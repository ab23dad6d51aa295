"""The recorder's memory on long runs: RSS of this process over a long synthetic event stream.

Two streams, made up of the engine's own event types with realistic values (numpy's RNG):

  (a) an hour of `run load` at 1,000 requests/s: 3.6 M RequestTimed (group "load"), a ResourceSample
      at 10 Hz (36,000), the run's phases and results;
  (b) a 2-hour MTEB run: a ResourceSample at 10 Hz (72,000), ~200,000 BatchTimed in ~240 encode
      calls (an EncodeTimed and a phase each) across 12 tasks, each call its own group.

Each stream is fed, in this one process, to ``snapshot.Recorder()`` (which folds it in ``.state``, a
RunState, and keeps its events thinned) and then to a ``RunState`` alone. The events are made in
slices and dropped once fed, so what stays is what the consumer keeps. RSS and the interpreter's
live allocated blocks are printed at the start, 25 %, 50 %, 75 % and the end of each stream; the
verdict compares the end with the middle. The snapshot of the recorded run is built and its JSON
size printed. For contrast, a naive list that keeps every event object is fed the first 10 % of
each stream and its cost extrapolated to the whole stream (an extrapolation, labelled as one).

RSS is the whole process's, and freed memory returns to Python's allocator rather than to the
system, so a later consumer may reuse what an earlier one freed: the "live blocks" column
(``sys.getallocatedblocks``) is the allocator's own count of live objects and is not fooled by that.

    .venv/bin/python benchmarks/recorder_memory.py [--hours 1] [--rate 1000] [--mteb-hours 2] [--mteb-batches 200000]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import psutil

MIB = 1 << 20
SLICES = 100  # each stream is made and fed in this many slices; checkpoints fall on slice 25, 50, 75, 100


def rss_mib() -> float:
    return psutil.Process().memory_info().rss / MIB


# -- the streams ----------------------------------------------------------------------------------------
class _Samples:
    """ResourceSamples at 10 Hz with a slowly wandering RSS and CPU, as a sampler reports them."""

    def __init__(self, rng: np.random.Generator, cores: int, server: bool) -> None:
        self.rng = rng
        self.cores = cores
        self.server = server
        self.rss = 850.0
        self.server_rss = 420.0

    def make(self, t_ns: list[int]) -> list[Any]:
        from embprof.engine.events import ResourceSample

        n = len(t_ns)
        rng = self.rng
        rss_steps = rng.normal(0.0, 0.4, n).cumsum()
        cpu = np.clip(rng.normal(95.0, 25.0, n), 0, 100.0 * self.cores).tolist()
        per_core = np.clip(rng.normal(60.0, 20.0, (n, self.cores)), 0, 100).round(1).tolist()
        threads = rng.integers(18, 40, n).tolist()
        server_cpu = np.clip(rng.normal(150.0, 30.0, n), 0, 100.0 * self.cores).tolist()
        out = []
        for i in range(n):
            out.append(ResourceSample(
                t_ns=t_ns[i],
                rss_mib=self.rss + float(rss_steps[i]),
                sys_ram_used_mib=6_000.0 + float(rss_steps[i]) * 3,
                sys_ram_available_mib=9_800.0 - float(rss_steps[i]) * 3,
                cpu_percent=cpu[i],
                per_core_percent=tuple(per_core[i]),
                threads=threads[i],
                server_rss_mib=self.server_rss + float(rss_steps[i]) / 2 if self.server else None,
                server_cpu_percent=server_cpu[i] if self.server else None,
                server_threads=6 if self.server else None,
            ))
        self.rss += float(rss_steps[-1]) if n else 0.0
        return out


def load_stream(hours: float, rate: float, seed: int = 1) -> tuple[int, Callable[[], Iterator[list[Any]]]]:
    """An hour (or ``hours``) of `run load` at ``rate`` requests/s: (events in all, a maker of slices)."""
    from embprof.engine.events import PhaseEnded, PhaseStarted, RequestTimed, Result, RunFinished, RunStarted
    from embprof.engine.plan import LoadPlan, RunPlan, ServerTarget
    from embprof.engine.results import ClientCeiling, KernelCounters, LatencyStats, LoadResult, SamplerFacts, TargetFacts
    from embprof.engine.workload_facts import LoadFacts

    seconds = hours * 3600.0
    requests = int(round(seconds * rate))
    samples = int(round(seconds * 10))
    total = requests + samples + 9  # run started, 2 phases each way, 3 results, run finished

    def slices() -> Iterator[list[Any]]:
        rng = np.random.default_rng(seed)
        sampler = _Samples(rng, psutil.cpu_count() or 2, server=True)
        plan = RunPlan(target=ServerTarget(url="http://127.0.0.1:8080"), workload=LoadPlan(duration_s=seconds, rate=rate))
        target = TargetFacts(backend="http", model_name="all-MiniLM-L6-v2 (f16 GGUF)", api="llama", url="http://127.0.0.1:8080",
                             timeout_s=60.0, max_errors=0, embedding_dim=384)
        start_ns = 2_000_000_000
        end_ns = start_ns + int(seconds * 1e9)
        yield [
            RunStarted(t_ns=0, run_id="20250101T000000Z-synthe", started_utc="2025-01-01T00:00:00+00:00",
                       target=target, workload=LoadFacts(arrivals="poisson"),
                       sample_hz=10.0, plan=plan),
            Result(t_ns=1_000_000_000, result=target),
            PhaseStarted(t_ns=1_500_000_000, phase_id=1, name="warm-up", detail="1 request"),
            PhaseEnded(t_ns=1_510_000_000, phase_id=1, name="warm-up", duration_ns=10_000_000),
            PhaseStarted(t_ns=start_ns, phase_id=2, name="load", detail=f"Poisson {rate:g}/s"),
        ]
        done_r = done_s = 0
        durations_seen: list[float] = []
        for k in range(SLICES):
            r_end = requests * (k + 1) // SLICES
            s_end = samples * (k + 1) // SLICES
            n_r, n_s = r_end - done_r, s_end - done_s
            # Poisson arrivals on the run's clock; latency lognormal around 8 ms with a tail.
            t_r = (start_ns + (done_r + np.arange(n_r) + rng.uniform(0, 1, n_r)) * (1e9 / rate)).astype(np.int64).tolist()
            dur = (rng.lognormal(np.log(8e6), 0.35, n_r)).astype(np.int64)
            recv = (dur * rng.uniform(0.85, 0.97, n_r)).astype(np.int64).tolist()
            durations = dur.tolist()
            sent = rng.integers(60, 400, n_r).tolist()
            failed = (rng.random(n_r) < 0.001).tolist()
            events: list[Any] = []
            for i in range(n_r):
                if failed[i]:
                    events.append(RequestTimed(t_ns=t_r[i], phase_id=2, call_index=done_r + i + 1, request_index=done_r + i + 1,
                                               items=1, duration_ns=60_000_000_000, status=None, bytes_sent=sent[i],
                                               bytes_received=0, error_kind="timeout", error="timed out after 60 s", group="load"))
                else:
                    events.append(RequestTimed(t_ns=t_r[i], phase_id=2, call_index=done_r + i + 1, request_index=done_r + i + 1,
                                               items=1, duration_ns=durations[i], status=200, bytes_sent=sent[i],
                                               bytes_received=8_150, received_ns=recv[i], group="load"))
            t_s = (start_ns + (done_s + np.arange(n_s)) * 100_000_000).astype(np.int64).tolist()
            events.extend(sampler.make(t_s))
            events.sort(key=lambda e: e.t_ns)
            if k == SLICES - 1:
                durations_seen = [d / 1e9 for d in durations[:1000]]
            done_r, done_s = r_end, s_end
            yield events
        arr = np.asarray(durations_seen)
        latency = LatencyStats(count=requests, mean_s=float(arr.mean()), min_s=float(arr.min()), max_s=float(arr.max()),
                               p50_s=float(np.percentile(arr, 50)), p99_s=float(np.percentile(arr, 99)), samples_s=None,
                               quantiles="histogram")
        yield [
            PhaseEnded(t_ns=end_ns, phase_id=2, name="load", duration_ns=end_ns - start_ns),
            Result(t_ns=end_ns + 1, result=LoadResult(
                requests_sent=requests, requests_done=requests, ok=requests, errors=0, errors_by_kind={}, wall_s=seconds,
                requests_per_s=rate, items_per_s=rate, tokens_per_s=None, latency=latency, client_ceiling_per_s=9_000.0,
                client_share_percent=100.0 * rate / 9_000.0)),
            Result(t_ns=end_ns + 2, result=ClientCeiling(requests_per_s=9_000.0, workers=16, seconds=2.0, texts_per_request=1)),
            Result(t_ns=end_ns + 3, result=SamplerFacts(hz=10.0, samples=samples, cpu_time_s=seconds * 0.004,
                                                        cpu_percent_of_one_core=0.4)),
            RunFinished(t_ns=end_ns + 4, status="complete", duration_ns=end_ns + 4),
        ]
        _ = KernelCounters  # (the runner also sends kernel counters; one more small result changes nothing here)

    return total, slices


MTEB_TASKS = (
    "STS16", "STSBenchmark", "SICK-R", "JSTS", "Banking77Classification", "EmotionClassification",
    "ArguAna", "SciFact", "NFCorpus", "TwentyNewsgroupsClustering", "SprintDuplicateQuestions", "AskUbuntuDupQuestions",
)


def mteb_stream(hours: float, batches: int, seed: int = 2) -> tuple[int, Callable[[], Iterator[list[Any]]]]:
    """A ``hours``-long MTEB run of ``batches`` forward batches over 12 tasks, 20 encode calls a task."""
    from embprof.engine.events import (
        BatchTimed,
        EncodeTimed,
        Note,
        PhaseEnded,
        PhaseStarted,
        Result,
        RunFinished,
        RunStarted,
    )
    from embprof.engine.plan import LocalTarget, MtebPlan, RunPlan
    from embprof.engine.results import MtebTask, SamplerFacts, TargetFacts
    from embprof.engine.workload_facts import MtebFacts

    seconds = hours * 3600.0
    samples = int(round(seconds * 10))
    calls_per_task = 20
    calls = len(MTEB_TASKS) * calls_per_task
    per_call = max(1, batches // calls)
    batches = per_call * calls
    # events: samples, batches, one EncodeTimed + 2 phase events + 1 note per call, 2 phase events + 1 result per task, 4 more.
    total = samples + batches + calls * 4 + len(MTEB_TASKS) * 3 + 4

    def slices() -> Iterator[list[Any]]:
        rng = np.random.default_rng(seed)
        sampler = _Samples(rng, psutil.cpu_count() or 2, server=False)
        plan = RunPlan(target=LocalTarget(device="cpu"), workload=MtebPlan(tasks=MTEB_TASKS, data_dir="datasets"))
        target = TargetFacts(backend="sentence-transformers", model_name="sentence-transformers/all-MiniLM-L6-v2 (bundled)",
                             device="cpu", device_resolved="cpu", dtype="float32", max_seq_length=256, embedding_dim=384,
                             parameters=22_713_216)
        start_ns, end_ns = 3_000_000_000, 3_000_000_000 + int(seconds * 1e9)
        call_ns = (end_ns - start_ns) / calls
        batch_ns = call_ns / (per_call + 1)
        sample_t = iter((start_ns + np.arange(samples) * 100_000_000).astype(np.int64).tolist())
        pending_sample = next(sample_t, None)
        head: list[Any] = [
            RunStarted(t_ns=0, run_id="20250101T000000Z-synthm", started_utc="2025-01-01T00:00:00+00:00",
                       target=target, workload=MtebFacts(tasks=tuple(MTEB_TASKS)),
                       sample_hz=10.0, plan=plan),
            Result(t_ns=1_000_000_000, result=target),
        ]
        phase_ids = iter(range(1, 10**9))
        call_index = 0
        out = head
        per_slice = max(1, calls // SLICES)
        for ti, task in enumerate(MTEB_TASKS):
            task_phase = next(phase_ids)
            task_t0 = int(start_ns + ti * calls_per_task * call_ns)
            out.append(PhaseStarted(t_ns=task_t0, phase_id=task_phase, name=task, detail="local · datasets"))
            mean_batch = float(rng.uniform(0.08, 0.6))  # each task's texts have their own length
            for c in range(calls_per_task):
                phase = next(phase_ids)
                name = f"Encoding samples {c % 2 + 1}" if c < 2 else f"Encoding experiment {c // 2}"
                group = f"{task} › {name}"
                c0 = int(start_ns + (ti * calls_per_task + c) * call_ns)
                out.append(PhaseStarted(t_ns=c0 + 1, phase_id=phase, name=name, detail=f"test · {per_call * 32} texts · no prompt",
                                        parent_id=task_phase))
                dur = rng.lognormal(np.log(mean_batch), 0.25, per_call)
                tokens = rng.integers(200, 8_000, per_call)
                padded = (tokens * rng.uniform(1.05, 1.6, per_call)).astype(np.int64)
                t_b = (c0 + 2 + (np.arange(per_call) + 1) * batch_ns).astype(np.int64).tolist()
                dl, tl, pl = (dur * 1e9).astype(np.int64).tolist(), tokens.tolist(), padded.tolist()
                for b in range(per_call):
                    while pending_sample is not None and pending_sample <= t_b[b]:
                        out.extend(sampler.make([pending_sample]))
                        pending_sample = next(sample_t, None)
                    out.append(BatchTimed(t_ns=t_b[b], phase_id=phase, call_index=call_index, batch_index=b, items=32,
                                          tokens=tl[b], padded_tokens=pl[b], duration_ns=dl[b], warmup=False, group=group))
                c1 = int(c0 + call_ns) - 2
                out.append(EncodeTimed(t_ns=c1, phase_id=phase, call_index=call_index, label=f"{task} test", items=per_call * 32,
                                       tokens=int(tokens.sum()), words=None, duration_ns=int(dur.sum() * 1e9) + 1_000_000,
                                       warmup=False, group=group))
                out.append(PhaseEnded(t_ns=c1 + 1, phase_id=phase, name=name, duration_ns=c1 - c0))
                out.append(Note(t_ns=c1 + 1, text=f"{task}: Encoding {per_call * 32} texts (synthetic mteb log line)"))
                call_index += 1
                if call_index % per_slice == 0:
                    yield out
                    out = []
            t_end = int(start_ns + (ti + 1) * calls_per_task * call_ns) - 1
            out.append(PhaseEnded(t_ns=t_end, phase_id=task_phase, name=task, duration_ns=t_end - task_t0))
            out.append(Result(t_ns=t_end, result=MtebTask(task=task, status="ok", phase_id=task_phase, type="STS",
                                                           main_score_name="cosine_spearman", main_score=float(rng.uniform(0.4, 0.85)),
                                                           evaluation_time=t_end / 1e9 - task_t0 / 1e9)))
        while pending_sample is not None:
            out.extend(sampler.make([pending_sample]))
            pending_sample = next(sample_t, None)
        out.append(Result(t_ns=end_ns + 1, result=SamplerFacts(hz=10.0, samples=samples, cpu_time_s=seconds * 0.004,
                                                               cpu_percent_of_one_core=0.4)))
        out.append(RunFinished(t_ns=end_ns + 2, status="complete", duration_ns=end_ns + 2))
        yield out

    return total, slices


# -- feeding and measuring --------------------------------------------------------------------------------
def feed(consumer: Callable[[Any], None], slices: Iterator[list[Any]], total: int, limit: float = 1.0,
         label: str = "") -> tuple[list[tuple[int, float, int]], int, float]:
    """Feed up to ``limit`` of the stream; returns checkpoints (events, RSS MiB, live blocks), events fed, feed seconds."""
    marks = [0.25, 0.5, 0.75, 1.0]
    stop_at = int(total * limit)
    gc.collect()
    points = [(0, rss_mib(), sys.getallocatedblocks())]
    fed = 0
    spent = 0.0
    for events in slices:
        if fed >= stop_at:
            break
        take = events[: stop_at - fed]
        t0 = time.perf_counter()
        for e in take:
            consumer(e)
        spent += time.perf_counter() - t0
        fed += len(take)
        del events, take
        while marks and fed >= marks[0] * stop_at:
            gc.collect()
            points.append((fed, rss_mib(), sys.getallocatedblocks()))
            marks.pop(0)
    return points, fed, spent


def show(label: str, points: list[tuple[int, float, int]], fed: int, spent: float) -> None:
    print(f"  {label}")
    base_rss, base_blocks = points[0][1], points[0][2]
    names = ["start", "25 %", "50 %", "75 %", "end"]
    for name, (n, r, b) in zip(names, points):
        print(f"    {name:>5}: {n:>10,} events   RSS {r:8.1f} MiB ({r - base_rss:+7.1f})   live blocks {b:>11,} ({b - base_blocks:+,})")
    print(f"    {fed:,} events in {spent:.1f} s: {1e6 * spent / max(1, fed):.2f} µs per event (feeding only, not making them)")


FLAT_MIB = 10.0


def verdict(points: list[tuple[int, float, int]]) -> str:
    """Flat: the second half of the stream added at most FLAT_MIB of RSS; the live blocks of each half say more."""
    start, mid, end = points[0], points[2], points[-1]
    grow_rss = end[1] - mid[1]
    first, second = mid[2] - start[2], end[2] - mid[2]
    word = "FLAT" if grow_rss <= FLAT_MIB else "GROWING"
    return (f"verdict: {word} (RSS end − middle {grow_rss:+.1f} MiB, threshold {FLAT_MIB:g} MiB); live blocks added: "
            f"first half {first:+,}, second half {second:+,}")


def run_stream(title: str, total: int, slices: Callable[[], Iterator[list[Any]]], naive_share: float) -> None:
    from embprof.engine.fold import RunState
    from embprof.engine.snapshot import Recorder, build, to_json

    print(f"\n{title}: {total:,} events")

    recorder = Recorder()
    points, fed, spent = feed(recorder, slices(), total)
    show("Recorder() (folds into .state and keeps events thinned)", points, fed, spent)
    print(f"    events kept by the recorder: {sum(recorder.events_kept().values()):,}  {recorder.events_kept()}")
    print(f"    {verdict(points)}")
    t0 = time.perf_counter()
    snap = build(recorder, {})
    text = to_json(snap)
    print(f"    snapshot: {len(snap.events):,} events, JSON {len(text.encode()) / MIB:.1f} MiB, built and serialised in "
          f"{time.perf_counter() - t0:.1f} s; RSS after {rss_mib():.1f} MiB")
    del recorder, snap, text
    gc.collect()

    state = RunState()
    points, fed, spent = feed(state.apply, slices(), total)
    show("RunState alone (the fold, no events kept)", points, fed, spent)
    print(f"    {verdict(points)}")
    del state
    gc.collect()

    # The naive list runs last, in memory the consumers above have freed, so its RSS barely moves: its
    # size is measured by tracemalloc instead (the bytes of the objects it holds; slower, hence 10 %).
    kept: list[Any] = []
    tracemalloc.start()
    points, fed, spent = feed(kept.append, slices(), total, limit=naive_share)
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    show(f"naive list keeping every event, first {100 * naive_share:g} % of the stream only", points, fed, spent)
    d_blocks = points[-1][2] - points[0][2]
    scale = total / max(1, fed)
    print(f"    it holds {held / MIB:.1f} MiB (tracemalloc) for {fed:,} events: {held / max(1, fed):.0f} bytes per event")
    print(f"    EXTRAPOLATED to the whole stream (×{scale:.1f}, not measured): ~{held * scale / MIB:,.0f} MiB, "
          f"~{d_blocks * scale:,.0f} live blocks")
    del kept
    gc.collect()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=1.0, help="length of the simulated `run load` (default 1)")
    ap.add_argument("--rate", type=float, default=1000.0, help="its requests per second (default 1000)")
    ap.add_argument("--mteb-hours", type=float, default=2.0, help="length of the simulated MTEB run (default 2)")
    ap.add_argument("--mteb-batches", type=int, default=200_000, help="its forward batches (default 200,000)")
    ap.add_argument("--naive-share", type=float, default=0.1, help="share of each stream fed to the naive list (default 0.1)")
    args = ap.parse_args()
    if not (args.hours > 0 and args.rate > 0 and args.mteb_hours > 0 and args.mteb_batches > 0 and 0 < args.naive_share <= 1):
        ap.error("--hours, --rate, --mteb-hours and --mteb-batches must be positive, --naive-share in (0, 1]")

    import embprof.engine.snapshot  # noqa: F401  (imported before the first reading, so the baseline includes it)

    print(f"recorder memory: synthetic event streams fed in one process; RSS at start {rss_mib():.1f} MiB")
    total, slices = load_stream(args.hours, args.rate)
    run_stream(f"(a) {args.hours:g} h of `run load` at {args.rate:g} requests/s, samples at 10 Hz", total, slices, args.naive_share)
    total, slices = mteb_stream(args.mteb_hours, args.mteb_batches)
    run_stream(f"(b) {args.mteb_hours:g} h MTEB run, {args.mteb_batches:,} batches in 12 tasks, samples at 10 Hz", total, slices,
               args.naive_share)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
