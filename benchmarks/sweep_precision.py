"""Adaptive repetition against a fixed number of repetitions, for the same precision.

For each point of a lines sweep on the bundled model (cpu), in one process:
  adaptive: repeat until the 95 % CI of the median is within ±2 % (embprof's StopRule);
  fixed:    7 repetitions, as many benchmark tables use; then, for the fixed protocol to promise
            ±2 % at every point, the smallest fixed N (7, 10, 15, 20, 30, 45, 60) that gets there
            everywhere, measured afresh.
Prints the total runs of each and which points reached ±2 %.

    .venv/bin/python benchmarks/sweep_precision.py [--lines 16,32,64] [--target 2]
"""

from __future__ import annotations

import argparse
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", default="16,32,64")
    ap.add_argument("--target", type=float, default=2.0, help="percent")
    args = ap.parse_args()
    import transformers

    transformers.utils.logging.disable_progress_bar()

    from embprof.engine.context import RunContext
    from embprof.engine.events import EventBus
    from embprof.engine.sweepstats import StopRule, relative_half_width
    from embprof.engine.plan import LocalTarget
    from embprof.engine.targets import SentenceTransformerTarget
    from embprof.engine.workloads.encode import sample_corpus

    target = SentenceTransformerTarget(LocalTarget(device="cpu"))
    ctx = RunContext(EventBus())
    target.load(ctx)
    corpus = sample_corpus()
    goal = args.target / 100
    points = [int(x) for x in args.lines.split(",")]

    def texts(n: int) -> list[str]:
        return [corpus[i % len(corpus)] for i in range(n)]

    def once(n: int) -> float:
        return target.encode(ctx, texts(n)).duration_ns / 1e9

    def rel(times: list[float]) -> str:
        r = relative_half_width(times)
        return "no CI" if r is None else f"±{100 * r:.2f} %"

    for n in points:  # warm-up, once per point, for both protocols
        once(n)

    print(f"bundled all-MiniLM-L6-v2 on cpu; points: lines {points}; target: 95 % CI of the median within ±{args.target:g} %")
    rule = StopRule(target=goal, budget_s=120.0, max_repeats=200)
    adaptive_total = 0
    adaptive_ok = 0
    for n in points:
        times: list[float] = []
        started = time.perf_counter()
        while (stop := rule.verdict(times, time.perf_counter() - started)) is None:
            times.append(once(n))
        adaptive_total += len(times)
        adaptive_ok += stop == "precision"
        print(f"  adaptive  lines {n:>4}: {len(times):>3} runs, {rel(times)}, ended by {stop}")

    fixed7_ok = 0
    for n in points:
        times = [once(n) for _ in range(7)]
        r = relative_half_width(times)
        fixed7_ok += r is not None and r <= goal
        print(f"  fixed 7   lines {n:>4}:   7 runs, {rel(times)}")

    needed = None
    for fixed_n in (7, 10, 15, 20, 30, 45, 60):
        results = [[once(n) for _ in range(fixed_n)] for n in points]
        widths = [relative_half_width(t) for t in results]
        if all(w is not None and w <= goal for w in widths):
            needed = fixed_n
            break
    print(f"adaptive: {adaptive_total} runs in total; {adaptive_ok} of {len(points)} points within ±{args.target:g} %")
    print(f"fixed 7:  {7 * len(points)} runs in total; {fixed7_ok} of {len(points)} points within ±{args.target:g} %")
    if needed is None:
        print(f"fixed N:  no N up to 60 brought every point within ±{args.target:g} % (more than {60 * len(points)} runs)")
    else:
        print(f"fixed N:  N = {needed} brought every point within ±{args.target:g} %: {needed * len(points)} runs in total")
    fixed_cost = (needed or 61) * len(points)
    verdict = "fewer" if adaptive_total < fixed_cost and adaptive_ok == len(points) else "NOT fewer"
    print(f"adaptive reached the same precision in {verdict} runs ({adaptive_total} against {fixed_cost if needed else '> ' + str(60 * len(points))})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
