"""A matrix cell's own process: ``python -m embprof.engine.cellproc PLAN.json SNAPSHOT.json``.

It runs one plan exactly as ``embprof run --plan`` does (the same runner, sampler and recorder) and
saves the snapshot atomically at the path the matrix chose. Each phase that starts is one JSON line
on standard output, for the matrix's progress; errors are one sentence on standard error.

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
import sys
from pathlib import Path
from typing import Any

from .errors import UserError


def _export(target_json: str) -> int:
    from .onnx_target import ensure_graph
    from .plan import LocalTarget

    target = LocalTarget.model_validate_json(target_json)
    info = ensure_graph(target)
    sys.stdout.write(json.dumps({"path": str(info.path), "seconds": info.seconds, "cached": info.cached,
                                 "disk_bytes": info.disk_bytes}) + "\n")
    return 0


def _run(plan_file: str, out_file: str) -> int:
    from . import environment, execute
    from . import snapshot as snap_mod
    from .events import Event, PhaseStarted
    from .files import atomic_write_bytes
    from .plan import load_plan

    plan = load_plan(plan_file)
    prepared = execute.prepare(plan)
    recorder = snap_mod.Recorder()

    def progress(e: Event) -> None:
        if isinstance(e, PhaseStarted):
            sys.stdout.write(json.dumps({"phase": f"{e.name} {e.detail}".strip()}) + "\n")
            sys.stdout.flush()

    before = neighbours()
    gpus_before = gpu_neighbours()
    runner = prepared.runner([recorder, progress])
    stop: list[Any] = []

    def on_signal(signum: int, _frame: Any) -> None:
        stop.append(signum)
        runner.cancel()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    runner.start()
    while not runner.finished:
        runner.wait(0.2)
    runner.join()
    error = runner.error
    if error is not None and error.error_kind == "input":
        raise UserError(error.message)
    env = environment.capture()
    # What else ran on the machine: a cell slower than its neighbours may only have shared the CPU.
    env.update(pid=os.getpid(), neighbours_before=before, neighbours_after=neighbours(), load_average=list(os.getloadavg()),
               others_during_run=others_during_run(recorder.events(), gpus_before, gpu_neighbours()))
    snapshot = snap_mod.build(recorder, env)
    atomic_write_bytes(Path(out_file), snap_mod.to_json(snapshot).encode("utf-8"))
    if stop or snapshot.status == "incomplete":
        return 130
    return 0 if snapshot.status == "complete" else 1


def neighbours(window_s: float = 0.3, top: int = 5) -> list[dict[str, Any]]:
    """The other processes using the most CPU over a short window, with their share of one core."""
    import time

    import psutil

    procs = []
    for p in psutil.process_iter(["pid", "name"]):
        if p.pid == os.getpid():
            continue
        try:
            p.cpu_percent(None)
            procs.append(p)
        except (psutil.Error, OSError):
            pass
    time.sleep(window_s)
    seen = []
    for p in procs:
        try:
            seen.append({"pid": p.pid, "name": p.info.get("name") or "", "cpu_percent": p.cpu_percent(None)})
        except (psutil.Error, OSError):
            pass
    seen.sort(key=lambda d: -float(d["cpu_percent"]))
    return [d for d in seen[:top] if d["cpu_percent"] > 0]


def gpu_neighbours() -> list[dict[str, Any]] | None:
    """Other processes holding memory on this machine's NVIDIA GPUs (NVML's compute-process list);
    None where NVML cannot say (no GPU, no driver, the package missing)."""
    from .sampler import load_nvml

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
                      gpus_after: list[dict[str, Any]] | None) -> dict[str, Any]:
    """What the rest of the machine did while the cell ran, from the run's own samples: every core's
    busy share added up, less this process's own (in percent of one core), and the other processes on
    the GPUs when it began and ended. A shared node shows here rather than as an unexplained cost."""
    from .events import ResourceSample

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


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    tie = os.environ.pop("EMBPROF_TIE_TO_PARENT", None)  # a cell on a Ray worker: it dies with the worker
    if tie and tie.isdigit():
        from .ray_cells import tie_to_parent

        tie_to_parent(signal.SIGKILL, int(tie))
    try:
        if len(args) == 2 and args[0] == "--export":
            return _export(args[1])
        if len(args) == 2:
            return _run(args[0], args[1])
        sys.stderr.write("usage: python -m embprof.engine.cellproc PLAN.json SNAPSHOT.json | --export TARGET_JSON\n")
        return 2
    except UserError as exc:
        sys.stderr.write(f"embprof: error: {exc}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
