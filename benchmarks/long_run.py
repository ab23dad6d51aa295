"""Memory over a long session: does embprof's RSS stay flat while it runs for half an hour?

Two processes run side by side for ``--minutes`` (default 30) and their RSS is sampled from outside
(psutil, each process with its children) every ``--interval`` seconds:

  load  the headless CLI, ``embprof run load --server URL --duration S --rate R`` (5 requests/s by
        default, Poisson arrivals) against a real llama.cpp server serving all-MiniLM-L6-v2 as an f16
        GGUF (built and cached by tests/llama_server.py). One long run: its recorder, fold and
        sampler see every request and every resource sample.
  tui   the Textual dashboard (``EmbprofApp``) in one long-lived process, headless under
        ``App.run_test`` at a size that shows every panel at once, running the MTEB task STS16 on
        the bundled model with the local data (``--data-dir``: $EMBPROF_DATASETS, else
        ../shared/datasets beside the repository), waiting for the run to be saved, then pressing
        ``r`` (run again), over and over until the time is up. Many runs in one process: whatever
        the app keeps per run, or a panel keeps per redraw, adds up here.

For each process the table gives the RSS at the start (once the first run is under way: the load
phase has begun / the first MTEB run is encoding), the middle and the end (before the load phase
ended / the last MTEB run was saved), the maximum, the growth end minus start in MiB and per hour,
the growth end minus middle, and what was completed (requests answered / MTEB runs). For the load
run these are single samples; for the dashboard they are the peaks of the first run, the run at
mid-time and the last run, since within each run its RSS swings by about the model's size. The verdict is "flat" when the growth over the second half (end − middle) is
below the larger of ``--flat-mib`` (20 MiB) and ``--flat-percent`` (5 %) of the start, else
"GROWS": the dashboard's first runs pay one-off costs (code imported on first use, the allocator's
pools grown to what a run needs) and its RSS levels off a few runs in, so end − start counts that
cost as growth; what still grows after the middle does not stop. For the
dashboard the per-run figures say more than three samples can: each run's peak RSS, and the
interpreter's live allocated blocks (``sys.getallocatedblocks`` after a full collection, reported by
the process itself at the end of every run), which memory kept by the allocator cannot hide.

The load run's recorder keeps every resource sample (up to an hour at 10 Hz) and every request (up
to 25,000) before it thins them, by design: its RSS rises during the first hour and levels off
after. A 30-minute run at 5 requests/s stays under both bounds; a line under the table says how
many MiB of the growth those kept events account for.

    .venv/bin/python benchmarks/long_run.py --minutes 30 [--rate 5] [--interval 3] [--out samples.json]
    .venv/bin/python benchmarks/long_run.py --minutes 2            a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

MIB = 1 << 20
TASK = "STS16"
RUN_TIMEOUT_S = 600.0  # an STS16 run takes seconds, a minute or two on a busy machine; ten means the dashboard is stuck
SIZE = (160, 50)  # at least WIDE_MIN in tui/app.py: every panel is visible, so every panel redraws


def default_data_dir() -> Path:
    # As the tests find it: the evaluation data lives beside the project, never inside it.
    return Path(os.environ.get("EMBPROF_DATASETS", REPO.parent / "shared" / "datasets"))


# -- sampling from outside ---------------------------------------------------------------------------
@dataclass
class Watched:
    """One process under watch: its RSS samples (wall time, MiB) and what it reported."""

    name: str
    proc: subprocess.Popen[bytes]
    launched: float
    samples: list[tuple[float, float]] = field(default_factory=list)


def tree_rss_mib(pid: int) -> float | None:
    """RSS of the process and all its descendants, or None once it is gone."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return None
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue  # a child that ended between the listing and the reading
    return total / MIB


