"""What the matrix's isolation costs: per cell, its own process start, imports and model load, against
the work it measures; and the wall time of the README's 7-cell example. Cold cells (each a fresh
interpreter, ``--cold``) and warm ones (forked from the warm parent that imported once), side by side.

Runs the 7-cell example on the bundled MiniLM (torch float32 and bfloat16, ONNX Runtime float32 and
int8, OpenVINO, 128 dimensions, binary vectors; STS16 and JSTS from --data-dir) in a fresh folder,
timing each cell from outside (the parent's perf_counter around the cell's process) and reading the
cell's own phases from its snapshot. For each cell:

    process start = outside wall time − the run's own duration (cold: the interpreter and embprof's imports;
                    warm: the fork from the warm parent; both: the snapshot written)
    to load       = from the process's start (/proc's start time: the fork, warm or cold) to its model's load
                    starting, read by the cell itself: the fixed cost of a cell, less its model's own load
    import, load  = the run's import and load phases (torch or the runtime; the model)
    work          = cost encodes + agreement + MTEB tasks (what the cell is for)
    overhead      = (to load + load) / work

    .venv/bin/python benchmarks/matrix_overhead.py --data-dir PATH/datasets --text PATH/the_ugly_duckling.txt
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CELLS = ({}, {"dtype": "bfloat16"}, {"backend": "onnx"}, {"backend": "onnx", "quantize": "int8"}, {"backend": "openvino"},
         {"truncate_dim": 128}, {"precision": "binary"})
WORK_PHASES = ("warm-up", "cost", "agreement", "energy")


def _outside_clock() -> tuple[dict[str, float], Callable[[Any], None]]:
    """Each cell's wall time from outside: from its launch to its row."""
    starts: dict[str, float] = {}
    walls: dict[str, float] = {}

    def listener(e: Any) -> None:
        if e.kind == "start":
            starts[e.cell_id] = time.perf_counter()
        elif e.kind == "end":
            walls[e.cell_id] = time.perf_counter() - starts[e.cell_id]

    return walls, listener


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--text", required=True, help="the_ugly_duckling.txt")
    ap.add_argument("--loops", type=int, default=10)
    args = ap.parse_args()

    from embprof.engine.matrix import rows, run_matrix, validate_spec
    from embprof.engine.snapshot import load

    spec = validate_spec({"cells": list(CELLS), "tasks": ["STS16", "JSTS"], "data_dir": args.data_dir, "text": args.text,
                          "loops": args.loops})
    summary = []
    for mode in ("cold", "warm"):
        walls, listener = _outside_clock()

        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "m"
            began = time.perf_counter()
            run_matrix(spec, folder, listener, cold=mode == "cold")
            total = time.perf_counter() - began
            _manifest, table_rows = rows(folder)
            print(f"\n{mode} cells")
            print(f"{'cell':<52} {'start':>5} {'wall s':>7} {'start s':>7} {'import s':>8} {'to load s':>9} {'load s':>7} {'work s':>7} "
                  f"{'overhead':>8}")
            sums = [0.0, 0.0, 0.0]
            for r in table_rows:
                assert r.snapshot is not None, r
                snap = load(folder / r.snapshot)
                top = [p for p in snap.summary.phases if p.parent_id == 0]
                named = {p.name: sum(q.duration_s or 0 for q in top if q.name == p.name) for p in top}
                work = sum(v for k, v in named.items() if k in WORK_PHASES or k in spec.base.workload.tasks)
                start = walls[r.cell_id] - snap.summary.duration_s
                # From the process's start (the fork, warm or cold) to its model's load, as the cell read it from /proc.
                fixed = float(snap.environment["cell_start"]["to_load_s"])
                sums[0] += fixed
                sums[1] += named.get("load", 0.0)
                sums[2] += work
                print(f"{r.label[:52]:<52} {r.start or 'n/a':>5} {walls[r.cell_id]:7.1f} {start:7.2f} {named.get('import', 0.0):8.2f} "
                      f"{fixed:9.2f} {named.get('load', 0.0):7.2f} {work:7.1f} {(fixed + named.get('load', 0.0)) / work:8.1%}")
            n = len(table_rows)
            print(f"{mode}: from the process's start to the model's load = {sums[0]:.1f} s ({sums[0] / n:.2f} s a cell), load {sums[1]:.1f} s, "
                  f"against {sums[2]:.1f} s of measured work ({(sums[0] + sums[1]) / sums[2]:.1%})")
            print(f"{mode}: the 7-cell example (exports, reference and all cells): {total:.1f} s wall")
            summary.append((mode, sums[0] / n, total))
    (_, cold_fixed, cold_wall), (_, warm_fixed, warm_wall) = summary
    print(f"\nper-cell fixed cost (from the process's start to the model's load): cold {cold_fixed:.2f} s, warm {warm_fixed:.2f} s; "
          f"wall: cold {cold_wall:.1f} s, warm {warm_wall:.1f} s (warm/cold {warm_wall / cold_wall:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
