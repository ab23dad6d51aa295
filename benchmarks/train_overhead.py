"""What watching a fine-tune costs it: `embprof train` headless against the same plan in the dashboard.

Both run the same plan (the bundled model on the first rows of an STS Benchmark train file) in
their own process, alternating (headless, dashboard, headless, …) so that drift of the machine falls
on both; the dashboard runs in a real terminal (tmux, 200×50: every panel on screen, the Training
panel drawing its loss, step-time and memory charts). Throughput is read from each run's snapshot
(samples/s over the steps, and the median step). The ratio dashboard / headless is the cost of the
screen; the target is >= 0.97 (the UI redraws its charts every two seconds while a step takes a
few hundred milliseconds on two cores).

    .venv/bin/python benchmarks/train_overhead.py --train-file PATH/stsbenchmark/train.jsonl [--pairs 3] [--examples 960]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXE = str(Path(sys.executable).parent / "embprof")
TARGET_RATIO = 0.97


def figures(snapshot: Path) -> tuple[float, float]:
    from embprof.engine.snapshot import load

    training = load(snapshot).summary.training
    if training is None or training.samples_per_s is None or training.step.p50_s is None:
        sys.exit(f"train_overhead: {snapshot} holds no training steps")
    return training.samples_per_s, training.step.p50_s


def one_snapshot(folder: Path) -> Path:
    found = sorted(folder.glob("*.json"))
    if len(found) != 1:
        sys.exit(f"train_overhead: expected one snapshot in {folder}, found {len(found)}")
    return found[0]


def headless(plan: Path, work: Path) -> tuple[float, float]:
    profiles = work / "profiles"
    subprocess.run([EXE, "run", "--plan", str(plan), "--profiles-dir", str(profiles), "-q"], check=True, cwd=work,
                   stdout=subprocess.DEVNULL)
    return figures(one_snapshot(profiles))


def dashboard(plan: Path, work: Path, timeout_s: float = 900.0) -> tuple[float, float]:
    profiles = work / "profiles"
    session = f"embprof-train-{work.name}"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "200", "-y", "50",
                    f"cd {work} && {EXE} --plan {plan} --profiles-dir {profiles}"], check=True)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if profiles.is_dir() and any(profiles.glob("*.json")):
                time.sleep(0.5)  # the atomic write is done once the name is there; let the app settle
                return figures(one_snapshot(profiles))
            time.sleep(0.5)
        sys.exit("train_overhead: the dashboard's run did not finish in time")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False, capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-file", required=True, help="a JSON Lines training file (e.g. STS Benchmark's train split)")
    ap.add_argument("--pairs", type=int, default=3, help="headless/dashboard pairs (default 3)")
    ap.add_argument("--examples", type=int, default=960, help="rows trained on per run (default 960: 60 steps of 16)")
    args = ap.parse_args()
    if shutil.which("tmux") is None:
        sys.exit("train_overhead: needs tmux (the dashboard runs in a real terminal)")
    root = Path(tempfile.mkdtemp(prefix="embprof-train-overhead-"))
    plan = root / "plan.json"
    with plan.open("w") as fh:
        subprocess.run([EXE, "train", "--device", "cpu", "--train-file", str(Path(args.train_file).resolve()), "--max-examples",
                        str(args.examples), "--batch-size", "16", "--print-plan"], check=True, stdout=fh)
    rows: list[tuple[str, float, float]] = []
    for i in range(args.pairs):
        for kind, run in (("headless", headless), ("dashboard", dashboard)):
            work = root / f"{kind}-{i}"
            work.mkdir()
            rate, p50 = run(plan, work)
            rows.append((kind, rate, p50))
            print(f"  {kind:<9} pair {i + 1}: {rate:7.2f} samples/s, median step {p50 * 1e3:7.1f} ms", flush=True)
    head = [r for k, r, _ in rows if k == "headless"]
    dash = [r for k, r, _ in rows if k == "dashboard"]
    ratios = [d / h for d, h in zip(dash, head)]
    print(f"headless  samples/s: median {statistics.median(head):.2f} (runs: {', '.join(f'{v:.2f}' for v in head)})")
    print(f"dashboard samples/s: median {statistics.median(dash):.2f} (runs: {', '.join(f'{v:.2f}' for v in dash)})")
    ratio = statistics.median(ratios)
    print(f"dashboard / headless, pair by pair: {', '.join(f'{r:.3f}' for r in ratios)}; median {ratio:.3f} "
          f"(target >= {TARGET_RATIO}): {'ok' if ratio >= TARGET_RATIO else 'BELOW TARGET'}")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
