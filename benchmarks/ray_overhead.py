"""What Ray adds to a matrix cell, measured on this machine: the figures docs/scale-out.md scales up.

Run it as root inside a network namespace with only loopback, so that nothing Ray starts can use the
machine's own address:

    unshare -n -p -f --mount-proc .venv/bin/python benchmarks/ray_overhead.py [--round-trips 50]

(the PID namespace keeps its `ray stop` from stopping any other Ray on the machine)

It brings `lo` up, starts a Ray head node on 127.0.0.1 (two CPUs) and measures:
1. the head's start (`ray start --head`, wall clock) and the resident memory of the processes it
   started (psutil, summed over the head's process tree);
2. the driver's connection (`ray.init`) and the first task's round trip (a new worker process);
3. a warm task's round trip, over many calls (median and p95);
4. four warm matrix cells (the bundled model at four widths, the encode cost on 24 lines, no task)
   run locally and on Ray, one at a time: each cell's fixed cost from its process's start (the fork
   from the warm parent) to its model's load, as the cell read it from /proc, and the command's wall.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
PORT = 6398


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--round-trips", type=int, default=50)
    args = ap.parse_args()
    if subprocess.run(["ip", "link", "set", "lo", "up"], capture_output=True).returncode != 0:
        sys.exit("ray_overhead: run it as root inside `unshare -n` (it brings lo up there)")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    os.environ.update({k: env[k] for k in ("RAY_USAGE_STATS_ENABLED", "RAY_AUTH_MODE", "HF_HUB_OFFLINE")})
    work = Path(tempfile.mkdtemp(prefix="er", dir="/tmp"))
    try:
        t0 = time.perf_counter()
        subprocess.run([str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={PORT}", "--num-cpus=2",
                        "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={work / 'ray'}"], env=env, check=True,
                       capture_output=True)
        start_s = time.perf_counter() - t0
        import psutil

        head = [p for p in psutil.process_iter(["cmdline", "memory_info"])
                if any(str(work) in part or "raylet" in part or "gcs_server" in part for part in (p.info["cmdline"] or []))]
        head_mib = sum(p.info["memory_info"].rss for p in head if p.info["memory_info"]) / 2**20
        print(f"head node start: {start_s:.2f} s; its {len(head)} processes hold {head_mib:.0f} MiB resident")

        import ray

        t0 = time.perf_counter()
        ray.init(address=f"127.0.0.1:{PORT}", log_to_driver=False, logging_level="ERROR", configure_logging=False)
        print(f"driver connects: {time.perf_counter() - t0:.3f} s")

        @ray.remote
        def nothing(x: int) -> int:
            return x

        t0 = time.perf_counter()
        ray.get(nothing.remote(0))
        print(f"first task round trip (a worker process starts): {time.perf_counter() - t0:.3f} s")
        trips = []
        for i in range(args.round_trips):
            t0 = time.perf_counter()
            ray.get(nothing.remote(i))
            trips.append(time.perf_counter() - t0)
        trips.sort()
        print(f"warm task round trip over {len(trips)}: median {statistics.median(trips) * 1e3:.2f} ms, "
              f"p95 {trips[int(0.95 * (len(trips) - 1))] * 1e3:.2f} ms")
        ray.shutdown()

        lines = work / "lines.txt"
        lines.write_text("\n".join(f"a short line to encode, number {i}" for i in range(24)) + "\n", encoding="utf-8")
        spec = work / "spec.toml"
        spec.write_text(f'tasks = []\nloops = 2\ncost = "encode"\ncost_input = "{lines}"\n'
                        'cells = [{}, {truncate_dim = 256}, {truncate_dim = 128}, {truncate_dim = 64}]\n', encoding="utf-8")
        from embprof.engine.matrix import rows
        from embprof.engine.snapshot import load

        fixed: dict[str, list[float]] = {}
        # --ray-cpus 2: one cell at a time on the two CPUs, as the local matrix runs them.
        for name, extra in (("local", []), ("ray", ["--ray", f"127.0.0.1:{PORT}", "--ray-cpus", "2"])):
            t0 = time.perf_counter()
            done = subprocess.run([str(BIN / "embprof"), "matrix", "--spec", str(spec), "-o", str(work / f"m-{name}"), "-q", *extra], env=env,
                                  capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"ray_overhead: the {name} matrix failed: {done.stderr.strip()[-600:]}")
            wall = time.perf_counter() - t0
            table = rows(work / f"m-{name}")[1]
            starts = [load(work / f"m-{name}" / r.snapshot).environment["cell_start"] for r in table if r.snapshot]
            fixed[name] = [float(st["to_load_s"]) for st in starts]
            print(f"{len(table)} cells, {name:<5}: the command {wall:.2f} s; started {sorted({r.start or 'n/a' for r in table})}; "
                  f"from each cell's fork to its model's load: {', '.join(f'{x:.3f}' for x in fixed[name])} s; "
                  f"loads {', '.join(f'{r.load_s:.2f}' for r in table if r.load_s is not None)} s")
        local, on_ray = statistics.median(fixed["local"]), statistics.median(fixed["ray"])
        print(f"a warm cell's fixed cost (fork to load, median): local {local:.3f} s, on a Ray worker {on_ray:.3f} s "
              f"(difference {on_ray - local:+.3f} s)")
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