def sample_loop(watched: list[Watched], interval: float, stop: threading.Event) -> None:
    while not stop.is_set():
        now = time.time()
        for w in watched:
            if w.proc.poll() is None:
                rss = tree_rss_mib(w.proc.pid)
                if rss is not None and rss > 0:
                    w.samples.append((now, rss))
        stop.wait(interval)


# -- the dashboard, in its own process ---------------------------------------------------------------
def emit(progress: Path, record: dict[str, Any]) -> None:
    """One JSON line to the parent; appended and flushed at once, so a crash loses nothing before it."""
    with progress.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


async def drive_dashboard(deadline: float, data_dir: Path, results_dir: Path, profiles_dir: Path, progress: Path) -> int:
    """Run STS16 in the dashboard, then "run again" (r), until the wall clock passes ``deadline``."""
    import gc

    from embprof.engine.plan import plan_from_options
    from embprof.tui.app import EmbprofApp

    plan = plan_from_options({"workload": "mteb", "tasks": [TASK], "data_dir": str(data_dir), "results_dir": str(results_dir)})
    app = EmbprofApp(plan, profiles_dir=profiles_dir)
    async with app.run_test(size=SIZE) as pilot:

        async def until(cond: Any, what: str, timeout: float = RUN_TIMEOUT_S) -> None:
            t_end = time.monotonic() + timeout
            while not cond():
                if time.monotonic() > t_end:
                    raise TimeoutError(f"{what}: not reached in {timeout:.0f} s")
                await pilot.pause(0.1)

        k = 0
        while True:
            k += 1
            key = f"run-{k}"  # the app names its runs run-1, run-2, … (no snapshot is opened here)
            if k > 1:
                await pilot.press("r")  # the dashboard's own "Run again": the plan of the run on display
            t0 = time.time()
            await until(lambda key=key: key in app.views, f"{key} to start")
            view = app.views[key]
            # Under way: mteb's first encode call has begun (the model is loaded, the data read).
            await until(lambda v=view: v.finished or any(p.name.startswith("Encoding") for p in v.run.phases),
                        f"{key} to encode")
            emit(progress, {"event": "under_way", "run": k, "t": time.time()})
            # Saved: the snapshot is on disk and the worker is done, so "run again" is not refused.
            await until(lambda v=view: v.finished, f"{key} to finish")
            await until(lambda v=view: v.snapshot_path is not None, f"{key} to be saved", timeout=60.0)
            t_done = time.time()
            gc.collect()
            emit(progress, {"event": "done", "run": k, "t": t_done, "state": view.state, "seconds": t_done - t0,
                            "live_blocks": sys.getallocatedblocks(), "views_held": len(app.views)})
            if view.state != "done":
                emit(progress, {"event": "error", "t": time.time(), "message": f"{key} ended {view.state}: {view.run.errors}"})
                return 1
            if time.time() >= deadline:
                return 0


def child_main(args: argparse.Namespace) -> int:
    progress = Path(args.progress)
    try:
        return asyncio.run(drive_dashboard(args.deadline, Path(args.data_dir), Path(args.results_dir), Path(args.profiles_dir), progress))
    except Exception as exc:  # noqa: BLE001 - told to the parent, which prints it beside the figures
        emit(progress, {"event": "error", "t": time.time(), "message": f"{type(exc).__name__}: {exc}"})
        return 1


