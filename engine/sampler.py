"""The resource sampler: its own daemon thread, a drift-free loop, one ResourceSample per tick."""

from __future__ import annotations

import os
import sys
import threading
import time
from types import ModuleType
from typing import Any

import psutil

from .events import MIB, Event, EventBus, Note, PhaseEnded, ResourceSample

MIN_HZ = 1.0
MAX_HZ = 100.0


def load_nvml() -> ModuleType | None:
    """Import nvidia-ml-py's module; None when the package is missing."""
    try:
        import pynvml
    except ImportError:
        return None
    module: ModuleType = pynvml  # the package ships no types: named here as what it is, a module
    return module


class GpuProbe:
    """Reads one NVIDIA device through NVML; every reading can be N/A (None) on its own.

    Per-process memory is N/A on MIG devices, where the driver does not report it, and where this
    process's PID is not among the device's compute processes (a container's PID namespace).
    """

    def __init__(self, nvml: Any, index: int) -> None:
        self._nvml = nvml
        self.handle = nvml.nvmlDeviceGetHandleByIndex(index)
        self.index = index
        self.pid = os.getpid()
        # Both ways out of the try set the flag, so it has no default beforehand.
        try:
            current, _pending = nvml.nvmlDeviceGetMigMode(self.handle)
            self.mig = bool(current)
        except Exception:  # not supported on this device or driver: treat as no MIG
            self.mig = False

    def describe(self) -> dict[str, Any]:
        nvml = self._nvml
        name = nvml.nvmlDeviceGetName(self.handle)
        if isinstance(name, bytes):
            name = name.decode()
        driver = nvml.nvmlSystemGetDriverVersion()
        if isinstance(driver, bytes):
            driver = driver.decode()
        total = nvml.nvmlDeviceGetMemoryInfo(self.handle).total / MIB
        return {"index": self.index, "name": name, "driver": driver, "memory_total_mib": total, "mig": self.mig}

    def process_mib(self, pid: int) -> float | None:
        """Another process's memory on this device (the embedding server's), when NVML lists it."""
        if self.mig:
            return None
        try:
            for proc in self._nvml.nvmlDeviceGetComputeRunningProcesses(self.handle):
                if proc.pid == pid and proc.usedGpuMemory is not None:
                    return float(proc.usedGpuMemory) / MIB
        except Exception:
            pass
        return None

    def read(self) -> dict[str, float | None]:
        nvml = self._nvml
        out: dict[str, float | None] = {
            "gpu_used_mib": None,
            "gpu_total_mib": None,
            "gpu_process_mib": None,
            "gpu_util_percent": None,
        }
        try:
            mem = nvml.nvmlDeviceGetMemoryInfo(self.handle)
            out["gpu_used_mib"] = mem.used / MIB
            out["gpu_total_mib"] = mem.total / MIB
        except Exception:
            pass
        try:
            out["gpu_util_percent"] = float(nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu)
        except Exception:
            pass
        if not self.mig:
            try:
                for proc in nvml.nvmlDeviceGetComputeRunningProcesses(self.handle):
                    if proc.pid == self.pid and proc.usedGpuMemory is not None:
                        out["gpu_process_mib"] = proc.usedGpuMemory / MIB
                        break
            except Exception:
                pass
        return out


def _torch_cuda_reading() -> dict[str, float | None]:
    """torch's caching-allocator counters, only once the workload itself has initialised CUDA.

    The sampler never imports torch: that would put torch's import cost on whoever starts it.
    """
    torch = sys.modules.get("torch")
    none: dict[str, float | None] = {
        "torch_allocated_mib": None,
        "torch_reserved_mib": None,
        "torch_max_allocated_mib": None,
        "torch_max_reserved_mib": None,
    }
    if torch is None:
        return none
    try:
        if not torch.cuda.is_initialized():
            return none
        return {
            "torch_allocated_mib": torch.cuda.memory_allocated() / MIB,
            "torch_reserved_mib": torch.cuda.memory_reserved() / MIB,
            "torch_max_allocated_mib": torch.cuda.max_memory_allocated() / MIB,
            "torch_max_reserved_mib": torch.cuda.max_memory_reserved() / MIB,
        }
    except Exception:
        return none


