"""A matrix cell's own process: ``python -m embprof.engine.matrix.cellproc PLAN.json SNAPSHOT.json``.

It runs one plan exactly as ``embprof run --plan`` does (the same runner, sampler and recorder) and
saves the snapshot atomically at the path the matrix chose. Each phase that starts is one JSON line
on standard output, for the matrix's progress; errors are one sentence on standard error.

Where it ran is its own to say: its host, its pid, the load the rest of the machine put on it and,
on a Ray cluster, the worker and attempt its launcher handed it (``launch.Place``) go into the
snapshot's environment, and, once the snapshot is saved, out as one JSON line of ``Provenance``.

``--export TARGET_JSON`` builds (or finds cached) the exported graph of a local target, alone in
this process, and prints its facts as one JSON line: the export's time is reported apart from the
cells' load times.

Exit status: 0 complete, 1 failed, 2 bad input, 130 interrupted (a SIGINT or SIGTERM stops the run
at the next batch boundary and the snapshot keeps what was measured).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import UserError
from .launch import PLACE_ENV, TIE_ENV, OthersLoad, Place, Provenance, tie_to_parent
from .warm import START_ENV


def _export(target_json: str) -> int:
    from ..plan import LocalTarget
    from ..targets.onnx_graph import ensure_graph

    target = LocalTarget.model_validate_json(target_json)
    info = ensure_graph(target)
    sys.stdout.write(json.dumps({"path": str(info.path), "seconds": info.seconds, "cached": info.cached,
                                 "disk_bytes": info.disk_bytes}) + "\n")
    return 0


def _run(plan_file: str, out_file: str, place: Place, start: dict[str, Any]) -> int:
    from .. import environment
    from .. import snapshot as snap_mod
    from ..events import Event, PhaseStarted
    from ..files import atomic_write_bytes
    from ..plan import load_plan
    from ..session import Session

    plan = load_plan(plan_file)

    # Other processes' CPU: "before" over the cell's own start (up to its run), "after" over its run. Read
    # outside the run's phases, and with no pause of their own: a warm cell starts in a fraction of a second.
    window = Neighbours()
    window.prime()

    def progress(e: Event) -> None:
        if isinstance(e, PhaseStarted) and e.name == "load" and e.parent_id == 0:
            # The cell's fixed cost: from its process's start (the fork, warm or cold) to its model's load.
            start["to_load_s"] = seconds_since_process_start()
        if isinstance(e, PhaseStarted):
            sys.stdout.write(json.dumps({"phase": f"{e.name} {e.detail}".strip()}) + "\n")
            sys.stdout.flush()

    provenance: list[Provenance] = []

    def cell_environment(events: list[Event]) -> dict[str, Any]:
        env = environment.capture()
        # What else ran on the machine: a cell slower than its neighbours may only have shared the CPU.
        env.update(pid=os.getpid(), cell_start=start, neighbours_before=before, neighbours_after=window.read(), load_average=list(os.getloadavg()),
                   others_during_run=others_during_run(events, gpus_before, gpu_neighbours()))
        provenance.append(_provenance(env, place))
        return env

    def save(snapshot: snap_mod.Snapshot) -> tuple[Path, str | None]:
        path = Path(out_file)
        atomic_write_bytes(path, snap_mod.to_json(snapshot).encode("utf-8"))
        return path, None

    session = Session(plan, [progress], environment=cell_environment)  # bad input: UserError, exit 2
    gpus_before = gpu_neighbours()

    def on_signal(_signum: int, _frame: Any) -> None:
        # Any stop is 130 to the launcher, which reads the snapshot for the rest.
        session.cancel()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    before = window.read()
    window.prime()
    session.start()
    while not session.finished:
        session.wait(0.2)
    outcome = session.finish(save)
    if outcome.save_error is not None:
        raise outcome.save_error
    _announce(provenance[-1])
    return outcome.exit_status


class Neighbours:
    """The other processes using the most CPU over a window, with their share of one core: ``prime`` opens
    the window, ``read`` closes it."""

    def __init__(self, top: int = 5) -> None:
        self.top = top
        self.procs: list[Any] = []

    def prime(self) -> None:
        import psutil

        self.procs = []
        for p in psutil.process_iter(["pid", "name"]):
            if p.pid == os.getpid():
                continue
            try:
                p.cpu_percent(None)
                self.procs.append(p)
            except (psutil.Error, OSError):
                pass

    def read(self) -> list[dict[str, Any]]:
        import psutil

        seen = []
        for p in self.procs:
            try:
                seen.append({"pid": p.pid, "name": p.info.get("name") or "", "cpu_percent": p.cpu_percent(None)})
            except (psutil.Error, OSError):
                pass
        seen.sort(key=lambda d: -float(d["cpu_percent"]))
        return [d for d in seen[: self.top] if d["cpu_percent"] > 0]


def gpu_neighbours() -> list[dict[str, Any]] | None:
    """Other processes holding memory on this machine's NVIDIA GPUs (NVML's compute-process list);
    None where NVML cannot say (no GPU, no driver, the package missing)."""
    from ..sampler import load_nvml

    nvml = load_nvml()
    if nvml is None:
        return None
    try:
        nvml.nvmlInit()
    except Exception:
        return None
    try:
        out = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            for proc in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid != os.getpid() and proc.usedGpuMemory is not None:
                    out.append({"gpu": index, "pid": proc.pid, "mib": proc.usedGpuMemory / 2**20})
        return out
    except Exception:
        return None
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass


def others_during_run(events: list[Any], gpus_before: list[dict[str, Any]] | None,
                      gpus_after: list[dict[str, Any]] | None) -> OthersLoad:
    """What the rest of the machine did while the cell ran, from the run's own samples: every core's
    busy share added up, less this process's own (in percent of one core), and the other processes on
    the GPUs when it began and ended. A shared node shows here rather than as an unexplained cost."""
    from ..events import ResourceSample

    others = [max(0.0, sum(e.per_core_percent) - e.cpu_percent) for e in events if isinstance(e, ResourceSample)]
    gpu = None
    if gpus_before is not None or gpus_after is not None:
        gpu = max(sum(p["mib"] for p in found) for found in (gpus_before or [], gpus_after or []))
    return {
        "samples": len(others),
        "cpu_percent_mean": sum(others) / len(others) if others else None,
        "cpu_percent_max": max(others) if others else None,
        "gpu_processes": (gpus_before or []) + [p for p in gpus_after or [] if p not in (gpus_before or [])],
        "gpu_mib": gpu,  # None: NVML could not say
    }


def seconds_since_process_start() -> float | None:
    """Seconds since the kernel started this process (its fork): /proc's start time, in clock ticks since boot,
    against the boot-time clock. None where /proc cannot say."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            fields = f.read().rpartition(")")[2].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of the whole line: starttime
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - started)
    except (OSError, ValueError, IndexError):
        return None