# -- the figures -------------------------------------------------------------------------------------
@dataclass
class Figures:
    name: str
    start: tuple[float, float] | None
    middle: tuple[float, float] | None
    end: tuple[float, float] | None
    max_mib: float | None
    completed: str
    extra: list[str] = field(default_factory=list)

    @property
    def growth_mib(self) -> float | None:
        return self.end[1] - self.start[1] if self.start and self.end else None

    @property
    def per_hour_mib(self) -> float | None:
        if not (self.start and self.end) or self.end[0] <= self.start[0]:
            return None
        return (self.end[1] - self.start[1]) / ((self.end[0] - self.start[0]) / 3600.0)

    @property
    def second_half_mib(self) -> float | None:
        return self.end[1] - self.middle[1] if self.middle and self.end else None

    def verdict(self, flat_mib: float, flat_percent: float) -> str:
        """On the second half: the first runs pay one-off costs (code imported on first use, the
        allocator's pools grown to what a run needs) and RSS levels off a few runs in; what keeps
        growing after the middle is what does not stop."""
        half, whole = self.second_half_mib, self.growth_mib
        if half is None or whole is None or self.start is None:
            return "n/a (too few samples)"
        limit = max(flat_mib, self.start[1] * flat_percent / 100.0)
        word = "flat" if half < limit else "GROWS"
        return (f"{word} (end − middle {half:+.1f} MiB, flat below {limit:.1f} MiB = max({flat_mib:g} MiB, "
                f"{flat_percent:g} % of start); end − start {whole:+.1f} MiB)")


def window(samples: list[tuple[float, float]], t_from: float, t_to: float) -> Figures:
    """Start, middle and end of the samples in [t_from, t_to]; the max over the same span."""
    inside = [s for s in samples if t_from <= s[0] <= t_to]
    if len(inside) < 2:
        return Figures("", None, None, None, max((s[1] for s in samples), default=None), "")
    mid_t = (inside[0][0] + inside[-1][0]) / 2
    middle = min(inside, key=lambda s: abs(s[0] - mid_t))
    return Figures("", inside[0], middle, inside[-1], max(s[1] for s in inside), "")


def load_figures(w: Watched, profiles: Path, interval: float) -> Figures:
    """The load phase's span from the run's snapshot: its offsets are on the run's clock, which starts
    a moment after launch, so a sample interval of margin keeps the start inside the phase."""
    from embprof.engine.results import LoadResult
    from embprof.engine.snapshot import DEFAULT_MAX_SAMPLES, DEFAULT_MAX_TIMED, load

    saved = sorted(profiles.glob("*.json"))
    if not saved:
        fig = window(w.samples, w.launched + interval, float("inf"))
        fig.name, fig.completed = "load", "no snapshot"
        fig.extra.append("the load run saved no snapshot: the span is guessed from its launch")
        return fig
    snap = load(saved[-1])
    phase = next((p for p in snap.summary.phases if p.name == "load"), None)
    t_from = w.launched + (phase.start_s if phase else 0.0) + max(interval, 5.0)
    t_to = w.launched + (phase.end_s if phase and phase.end_s is not None else float("inf"))
    fig = window(w.samples, t_from, t_to)
    fig.name = "load (embprof run load)"
    result = snap.summary.results.get("load")
    if isinstance(result, LoadResult):
        fig.completed = f"{result.ok:,} requests ({result.errors} failed)"
    else:
        fig.completed = f"no load result (status {snap.status})"
    # What the recorder holds by design over the measured span: the snapshot's events are the ones it
    # kept (in full below its bounds), so their size says how much of the growth is the recording.
    if fig.start and fig.end:
        lo, hi = fig.start[0] - w.launched, fig.end[0] - w.launched
        span = [e for e in snap.events if e.kind in ("resource_sample", "request_timed") and lo <= e.t_ns / 1e9 <= hi]
        by_kind = {k: sum(1 for e in span if e.kind == k) for k in ("resource_sample", "request_timed")}
        held = sum(held_bytes(e) for e in span) / MIB
        fig.extra.append(f"load: of its growth, the recorder's kept events account for ~{held:.1f} MiB by design "
                         f"({by_kind['resource_sample']:,} resource samples and {by_kind['request_timed']:,} requests over "
                         f"the measured span, each kept until {DEFAULT_MAX_SAMPLES:,} / {DEFAULT_MAX_TIMED:,} and then thinned)")
    return fig


