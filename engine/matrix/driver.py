"""The Ray driver: a process of its own (``python -m embprof.engine.matrix.driver --drive ADDRESS FOLDER
CPUS FD PARENT``), started by ``ray.RayRun`` in embprof and speaking to it in JSON lines on file
descriptor FD.

It joins the cluster, says what the cluster has, reads which cells to run, and launches each with
``ray.RayLauncher`` from a thread of its own, saying each cell's news and, as it ends, its outcome.
Apart from embprof because Ray's core ends its driver's process outright when the node it is
attached to goes away, and writes to the process's file descriptors as it pleases (see ``ray``).
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from ..errors import UserError
from .folder import ClusterLost, read_manifest
from .launch import CellOutcome, Launcher, tie_to_parent
from .paths import crash_path
from .ray import POLL_S, Cluster, RayLauncher, connect, live_nodes, ray_said, submission_order
from .spec import Cell


def _drive(ray: Any, cluster: Cluster, folder: Path, cells: list[Cell], say: Callable[..., None], cpus: int, cold: bool = False) -> None:
    """Launch every cell; say each one's news and, as it ends, its outcome.

    A cell compared with a reference that runs in this matrix is launched once that reference has
    ended, with its vectors (or without, if it failed: the cell then runs without agreement figures,
    as a local one does). Handing Ray the reference's task instead would make a failed reference fail
    every cell that waits for it."""
    launcher = RayLauncher(ray, cluster, folder, cpus, cold=cold)
    launch: Launcher = launcher  # held to the protocol the local launcher keeps (mypy checks it here)
    stopping = threading.Event()
    # A thread per cell that may be in flight: each only waits on Ray, which decides how many run.
    pool = ThreadPoolExecutor(max_workers=max(1, len(cells)), thread_name_prefix="embprof-ray-cell")
    running: dict[Future[CellOutcome], Cell] = {}
    written_here = {c.cell.write_reference for c in cells if c.cell.write_reference}
    held: dict[str, list[Cell]] = {}  # reference path -> the cells waiting for it

    def start(c: Cell) -> None:
        def progress(kind: str, text: str) -> None:
            say(kind, cell=c.cell_id, text=text)

        running[pool.submit(launch.launch, c, progress, stopping.is_set)] = c

    try:  # from the first launch: whatever ends this (Ctrl-C, a fault) cancels what was submitted
        for c in submission_order(cells):
            # A held cell's record goes now too: a run stopped before it starts must leave it to run next time,
            # not marked failed by an earlier run's record.
            crash_path(folder, c.cell_id).unlink(missing_ok=True)
            path = c.cell.reference
            if path and path in written_here:
                held.setdefault(path, []).append(c)
                say("queued", cell=c.cell_id, text="waits for its reference cell")
                continue
            start(c)
        while running:
            done, _ = wait(running, timeout=POLL_S, return_when=FIRST_COMPLETED)
            launcher.pump()  # first: a cell's start and last phases are said before its end
            for f in done:
                c = running.pop(f)
                say("done", cell=c.cell_id, outcome=f.result().to_json())
                for d in held.pop(c.cell.write_reference or "", []):
                    start(d)
    except ray.exceptions.RayError as exc:  # the head, the tracker or the connection went away, not one cell
        raise ClusterLost(f"the Ray cluster stopped answering ({exc.__class__.__name__}: {ray_said(exc, 160)}); the finished "
                          "cells are kept: run the same matrix again to go on") from None
    finally:  # Ctrl-C (KeyboardInterrupt) among them: each launch still waiting cancels its task, its cell's process stopped
        stopping.set()
        pool.shutdown(wait=True, cancel_futures=True)


def main(address: str, folder: str, cpus: str, channel_fd: str, parent_pid: str, start: str = "warm") -> int:
    """Connect, say what the cluster has, read which cells to run, run them; every message a JSON line on
    file descriptor FD. PARENT: embprof's pid (the driver stops, as on Ctrl-C, when embprof is gone)."""
    import signal

    channel = os.fdopen(int(channel_fd), "w", encoding="utf-8", buffering=1)
    saying = threading.Lock()  # the cells' launches speak from threads of their own: one whole line at a time

    def say(kind: str, **fields: Any) -> None:
        line = json.dumps({"kind": kind, **fields}) + "\n"
        with saying:
            channel.write(line)

    def stop(signum: int, frame: Any) -> None:
        # One stop is enough: a second signal must not cut short the cancelling of the cells' tasks.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        tie_to_parent(signal.SIGINT, int(parent_pid))  # embprof gone: stop as on Ctrl-C, cancelling the cells' tasks
        ray = connect(address)
        cluster = Cluster(live_nodes(ray))
        say("cluster", nodes=list(cluster.nodes))
        line = sys.stdin.readline()
        if not line.strip():  # nothing to run after all (or embprof went away)
            return 0
        todo_ids = json.loads(line)["todo"]
        manifest = read_manifest(Path(folder))
        by_id = {c.cell_id: c for c in manifest.cells}
        todo = [by_id[cid] for cid in todo_ids]
        _drive(ray, cluster, Path(folder), todo, say, int(cpus), cold=start == "cold")
        say("finished")
        return 0
    except KeyboardInterrupt:
        return 130
    except ClusterLost as exc:
        say("lost", text=str(exc))
        return 1
    except UserError as exc:
        say("error", text=str(exc))
        return 2
    except Exception as exc:  # Ray refusing a task's options, a full disk …: one sentence, not "the cluster was lost"
        import traceback

        traceback.print_exc()  # to ray-driver.log
        say("error", text=f"the Ray driver failed: {exc.__class__.__name__}: {ray_said(exc)}")
        return 2


if __name__ == "__main__":
    if len(sys.argv) == 8 and sys.argv[1] == "--drive":
        sys.exit(main(*sys.argv[2:]))
    sys.stderr.write("usage: python -m embprof.engine.matrix.driver --drive ADDRESS FOLDER CPUS FD PARENT (started by embprof matrix --ray)\n")
    sys.exit(2)
