"""The machine and software a run happened on, for every snapshot."""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

import psutil

from .events import MIB
from .sampler import load_nvml
from .versions import library_version

LIBRARIES = (
    "embprof",
    "torch",
    "sentence-transformers",
    "transformers",
    "tokenizers",
    "mteb",
    "numpy",
    "psutil",
    "nvidia-ml-py",
    "textual",
)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpus() -> list[dict[str, Any]]:
    nvml = load_nvml()
    if nvml is None:
        return []
    try:
        nvml.nvmlInit()
    except Exception:
        return []
    out: list[dict[str, Any]] = []
    try:
        driver = nvml.nvmlSystemGetDriverVersion()
        for i in range(nvml.nvmlDeviceGetCount()):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            name = nvml.nvmlDeviceGetName(h)
            out.append(
                {
                    "index": i,
                    "name": name.decode() if isinstance(name, bytes) else name,
                    "driver": driver.decode() if isinstance(driver, bytes) else driver,
                    "memory_total_mib": nvml.nvmlDeviceGetMemoryInfo(h).total / MIB,
                }
            )
    except Exception:
        pass
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass
    return out


def capture() -> dict[str, Any]:
    env: dict[str, Any] = {
        "hostname": platform.node(),
        "os": f"{platform.system()} {platform.release()}",
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_cores_logical": psutil.cpu_count(logical=True),
        "cpu_cores_physical": psutil.cpu_count(logical=False),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "ram_total_mib": psutil.virtual_memory().total / MIB,
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "libraries": {name: library_version(name) for name in LIBRARIES},
        "gpus": gpus(),
    }
    torch = sys.modules.get("torch")
    if torch is not None:  # only once the run itself imported it
        env["torch_threads"] = torch.get_num_threads()
        env["torch_cuda"] = getattr(torch.version, "cuda", None)
        env["torch_cuda_available"] = bool(torch.cuda.is_available())
    if "numpy" in sys.modules:
        env["blas_threads"] = blas_threads()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "HF_HUB_OFFLINE"):
        if var in os.environ:
            env.setdefault("env_vars", {})[var] = os.environ[var]
    return env


def blas_threads() -> dict[str, int] | None:
    """The threads each loaded BLAS library would use, by library file (threadpoolctl's view): numpy's and
    scipy's OpenBLAS run MTEB's scoring. None where threadpoolctl cannot say."""
    try:
        from threadpoolctl import threadpool_info

        return {os.path.basename(str(lib.get("filepath"))): int(lib["num_threads"]) for lib in threadpool_info()
                if lib.get("user_api") == "blas"}
    except Exception:
        return None