def held_bytes(event: Any) -> int:
    """An event's own memory: the slotted object, the list slot that holds it, and the number and
    tuple objects it points to (strings here are shared constants; small ints are cached)."""
    size = sys.getsizeof(event) + 8
    for name in type(event).__slots__:
        v = getattr(event, name)
        if isinstance(v, tuple):
            size += sys.getsizeof(v) + sum(sys.getsizeof(x) for x in v)
        elif isinstance(v, float) or (isinstance(v, int) and not isinstance(v, bool) and not -5 <= v <= 256):
            size += sys.getsizeof(v)
    return size


def run_peaks(samples: list[tuple[float, float]], records: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """Each completed run's highest sample (time, MiB): the first from when it was under way, each
    later one from the previous run's save to its own."""
    under_way = [r["t"] for r in records if r["event"] == "under_way"]
    out: list[tuple[float, float]] = []
    t_prev = under_way[0] if under_way else 0.0
    for r in (r for r in records if r["event"] == "done"):
        span = [s for s in samples if t_prev <= s[0] <= r["t"]]
        if span:
            out.append(max(span, key=lambda s: s[1]))
        t_prev = r["t"]
    return out


def tui_figures(w: Watched, records: list[dict[str, Any]]) -> Figures:
    """Start, middle and end are the peaks of the first run, the run in progress at mid-time and the
    last run. Within a run RSS swings by about the model's size (loaded, used, freed), so one sample
    would say more about where in its run it fell than about growth; the same point of every run,
    its peak, compares like with like."""
    done = [r for r in records if r["event"] == "done"]
    peaks = run_peaks(w.samples, records)
    fig = Figures("tui (dashboard, MTEB loop)", None, None, None, max((s[1] for s in w.samples), default=None),
                  f"{len(done)} {TASK} runs")
    if len(peaks) >= 2:
        mid_t = (peaks[0][0] + peaks[-1][0]) / 2
        fig.start, fig.end = peaks[0], peaks[-1]
        fig.middle = min(peaks, key=lambda p: abs(p[0] - mid_t))
        fig.max_mib = max(p[1] for p in peaks)
        shown = [f"{p[1]:.0f}" for p in peaks]
        listed = ", ".join(shown) if len(shown) <= 9 else f"{', '.join(shown[:6])} … {', '.join(shown[-3:])}"
        fig.extra.append(f"tui: peak RSS per run (MiB): {listed}")
        second = peaks[len(peaks) // 2:]
        if len(second) >= 3:
            import statistics

            slope = statistics.linear_regression(range(len(second)), [p[1] for p in second]).slope
            fig.extra.append(f"tui: trend of the per-run peaks over the second half ({len(second)} runs): {slope:+.2f} MiB a run")
    if len(done) > 1:
        first, last = done[0], done[-1]
        per_run = (last["live_blocks"] - first["live_blocks"]) / (len(done) - 1)
        fig.extra.append(f"tui: live Python blocks at the end of run 1: {first['live_blocks']:,}; of run {len(done)}: "
                         f"{last['live_blocks']:,} ({per_run:+,.0f} a run); runs held by the app: {last['views_held']}")
    elif done:
        fig.extra.append(f"tui: live Python blocks at the end of run 1: {done[0]['live_blocks']:,} (one run: no trend)")
    return fig


def fmt_point(p: tuple[float, float] | None) -> str:
    return f"{p[1]:.1f}" if p else "n/a"


def print_table(figs: list[Figures], args: argparse.Namespace) -> None:
    head = ("process", "start", "middle", "end", "max", "end−start", "per hour", "end−middle", "completed")
    rows = [head, ("", "MiB", "MiB", "MiB", "MiB", "MiB", "MiB/h", "MiB", "")]
    for f in figs:
        g, h, half = f.growth_mib, f.per_hour_mib, f.second_half_mib
        rows.append((f.name, fmt_point(f.start), fmt_point(f.middle), fmt_point(f.end),
                     f"{f.max_mib:.1f}" if f.max_mib is not None else "n/a",
                     f"{g:+.1f}" if g is not None else "n/a", f"{h:+.1f}" if h is not None else "n/a",
                     f"{half:+.1f}" if half is not None else "n/a", f.completed))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    text_cols = (0, len(head) - 1)
    for i, r in enumerate(rows):
        print("  ".join(c.ljust(widths[j]) if j in text_cols else c.rjust(widths[j]) for j, c in enumerate(r)).rstrip())
        if i == 1:
            print("  ".join("-" * wd for wd in widths))
    print()
    for f in figs:
        span = f"{(f.end[0] - f.start[0]) / 60:.1f} min measured" if f.start and f.end else "no span"
        print(f"verdict {f.name}: {f.verdict(args.flat_mib, args.flat_percent)}; {span}")
    for f in figs:
        for line in f.extra:
            print(f"  {line}")


# -- the parent --------------------------------------------------------------------------------------
def tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def read_records(progress: Path) -> list[dict[str, Any]]:
    if not progress.is_file():
        return []
    return [json.loads(line) for line in progress.read_text(encoding="utf-8").splitlines() if line.strip()]


def stop(proc: subprocess.Popen[bytes], grace: float = 20.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def watch(load: Watched, tui: Watched, progress: Path, deadline: float) -> None:
    """Wait for both processes, stopping one that overruns; a line a minute, so a long run shows it is alive."""
    t_end_load = deadline + 180.0  # the load phase ends at the deadline; its start-up and the summary take seconds
    t_end_tui = deadline + RUN_TIMEOUT_S  # the dashboard finishes the run it is in
    next_line = time.time() + 60.0
    while load.proc.poll() is None or tui.proc.poll() is None:
        now = time.time()
        for w, t_end in ((load, t_end_load), (tui, t_end_tui)):
            if w.proc.poll() is None and now > t_end:
                print(f"{w.name} is overdue: stopped", flush=True)
                stop(w.proc)
        if now >= next_line:
            next_line += 60.0
            runs = sum(1 for r in read_records(progress) if r["event"] == "done")
            last = {w.name: (f"{w.samples[-1][1]:.0f} MiB" if w.samples else "n/a") for w in (load, tui)}
            print(f"  {(now - tui.launched) / 60:5.1f} min: load RSS {last['load']}, dashboard RSS {last['tui']}, "
                  f"{runs} {TASK} runs done", flush=True)
        time.sleep(0.5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0, help="how long both processes run (default 30; fractions for a smoke run)")
    ap.add_argument("--rate", type=float, default=5.0, help="requests per second of `run load` (default 5)")
    ap.add_argument("--interval", type=float, default=3.0, help="seconds between RSS samples (default 3)")
    ap.add_argument("--data-dir", type=Path, default=default_data_dir(), help="the datasets folder (default: $EMBPROF_DATASETS or ../shared/datasets)")
    ap.add_argument("--flat-mib", type=float, default=20.0, help="growth below this is flat (default 20 MiB) …")
    ap.add_argument("--flat-percent", type=float, default=5.0, help="… or below this share of the start (default 5 %%)")
    ap.add_argument("--out", type=Path, help="write the samples and figures here as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, snapshots) and print where it is")
    # The dashboard's own process is this script again, in child mode.
    ap.add_argument("--tui-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--progress", help=argparse.SUPPRESS)
    ap.add_argument("--results-dir", help=argparse.SUPPRESS)
    ap.add_argument("--profiles-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.tui_child:
        return child_main(args)
    if not (args.minutes > 0 and args.rate > 0 and args.interval > 0):
        ap.error("--minutes, --rate and --interval must be positive")
    if not (args.data_dir / "sts16" / "test.jsonl").is_file():
        ap.error(f"no STS16 data in {args.data_dir} (give --data-dir or set EMBPROF_DATASETS to the datasets folder)")
    exe = Path(sys.executable).parent / "embprof"
    if not exe.exists():
        ap.error("the embprof console script is not installed in this environment (pip install -e .)")

    from llama_server import LlamaServer, minilm_gguf

    seconds = args.minutes * 60.0
    tmp = Path(tempfile.mkdtemp(prefix="embprof-long-run-"))
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    code = 0
    print(f"long run: {args.minutes:g} min; `run load` at {args.rate:g}/s and the dashboard looping {TASK}; "
          f"RSS sampled every {args.interval:g} s", flush=True)
    try:
        with LlamaServer(minilm_gguf("f16")) as server:
            load_profiles = tmp / "load-profiles"
            load_log = (tmp / "load.log").open("wb")
            launched = time.time()
            load_proc = subprocess.Popen(
                [str(exe), "run", "load", "--server", server.url, "--duration", f"{seconds:g}", "--rate", f"{args.rate:g}",
                 # A memory benchmark should not end at the first transient error of a busy 2-core machine.
                 "--max-errors", "1000", "-q"],
                env=dict(env, EMBPROF_PROFILES_DIR=str(load_profiles)), stdout=load_log, stderr=subprocess.STDOUT)
            load = Watched("load", load_proc, launched)

            progress = tmp / "tui-progress.jsonl"
            tui_log = (tmp / "tui.log").open("wb")
            tui_profiles = tmp / "tui-profiles"
            launched = time.time()
            tui_proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--tui-child", "--deadline", repr(launched + seconds),
                 "--progress", str(progress), "--data-dir", str(args.data_dir.resolve()), "--results-dir", str(tmp / "results"),
                 "--profiles-dir", str(tui_profiles)],
                env=dict(env, EMBPROF_PROFILES_DIR=str(tui_profiles)), stdout=tui_log, stderr=subprocess.STDOUT)
            tui = Watched("tui", tui_proc, launched)

            halt = threading.Event()
            sampler = threading.Thread(target=sample_loop, args=([load, tui], args.interval, halt), daemon=True)
            sampler.start()
            try:
                watch(load, tui, progress, launched + seconds)
            finally:
                # Interrupted (Ctrl-C) or not: neither process outlives the benchmark.
                halt.set()
                sampler.join()
                stop(load.proc)
                stop(tui.proc)
                load_log.close()
                tui_log.close()

        records = read_records(progress)
        figs = [load_figures(load, load_profiles, args.interval), tui_figures(tui, records)]
        print()
        print_table(figs, args)
        for w, log in ((load, tmp / "load.log"), (tui, tmp / "tui.log")):
            if w.proc.returncode != 0:
                code = 1
                print(f"\n{w.name} exited with {w.proc.returncode}; the end of its log:\n{tail(log)}")
        for r in records:
            if r["event"] == "error":
                code = 1
                print(f"\ndashboard: {r['message']}")
        if args.out:
            out = {
                "minutes": args.minutes, "rate": args.rate, "interval_s": args.interval, "task": TASK,
                "flat_mib": args.flat_mib, "flat_percent": args.flat_percent,
                "processes": {
                    w.name: {
                        "launched": w.launched, "exit_code": w.proc.returncode,
                        "samples": [{"t": t, "rss_mib": rss} for t, rss in w.samples],
                        "start": f.start, "middle": f.middle, "end": f.end, "max_mib": f.max_mib,
                        "growth_mib": f.growth_mib, "growth_mib_per_hour": f.per_hour_mib,
                        "second_half_growth_mib": f.second_half_mib, "completed": f.completed,
                        "verdict": f.verdict(args.flat_mib, args.flat_percent), "notes": f.extra,
                    }
                    for w, f in zip((load, tui), figs)
                },
                "tui_runs": [r for r in records if r["event"] in ("done", "under_way")],
            }
            args.out.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
            print(f"\nsamples: {args.out}")
    finally:
        if args.keep:
            print(f"kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