def next_tick(due: float, now: float, interval_s: float) -> float:
    """When the tick after the one due at ``due`` falls, that tick being taken at ``now`` (perf_counter seconds).

    On the fixed grid (``due + interval_s``) so the schedule does not drift with the time each sample takes; when
    that is already past, the machine was starved for longer than a tick: the missed ticks are skipped, not bunched,
    and the grid restarts one interval from now. A tick that falls due exactly now is taken, not skipped.
    """
    following = due + interval_s
    if following < now:
        return now + interval_s
    return following


def cuda_index_for_nvml(device: str) -> int:
    """Map a torch device string to an NVML index, honouring CUDA_VISIBLE_DEVICES when it lists numbers."""
    ordinal = 0
    if device.startswith("cuda:"):
        try:
            ordinal = int(device.split(":", 1)[1])
        except ValueError:
            ordinal = 0
    # Unset and blank both mean every device in NVML's order: blank entries are dropped below, so neither needs a
    # default or a strip of its own.
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        parts = [p.strip() for p in visible.split(",") if p.strip()]
        if ordinal < len(parts) and parts[ordinal].isdigit():
            return int(parts[ordinal])
    return ordinal


class Sampler:
    """Samples this process and the machine at ``hz`` on a named daemon thread.

    The schedule advances by a fixed interval (``next += interval``) so it does not drift with the
    time each sample takes; ticks missed while the machine was starved are skipped, not bunched.
    ``poke()`` asks for one extra sample now (the runner pokes at phase ends so that a peak at a
    phase boundary is not lost between ticks).
    """

    def __init__(
        self,
        bus: EventBus,
        hz: float = 10.0,
        *,
        gpu_index: int | None = 0,
        nvml: Any = "auto",
        pid: int | None = None,
        server_pid: int | None = None,
    ) -> None:
        if not MIN_HZ <= hz <= MAX_HZ:
            raise ValueError(f"sample rate must be between {MIN_HZ:g} and {MAX_HZ:g} Hz, not {hz:g}")
        self.bus = bus
        self.hz = hz
        self.interval_s = 1.0 / hz
        self._proc = psutil.Process(pid)
        self._server: psutil.Process | None = None
        self.server_gone = False
        if server_pid is not None:
            try:
                self._server = psutil.Process(server_pid)
            except psutil.Error:  # gone since the target checked it: sampled as gone
                self.server_gone = True
        self.server_pid = server_pid
        self._server_cpu = 0.0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._nvml = load_nvml() if nvml == "auto" else nvml
        self._gpu_index = gpu_index
        self.gpu: GpuProbe | None = None
        self.host_only_reason = ""
        self.samples_taken = 0
        self.cpu_time_ns = 0  # the sampler thread's own CPU time, for the overhead figure
        # What a sample taken before the first CPU reading (a poke before the first tick) repeats: nothing measured
        # yet, so 0 %, one figure per core as in every later reading: psutil's per-core figures are one per entry
        # of cpu_times(percpu=True), which has no "unknown" case (cpu_count() may answer None).
        self._last_cpu = 0.0
        self._last_cores: tuple[float, ...] = tuple(0.0 for _ in psutil.cpu_times(percpu=True))

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._open_gpu()
        # psutil's CPU percentages are deltas since the previous call: prime them here so the
        # first real sample measures a real interval instead of reporting 0. A Process keeps its
        # own baseline, whichever thread calls it; the per-core baseline is primed in _loop.
        self._proc.cpu_percent(None)
        if self._server is not None:
            try:
                self._server.cpu_percent(None)
            except psutil.Error:
                self.server_gone = True
        self._thread = threading.Thread(target=self._loop, name="embprof-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        if self._nvml is not None and self.gpu is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass

    def poke(self) -> None:
        self._wake.set()

    def __call__(self, event: Event) -> None:
        """Subscribed to the run's events: a phase's end gets a sample of its own, so a peak at a
        phase boundary is not lost between ticks."""
        if isinstance(event, PhaseEnded):
            self.poke()

    # -- internals ---------------------------------------------------------------------------
    def _open_gpu(self) -> None:
        if self._gpu_index is None:
            self.host_only_reason = "no GPU device in use"
        elif self._nvml is None:
            self.host_only_reason = "nvidia-ml-py is not installed"
        else:
            try:
                self._nvml.nvmlInit()
                count = self._nvml.nvmlDeviceGetCount()
                if count == 0:
                    self.host_only_reason = "NVML sees no GPU"
                elif self._gpu_index >= count:
                    self.host_only_reason = f"NVML sees {count} GPU(s), not index {self._gpu_index}"
                else:
                    self.gpu = GpuProbe(self._nvml, self._gpu_index)
            except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, …
                self.host_only_reason = f"NVML unavailable ({exc.__class__.__name__})"
        if self.gpu is None:
            self.bus.publish(
                Note(t_ns=self.bus.clock.now(), text=f"host-only sampling: {self.host_only_reason}; GPU columns are N/A")
            )
        elif self.gpu.mig:
            self.bus.publish(
                Note(t_ns=self.bus.clock.now(), text="GPU is in MIG mode: per-process GPU memory is N/A")
            )

    def _loop(self) -> None:
        # psutil (since 5.9.6) keeps the system-wide per-core baseline per calling thread: primed in
        # start() it would be the starting thread's, and this thread's first tick would measure the
        # microseconds between two reads of /proc/stat. Primed here, it measures its interval.
        psutil.cpu_percent(percpu=True)
        due = time.perf_counter() + self.interval_s
        while not self._stop.is_set():
            timeout = due - time.perf_counter()
            # A tick already due is taken before a pending poke; the poke gets its sample right after.
            woken = self._wake.wait(timeout) if timeout > 0 else False
            if self._stop.is_set():
                break
            if woken:
                self._wake.clear()
                self.sample_once(repeat_cpu=True)
            else:
                due = next_tick(due, time.perf_counter(), self.interval_s)
                self.sample_once()
        self.sample_once(repeat_cpu=True)  # the closing state, so the timeline ends when the run ends

    def sample_once(self, *, repeat_cpu: bool = False) -> ResourceSample:
        """Take one sample. ``repeat_cpu`` (a poke, the closing sample) repeats the last CPU figures
        instead of reading new ones: psutil's CPU percentages over a few milliseconds are dominated by
        the 10 ms tick of the kernel's CPU-time counters, and reading them would also shorten the next
        interval. (Named for the exception, so that the flag is true where it is passed at all.)"""
        started = time.thread_time_ns()
        proc = self._proc
        with proc.oneshot():
            rss = proc.memory_info().rss
            threads = proc.num_threads()
            if not repeat_cpu:
                self._last_cpu = proc.cpu_percent(None)
        vm = psutil.virtual_memory()
        if not repeat_cpu:
            self._last_cores = tuple(psutil.cpu_percent(percpu=True))
        gpu: dict[str, Any] = self.gpu.read() if self.gpu is not None else {}
        torch_cuda: dict[str, Any] = _torch_cuda_reading()
        server: dict[str, Any] = self._server_reading(repeat_cpu)
        sample = ResourceSample(
            t_ns=self.bus.clock.now(),
            rss_mib=rss / MIB,
            sys_ram_used_mib=(vm.total - vm.available) / MIB,
            sys_ram_available_mib=vm.available / MIB,
            cpu_percent=self._last_cpu,
            per_core_percent=self._last_cores,
            threads=threads,
            **gpu,
            **torch_cuda,
            **server,
        )
        self.bus.publish(sample)
        self.samples_taken += 1
        # Publishing counts too: fanning the sample out to the consumers is part of its cost.
        self.cpu_time_ns += time.thread_time_ns() - started
        return sample

    def _server_reading(self, repeat_cpu: bool) -> dict[str, Any]:
        """The server process's RSS, CPU and threads; once it has exited, nothing (and a note)."""
        server = self._server
        if server is None or self.server_gone:
            return {}
        try:
            with server.oneshot():
                out: dict[str, Any] = {"server_rss_mib": server.memory_info().rss / MIB, "server_threads": server.num_threads()}
                if not repeat_cpu:
                    self._server_cpu = server.cpu_percent(None)
            out["server_cpu_percent"] = self._server_cpu
        except psutil.Error:
            self.server_gone = True
            self.bus.publish(Note(t_ns=self.bus.clock.now(), text=f"the server process {self.server_pid} is gone", level="warning"))
            return {}
        if self.gpu is not None:  # the PID is the Process's own: no second None check on server_pid
            out["server_gpu_mib"] = self.gpu.process_mib(server.pid)
        return out
