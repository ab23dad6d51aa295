"""What embprof's measuring costs the thing it measures.

Runs the MTEB v1 speed protocol with bare sentence-transformers (A) and through embprof's runner
with the sampler at 10 Hz (B), alternating A B A B … in one process so that machine drift cancels,
and prints the throughput ratio B/A (target >= 0.98). Also prints the sampler thread's own CPU time
as a share of one core (target <= 1 %) and the wall time of `embprof --help` (target <= 0.5 s).

    .venv/bin/python benchmarks/overhead.py --text PATH/the_ugly_duckling.txt [--rounds 4] [--loops 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path


def bare_speed(model, paragraphs: list[str], loops: int) -> list[float]:  # type: ignore[no-untyped-def]
    """The protocol as mteb 1.x ran it, without embprof: the timed loops' seconds."""
    model.encode(["encode this"])
    timings = []
    for _ in range(loops):
        t0 = time.perf_counter()
        model.encode(paragraphs)
        timings.append(time.perf_counter() - t0)
    return timings


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text", required=True, help="the_ugly_duckling.txt")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--loops", type=int, default=7)
    args = ap.parse_args()

    from sentence_transformers import SentenceTransformer

    from embprof.engine.events import Result
    from embprof.engine.execute import prepare
    from embprof.engine.plan import LocalTarget, Recording, RunPlan, SpeedPlan
    from embprof.engine.results import SamplerFacts, SpeedResult
    from embprof.engine.speedtext import resolve_speed_text
    from embprof.engine.targets import bundled_model_dir

    text = resolve_speed_text(args.text)
    bare_model = SentenceTransformer(bundled_model_dir(), device="cpu")

    a_all: list[float] = []
    b_all: list[float] = []
    sampler_pct: list[float] = []
    print(
        f"speed protocol, bundled all-MiniLM-L6-v2 on cpu, {args.loops} loops per side, {args.rounds} rounds "
        "(A=bare sentence-transformers, B=embprof runner + sampler at 10 Hz; order ABBA so drift cancels)"
    )

    def run_b() -> list[float]:
        results: dict[str, object] = {}

        def keep(e: object) -> None:
            if isinstance(e, Result):
                results[e.name] = e.result

        plan = RunPlan(
            target=LocalTarget(device="cpu"),
            workload=SpeedPlan(text=args.text, loops=args.loops),
            recording=Recording(sample_hz=10.0),
        )
        runner = prepare(plan).runner([keep])
        if runner.run_sync() != "complete":
            raise SystemExit("embprof run failed")
        sampler, speed = results["sampler"], results["speed"]
        assert isinstance(sampler, SamplerFacts) and isinstance(speed, SpeedResult)
        sampler_pct.append(sampler.cpu_percent_of_one_core)
        return list(speed.timings)

    for r in range(args.rounds):
        if r % 2 == 0:
            a = bare_speed(bare_model, text.paragraphs, args.loops)
            b = run_b()
        else:
            b = run_b()
            a = bare_speed(bare_model, text.paragraphs, args.loops)
        a_all += a
        b_all += b
        wa, wb = text.words / statistics.median(a), text.words / statistics.median(b)
        print(f"  round {r + 1}: A {wa:8.1f} words/s   B {wb:8.1f} words/s   B/A {wb / wa:.3f}   sampler {sampler_pct[-1]:.3f} % of a core")

    exe = Path(sys.executable).parent / "embprof"
    help_times = []
    for _ in range(7):
        t0 = time.perf_counter()
        subprocess.run([str(exe), "--help"], stdout=subprocess.DEVNULL, check=True)
        help_times.append(time.perf_counter() - t0)

    # Medians of all timed loops of each side: one slow loop on a shared machine moves a mean, not these.
    ratio = statistics.median(a_all) / statistics.median(b_all)
    mean_ratio = statistics.fmean(a_all) / statistics.fmean(b_all)
    cost = statistics.median(sampler_pct)
    help_s = statistics.median(help_times)
    print()
    print(
        f"throughput ratio embprof/bare (medians of {len(a_all)} loops each): {ratio:.3f}   target >= 0.98   "
        f"{'ok' if ratio >= 0.98 else 'MISSED'}   (ratio of means {mean_ratio:.3f})"
    )
    print(f"sampler CPU at 10 Hz (median): {cost:.3f} % of one core   target <= 1 %   {'ok' if cost <= 1 else 'MISSED'}")
    print(f"`embprof --help` wall time (median of 7): {help_s * 1000:.0f} ms   target <= 500 ms   {'ok' if help_s <= 0.5 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