def cell_start(text: str | None) -> dict[str, Any]:
    """How this cell's process started, as its launcher (and, warm, its parent) said: ``warm`` True for a
    child forked by the warm parent (with the parent's pid and the seconds its imports took), False for a
    process started cold (``why``: the reason it was not forked)."""
    try:
        data = json.loads(text) if text else None
    except ValueError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("warm"), bool):
        return {"warm": False, "why": "started by hand"}
    return data


def _provenance(env: dict[str, Any], place: Place) -> Provenance:
    """Where this cell ran, written into its snapshot's environment by the cell itself: on a cluster the
    ``ray`` entry ``compare`` and the matrix's rows read (the rest, host, pid and others' load, is there already)."""
    provenance = Provenance(socket.gethostname(), os.getpid(), place.attempt, place.worker, env.get("others_during_run"))
    ray = provenance.ray_json()
    if ray is not None:
        env["ray"] = ray
    return provenance


def _announce(provenance: Provenance) -> None:
    """The provenance as one JSON line, for the launcher, once the snapshot that holds it is saved."""
    sys.stdout.write(json.dumps({"provenance": provenance.to_json()}) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    tie = os.environ.pop(TIE_ENV, None)  # a cell on a Ray worker: it dies with the worker
    if tie and tie.isdigit():
        tie_to_parent(signal.SIGKILL, int(tie))
    # Popped, as the tie is: whatever the cell starts in turn is no cell of a matrix.
    place = Place.from_env(os.environ.pop(PLACE_ENV, None))
    start = cell_start(os.environ.pop(START_ENV, None))
    try:
        if len(args) == 2 and args[0] == "--export":
            return _export(args[1])
        if len(args) == 2:
            return _run(args[0], args[1], place, start)
        sys.stderr.write("usage: python -m embprof.engine.matrix.cellproc PLAN.json SNAPSHOT.json | --export TARGET_JSON\n")
        return 2
    except UserError as exc:
        sys.stderr.write(f"embprof: error: {exc}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
