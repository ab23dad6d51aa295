"""How the dashboard feels, measured in a real terminal (tmux), and what it costs the work.

1. Time to the first frame from process start (target <= 1.5 s): tmux starts `embprof`, the clock
   stops when the first frame's panel title is on the screen.
2. Key press to screen change while the speed protocol keeps every core busy (p95 target
   <= 150 ms): keys 2 and 1 switch between the Memory and Latency panels; the clock runs from
   `tmux send-keys` until `tmux capture-pane` shows the other panel (polled every 5 ms, so the
   figure includes up to one poll and tmux's own round trip).
3. Encode throughput with the dashboard open against headless `embprof run speed`, alternating,
   from their snapshots (target ratio >= 0.99: a profiler's screen should cost under 1 % of the work).
4. The UI thread's own CPU time (time.thread_time) while a scripted event stream at a speed run's
   rate (10 samples/s, 4 batches/s, 1 call/s; no model) plays for 20 s into the dashboard, all
   panels shown (200×50) and one panel (120×36). No target: it says where a change of the UI moved
   its cost, without the noise of a real run.

    .venv/bin/python benchmarks/tui_responsiveness.py --text PATH/the_ugly_duckling.txt [--pairs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXE = str(Path(sys.executable).parent / "embprof")
TARGET_RATIO = 0.99


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=False).stdout


def screen(session: str) -> str:
    return tmux("capture-pane", "-p", "-t", session)


def wait_for(session: str, text: str, timeout: float, poll: float = 0.005) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if text in screen(session):
            return time.perf_counter() - t0
        time.sleep(poll)
    raise SystemExit(f"'{text}' did not appear within {timeout} s:\n{screen(session)}")


def start(session: str, command: str, width: int = 120, height: int = 36) -> float:
    t0 = time.perf_counter()
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", str(width), "-y", str(height), command], check=True)
    return t0


def newest(folder: Path, pattern: str) -> Path:
    return max(folder.glob(pattern), key=lambda p: p.stat().st_mtime)


def words_per_s(path: Path) -> float:
    return float(json.loads(path.read_text())["summary"]["results"]["speed"]["avg_words_per_sec"])


def ui_thread_cost(size: tuple[int, int], seconds: float = 20.0) -> tuple[float, float]:
    """The dashboard's UI-thread CPU seconds while a scripted stream plays in real time (no model)."""
    import asyncio
    import threading

    from embprof.engine.events import (
        BatchTimed,
        EncodeTimed,
        PhaseEnded,
        PhaseStarted,
        ResourceSample,
        Result,
        RunFinished,
        RunStarted,
    )
    from embprof.engine.plan import RunPlan
    from embprof.engine.results import TargetFacts
    from embprof.engine.workload_facts import SpeedFacts
    from embprof.tui.app import EmbprofApp

    class Stream:
        def __init__(self, plan: RunPlan, subscribers: list) -> None:  # type: ignore[type-arg]
            self.subscribers = subscribers
            self.done = threading.Event()

        def emit(self, e: object) -> None:
            for s in self.subscribers:
                s(e)

        def run(self) -> None:
            t0 = time.perf_counter_ns()

            def now() -> int:
                return time.perf_counter_ns() - t0

            self.emit(RunStarted(t_ns=0, run_id="bench", started_utc="", target=TargetFacts(model_name="scripted", backend="sentence-transformers"),
                                 workload=SpeedFacts(), sample_hz=10.0))
            self.emit(Result(t_ns=now(), result=TargetFacts(backend="sentence-transformers", model_name="scripted", device_resolved="cpu")))
            self.emit(PhaseStarted(t_ns=now(), phase_id=1, name="encode", detail="1/1"))
            due = {"sample": 0.0, "batch": 0.0, "call": 0.0}
            rss, call = 300.0, 0
            while (t := now() / 1e9) < seconds:
                if t >= due["sample"]:
                    rss += 0.5
                    self.emit(ResourceSample(t_ns=now(), rss_mib=rss, sys_ram_used_mib=rss + 900, sys_ram_available_mib=9000.0, cpu_percent=190.0,
                                             per_core_percent=(95.0, 95.0), threads=12))
                    due["sample"] += 0.1
                if t >= due["batch"]:
                    self.emit(BatchTimed(t_ns=now(), phase_id=1, call_index=call, batch_index=0, items=32, tokens=900, padded_tokens=1200,
                                         duration_ns=240_000_000, warmup=False, group="speed"))
                    due["batch"] += 0.25
                if t >= due["call"]:
                    self.emit(EncodeTimed(t_ns=now(), phase_id=1, call_index=call, label="loop", items=43, tokens=5000, words=3633,
                                          duration_ns=1_000_000_000, warmup=False, group="speed"))
                    call += 1
                    due["call"] += 1.0
                time.sleep(0.005)
            self.emit(PhaseEnded(t_ns=now(), phase_id=1, name="encode", duration_ns=now()))
            self.emit(RunFinished(t_ns=now(), status="complete", duration_ns=now()))
            self.done.set()

        def cancel(self) -> None:
            pass

        def wait(self, timeout: float | None = None) -> bool:
            return self.done.wait(timeout)

        @property
        def finished(self) -> bool:
            return self.done.is_set()

    async def measure() -> tuple[float, float]:
        app = EmbprofApp(RunPlan(), runner_factory=Stream, save_snapshots=False, profiles_dir=Path(tempfile.mkdtemp()))
        async with app.run_test(size=size):
            while app.current is None:
                await asyncio.sleep(0.01)
            c0, w0 = time.thread_time(), time.perf_counter()
            deadline = time.monotonic() + seconds + 60
            while not app.current.finished:
                if time.monotonic() > deadline:  # the stream stopped or the app failed: say so, never wait forever
                    raise SystemExit("the scripted stream did not finish in the dashboard")
                await asyncio.sleep(0.05)
            return time.thread_time() - c0, time.perf_counter() - w0

    return asyncio.run(measure())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text", required=True)
    ap.add_argument("--pairs", type=int, default=4, help="TUI/headless pairs for the throughput ratio")
    ap.add_argument("--keys", type=int, default=30, help="key presses measured")
    args = ap.parse_args()
    if shutil.which("tmux") is None:
        raise SystemExit("tmux is needed (apt-get install tmux)")
    work = Path(tempfile.mkdtemp(prefix="embprof-bench-"))
    # One session held open for the whole run: the tmux server would otherwise exit with the last
    # session and race the next new-session.
    keeper = f"bench-keeper-{os.getpid()}"
    start(keeper, "sleep 3600")
    env = f"env EMBPROF_PROFILES_DIR={work} HF_HUB_OFFLINE=1 TERM=xterm-256color"

    # 1. first frame
    firsts = []
    for i in range(5):
        s = f"bench-first-{os.getpid()}-{i}"
        t0 = start(s, f"{env} {EXE} --no-autostart")
        wait_for(s, "Latency", 10, poll=0.002)
        firsts.append(time.perf_counter() - t0)
        tmux("kill-session", "-t", s)
    # 2. keys while the cores are busy
    s = f"bench-keys-{os.getpid()}"
    start(s, f"{env} {EXE} --workload speed --loops 60 --text {args.text}")
    wait_for(s, "running", 120, poll=0.05)
    time.sleep(2.0)
    lat = []
    for i in range(args.keys):
        key, title = ("2", "─ Memory") if i % 2 == 0 else ("1", "─ Latency")
        t0 = time.perf_counter()
        tmux("send-keys", "-t", s, key)
        wait_for(s, title, 5)
        lat.append(time.perf_counter() - t0)
        time.sleep(0.2)
    busy = "running" in screen(s)
    tmux("send-keys", "-t", s, "q")
    time.sleep(3)
    tmux("kill-session", "-t", s)
    # 3. throughput with the dashboard open against headless
    def dashboard_run(i: int) -> float:
        tui_s = f"bench-tp-{os.getpid()}-{i}"
        before = set(work.glob("*-speed-*.json"))
        start(tui_s, f"{env} {EXE} --workload speed --text {args.text}; sleep 30")
        # Wait on the snapshot file, not the screen: polling tmux would load only this side.
        deadline = time.monotonic() + 300
        while not set(work.glob("*-speed-*.json")) - before:
            if time.monotonic() > deadline:
                raise SystemExit("the dashboard's speed run did not finish")
            time.sleep(1.0)
        tmux("send-keys", "-t", tui_s, "q")
        time.sleep(1.0)
        tmux("kill-session", "-t", tui_s)
        return words_per_s(newest(work, "*-speed-*.json"))

    def headless_run() -> float:
        subprocess.run(
            [EXE, "run", "speed", "-q", "--text", args.text, "--profiles-dir", str(work)],
            check=True, stdout=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        return words_per_s(newest(work, "*-speed-*.json"))

    ratios = []
    for i in range(args.pairs):
        # ABBA: the order alternates so that drift of the machine cancels.
        if i % 2 == 0:
            tui_wps, head_wps = dashboard_run(i), headless_run()
        else:
            head_wps = headless_run()
            tui_wps = dashboard_run(i)
        ratios.append(tui_wps / head_wps)
        print(f"  pair {i + 1}: dashboard {tui_wps:8.1f} words/s   headless {head_wps:8.1f} words/s   ratio {ratios[-1]:.3f}")

    first = statistics.median(firsts)
    p95 = statistics.quantiles(lat, n=100, method="inclusive")[94]
    ratio = statistics.median(ratios)
    print()
    print(f"first frame from process start (median of 5): {first * 1000:.0f} ms   target <= 1500 ms   {'ok' if first <= 1.5 else 'MISSED'}")
    print(
        f"key press to screen change under load ({len(lat)} presses{'' if busy else ', the run ended during them'}): "
        f"p50 {statistics.median(lat) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, max {max(lat) * 1000:.0f} ms   "
        f"target p95 <= 150 ms   {'ok' if p95 <= 0.15 else 'MISSED'}"
    )
    print(f"throughput dashboard/headless (median of {len(ratios)} pairs): {ratio:.3f}   target >= {TARGET_RATIO}   "
          f"{'ok' if ratio >= TARGET_RATIO else 'MISSED'}")
    for size in ((200, 50), (120, 36)):
        cpu, wall = ui_thread_cost(size)
        print(f"UI thread CPU under a scripted speed-rate stream at {size[0]}x{size[1]}: {cpu:.2f} s in {wall:.1f} s "
              f"= {100 * cpu / wall:.1f} % of one core")
    tmux("kill-session", "-t", keeper)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
