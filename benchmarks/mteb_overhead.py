"""What embprof costs an MTEB task: STS16 through embprof against mteb.evaluate directly.

A: mteb.evaluate on a plain sentence-transformers model, the task's data loaded from the local
   JSON Lines files. B: the same task through embprof's MTEB workload on an already-loaded target,
   with the sampler at 10 Hz, every event recorded, the live phase taps, the batch hooks and the
   results file written. Both sides are timed from outside with perf_counter; order A B B A … so
   that machine drift cancels. Prints the wall-time ratio B/A per pair and overall (target <= 1.03)
   and checks that both sides give the same main score.

    .venv/bin/python benchmarks/mteb_overhead.py --data-dir PATH/datasets [--rounds 3] [--task STS16]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import warnings
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True, help="folder with <task folder>/<split>.jsonl (e.g. sts16/test.jsonl)")
    ap.add_argument("--task", default="STS16")
    ap.add_argument("--rounds", type=int, default=3, help="ABBA rounds (each is four task runs)")
    args = ap.parse_args()
    # Other libraries' deprecation notices about each other, printed on every evaluate call.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    import transformers

    transformers.utils.logging.disable_progress_bar()

    from sentence_transformers import SentenceTransformer

    from embprof.engine import mteb_data
    from embprof.engine.context import RunContext
    from embprof.engine.events import Clock, EventBus
    from embprof.engine.sampler import Sampler
    from embprof.engine.plan import LocalTarget, MtebPlan
    from embprof.engine.results import MtebTask
    from embprof.engine.snapshot import Recorder
    from embprof.engine.targets import SentenceTransformerTarget, bundled_model_dir
    from embprof.engine.workloads.mteb_tasks import MtebWorkload

    mteb = mteb_data.import_mteb()
    data_dir = Path(args.data_dir)
    plain = SentenceTransformer(bundled_model_dir(), device="cpu")
    target = SentenceTransformerTarget(LocalTarget(device="cpu"))
    target.load(RunContext(EventBus()))

    def run_a() -> tuple[float, float]:
        task = mteb_data.get_task(args.task)
        t0 = time.perf_counter()
        local, _ = mteb_data.find_local(task, data_dir)
        assert local is not None, f"no local data for {args.task} under {data_dir}"
        mteb_data.load_local(task, local)
        result = mteb.evaluate(plain, task, cache=None, show_progress_bar=False, co2_tracker=False, overwrite_strategy="always")
        return time.perf_counter() - t0, float(result.task_results[0].get_score())

    def run_b() -> tuple[float, float, float]:
        with tempfile.TemporaryDirectory() as results:
            workload = MtebWorkload(MtebPlan(tasks=(args.task,), data_dir=str(data_dir), results_dir=results))
            workload.prepare()
            bus = EventBus(Clock())
            recorder = Recorder()
            bus.subscribe(recorder)
            sampler = Sampler(bus, 10.0, gpu_index=None, nvml=None)
            bus.subscribe(sampler)  # as the runner does: the sampler takes an extra sample at each phase end
            ctx = RunContext(bus)
            t0 = time.perf_counter()
            sampler.start()
            try:
                workload.run(ctx, target)
            finally:
                sampler.stop()
            wall = time.perf_counter() - t0
            task_result = recorder.state.results.get(f"mteb:{args.task}")
            assert isinstance(task_result, MtebTask) and task_result.main_score is not None, f"no score for {args.task}"
            score = task_result.main_score
            return wall, float(score), 100.0 * sampler.cpu_time_ns / 1e9 / wall

    print(
        f"{args.task} on the bundled all-MiniLM-L6-v2, cpu, {args.rounds} rounds ABBA "
        "(A = mteb.evaluate directly, B = embprof's MTEB workload with the sampler at 10 Hz)"
    )
    a_all: list[float] = []
    b_all: list[float] = []
    scores: set[tuple[str, float]] = set()
    for r in range(args.rounds):
        a1, sa = run_a()
        b1, sb, p1 = run_b()
        b2, sb2, p2 = run_b()
        a2, sa2 = run_a()
        a_all += [a1, a2]
        b_all += [b1, b2]
        scores |= {("A", round(sa, 9)), ("A", round(sa2, 9)), ("B", round(sb, 9)), ("B", round(sb2, 9))}
        print(
            f"  round {r + 1}: A {a1:6.2f} s {a2:6.2f} s   B {b1:6.2f} s {b2:6.2f} s   "
            f"B/A {(b1 + b2) / (a1 + a2):.3f}   sampler {max(p1, p2):.2f} % of a core"
        )
    ratio = statistics.median(b_all) / statistics.median(a_all)
    print(f"median wall time: A {statistics.median(a_all):.3f} s, B {statistics.median(b_all):.3f} s")
    print(f"ratio B/A (medians): {ratio:.3f}   target <= 1.03: {'met' if ratio <= 1.03 else 'NOT met'}")
    same = len({s for _, s in scores}) == 1
    print(f"main score: {sorted(scores)[0][1]:.6f} on both sides: {'yes' if same else 'NO: ' + str(sorted(scores))}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
