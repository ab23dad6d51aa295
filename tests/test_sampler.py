"""The sampler against the kernel's own accounting, and against a fake NVML where there is no GPU."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
from fake_nvml import GIB, FakeNvml, FakeProc, NVMLError, NVMLError_NotSupported

from embprof.engine.events import MIB, Clock, EventBus, Note, ResourceSample
from embprof.engine import sampler as sampler_module
from embprof.engine.sampler import GpuProbe, Sampler, cuda_index_for_nvml, load_nvml, next_tick
from embprof.engine.snapshot import Recorder


def _collect(hz: float = 10, **kw: object) -> tuple[Sampler, list[object]]:
    bus = EventBus(Clock())
    seen: list[object] = []
    bus.subscribe(seen.append)
    return Sampler(bus, hz, **kw), seen  # type: ignore[arg-type]


def test_fake_nvml_readings_reach_the_sample() -> None:
    nvml = FakeNvml()
    sampler, seen = _collect(nvml=nvml, gpu_index=0)
    sampler.start()
    s = sampler.sample_once()
    sampler.stop()
    assert s.gpu_used_mib == 3 * 1024 and s.gpu_total_mib == 24 * 1024
    assert s.gpu_process_mib == 512  # this PID's entry, not the other process's
    assert s.gpu_util_percent == 42
    assert not [e for e in seen if isinstance(e, Note)]
    assert nvml.inits == 1 and nvml.shutdowns == 1


@pytest.mark.parametrize("nvml", [FakeNvml(mig=True), FakeNvml(process_mem=None), FakeNvml(pid=-5)])
def test_per_process_gpu_memory_is_na_when_the_driver_cannot_say(nvml: FakeNvml) -> None:
    sampler, seen = _collect(nvml=nvml, gpu_index=0)
    sampler.start()
    s = sampler.sample_once()
    sampler.stop()
    assert s.gpu_process_mib is None
    assert s.gpu_used_mib == 3 * 1024  # the device figures are still there
    if nvml.mig:
        assert any("MIG" in e.text for e in seen if isinstance(e, Note))


def test_without_nvml_it_runs_host_only_and_says_so_once() -> None:
    sampler, seen = _collect(hz=50, nvml=None, gpu_index=0)
    sampler.start()
    time.sleep(0.2)
    sampler.stop()
    notes = [e for e in seen if isinstance(e, Note)]
    assert len(notes) == 1 and "host-only" in notes[0].text
    samples = [e for e in seen if isinstance(e, ResourceSample)]
    assert samples and all(s.gpu_used_mib is None and s.gpu_process_mib is None for s in samples)
    assert all(s.rss_mib > 0 for s in samples)


def test_real_nvml_path_on_this_machine() -> None:
    """The real nvidia-ml-py: on a GPU machine it reads the device; without one it falls back."""
    nvml = load_nvml()
    assert nvml is not None, "nvidia-ml-py is a dependency"
    sampler, seen = _collect(nvml=nvml, gpu_index=0)
    sampler.start()
    s = sampler.sample_once()
    sampler.stop()
    if sampler.gpu is None:
        assert "NVML" in sampler.host_only_reason or "GPU" in sampler.host_only_reason
        assert s.gpu_total_mib is None
    else:
        assert s.gpu_total_mib is not None and s.gpu_total_mib > 0


def test_schedule_does_not_drift_when_sampling_is_slow() -> None:
    """Each tick costs 8 ms here; a sleep-then-sample loop would fall to ~36 Hz, a fixed schedule keeps 50."""
    bus = EventBus(Clock())
    bus.subscribe(lambda e: time.sleep(0.008) if isinstance(e, ResourceSample) else None)
    sampler = Sampler(bus, 50, nvml=None, gpu_index=None)
    sampler.start()
    time.sleep(2.0)
    sampler.stop()
    # 2 s at 50 Hz is 100 ticks, +1 closing sample; allow a little scheduling noise.
    assert 93 <= sampler.samples_taken <= 103


def _proc_threads() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("Threads:"))


def test_thread_count_agrees_with_proc_status() -> None:
    sampler, _ = _collect(nvml=None, gpu_index=None)
    # A thread left by an earlier test can end between the two reads; compare on a reading that the
    # kernel's count bracketed unchanged.
    for _ in range(50):
        before = _proc_threads()
        s = sampler.sample_once()
        threads = _proc_threads()
        if before == threads:
            break
        time.sleep(0.05)
    assert s.threads == threads


def test_rss_agrees_with_proc_statm_and_follows_an_allocation() -> None:
    sampler, _ = _collect(nvml=None, gpu_index=None)
    page = os.sysconf("SC_PAGE_SIZE")

    def statm_rss_mib() -> float:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * page / MIB

    before = sampler.sample_once().rss_mib
    assert before == pytest.approx(statm_rss_mib(), abs=2)
    block = bytearray(256 * MIB)  # zero-filled pages are touched, so they count in RSS
    after = sampler.sample_once().rss_mib
    assert after == pytest.approx(statm_rss_mib(), abs=2)
    assert after - before > 240
    del block


def test_sample_rate_limits() -> None:
    bus = EventBus()
    with pytest.raises(ValueError):
        Sampler(bus, 0.5)
    with pytest.raises(ValueError):
        Sampler(bus, 101)


def _sample(t_ns: int, rss: float) -> ResourceSample:
    return ResourceSample(
        t_ns=t_ns, rss_mib=rss, sys_ram_used_mib=1.0, sys_ram_available_mib=1.0, cpu_percent=0.0, per_core_percent=(0.0,), threads=1
    )


def test_recorder_timeline_is_bounded_and_keeps_the_peak() -> None:
    rec = Recorder(max_samples=1000)
    for i in range(20_000):
        rec(_sample(i, 9999.0 if i == 12_345 else 100.0))  # a spike thinning would drop
    kept = [e for e in rec.events() if isinstance(e, ResourceSample)]
    assert len(kept) <= 1000
    assert rec.timeline_stride >= 16
    assert rec.state.peaks["rss_mib"] == (9999.0, 12_345)
    assert [e.t_ns for e in kept] == sorted(e.t_ns for e in kept)


def test_server_process_is_sampled_beside_this_one() -> None:
    """The embedding server's process: its RSS from the kernel (psutil), its GPU memory from NVML's
    process list (fake here: NVML lists pid 1 with 1 GiB), and a note when it is gone."""
    child = subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(64 << 20); time.sleep(30)"])
    try:
        time.sleep(0.5)
        sampler, seen = _collect(nvml=FakeNvml(), gpu_index=0, server_pid=child.pid)
        sampler.start()
        s = sampler.sample_once()
        kernel = psutil.Process(child.pid).memory_info().rss / MIB
        assert s.server_rss_mib is not None and abs(s.server_rss_mib - kernel) < 2  # MiB
        assert s.server_rss_mib > 64 and s.server_threads and s.server_threads >= 1
        assert s.server_gpu_mib is None  # NVML does not list the child …
        assert sampler.gpu is not None and sampler.gpu.process_mib(1) == 1024  # … but finds a listed PID's memory
        child.kill()
        child.wait()
        gone = sampler.sample_once()
        sampler.stop()
        assert gone.server_rss_mib is None
        assert any("is gone" in e.text for e in seen if isinstance(e, Note))
    finally:
        if child.poll() is None:
            child.kill()


class TwoGpus(FakeNvml):
    """Two devices that differ (GPU k: 3 + k GiB used of 24 (k + 1) GiB, 42 + k % busy, this process at (k + 1) × 256 MiB),
    and each handle checked as real NVML checks it: a reading with another device's handle, or with none, is wrong
    figures or an error, never the right device's figures by chance."""

    def __init__(self, *, mig_error: bool = False, mig: bool = False, as_bytes: bool = False) -> None:
        super().__init__(devices=2, mig=mig)
        self.mig_error, self.as_bytes = mig_error, as_bytes

    def _device(self, h: object) -> int:
        if h not in ("handle0", "handle1"):
            raise NVMLError(f"invalid argument: {h!r}")
        return int(str(h)[-1])

    def nvmlDeviceGetHandleByIndex(self, i: int) -> str:
        if not isinstance(i, int) or not 0 <= i < self.devices:
            raise NVMLError(f"invalid argument: {i!r}")
        return f"handle{i}"

    def nvmlDeviceGetMigMode(self, h: str) -> tuple[int, int]:
        self._device(h)
        if self.mig_error:
            raise NVMLError_NotSupported("Not Supported")
        return (1 if self.mig else 0, 0)

    def nvmlDeviceGetName(self, h: str) -> str | bytes:  # type: ignore[override]
        name = f"Fake GPU {self._device(h)}"
        return name.encode() if self.as_bytes else name  # older nvidia-ml-py answers bytes

    def nvmlSystemGetDriverVersion(self) -> str | bytes:  # type: ignore[override]
        return b"999.1" if self.as_bytes else "999.1"

    def nvmlDeviceGetMemoryInfo(self, h: str) -> SimpleNamespace:
        k = self._device(h)
        return SimpleNamespace(used=(3 + k) * GIB, total=24 * (k + 1) * GIB, free=0)

    def nvmlDeviceGetUtilizationRates(self, h: str) -> SimpleNamespace:
        return SimpleNamespace(gpu=42 + self._device(h), memory=10)

    def nvmlDeviceGetComputeRunningProcesses(self, h: str) -> list[FakeProc]:
        k = self._device(h)
        return [FakeProc(pid=1, usedGpuMemory=(k + 1) * GIB), FakeProc(pid=self.pid, usedGpuMemory=(k + 1) * 256 * MIB)]


@pytest.mark.parametrize("mig_error, as_bytes", [(False, False), (True, True)])
def test_a_probe_reads_its_own_device(mig_error: bool, as_bytes: bool) -> None:
    probe = GpuProbe(TwoGpus(mig_error=mig_error, as_bytes=as_bytes), 1)
    # A device that cannot say whether it is in MIG mode is read as not in it: its per-process figures are read.
    assert probe.mig is False
    assert probe.describe() == {"index": 1, "name": "Fake GPU 1", "driver": "999.1", "memory_total_mib": 48 * 1024, "mig": False}
    assert probe.read() == {"gpu_used_mib": 4 * 1024, "gpu_total_mib": 48 * 1024, "gpu_process_mib": 512, "gpu_util_percent": 43}
    assert probe.process_mib(1) == 2 * 1024 and probe.process_mib(-5) is None
    # In MIG mode the driver reports no process's memory: N/A, never another figure.
    mig = GpuProbe(TwoGpus(mig=True), 1)
    assert mig.mig is True and mig.read()["gpu_process_mib"] is None and mig.process_mib(1) is None
    assert mig.read()["gpu_used_mib"] == 4 * 1024


@pytest.mark.parametrize("device, visible, index", [
    ("cpu", None, 0), ("cuda", None, 0), ("cuda:1", None, 1), ("cuda:x", None, 0), ("cuda:1:2", None, 0),
    ("cuda:1", "2,3", 3), ("cuda", " 4 , 5 ", 4), ("cuda:5", "2,3", 5), ("cuda:2", "2,3", 2), ("cuda:0", "GPU-3f2a,1", 0), ("cuda:1", "", 1),
])
def test_a_torch_device_maps_to_its_nvml_index(device: str, visible: str | None, index: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA_VISIBLE_DEVICES renumbers the devices torch sees: cuda:1 under "2,3" is NVML's device 3. An ordinal past
    the list, a list of UUIDs, an unset or empty list: the ordinal as it is; an unreadable ordinal: 0."""
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert cuda_index_for_nvml(device) == index


def test_the_rate_defaults_to_ten_a_second_and_takes_its_bounds() -> None:
    from embprof.engine.sampler import MAX_HZ, MIN_HZ

    assert (Sampler(EventBus()).hz, Sampler(EventBus()).interval_s) == (10.0, 0.1)
    for hz in (MIN_HZ, MAX_HZ):
        assert Sampler(EventBus(), hz).interval_s == 1.0 / hz
    with pytest.raises(ValueError, match=f"sample rate must be between {MIN_HZ:g} and {MAX_HZ:g} Hz, not 0.5"):
        Sampler(EventBus(), 0.5)


def _meminfo_mib() -> tuple[float, float]:
    """The kernel's own MemTotal and MemAvailable, in MiB."""
    fields = {line.split(":")[0]: int(line.split()[1]) for line in open("/proc/meminfo", encoding="ascii")}
    return fields["MemTotal"] / 1024, fields["MemAvailable"] / 1024


def test_a_sample_holds_the_kernels_figures_at_the_runs_clock() -> None:
    sampler, seen = _collect(nvml=None, gpu_index=0)
    assert (sampler.samples_taken, sampler.cpu_time_ns) == (0, 0)  # nothing sampled, nothing spent
    before = sampler.bus.clock.now()
    costs = []
    for _ in range(10):
        t0 = time.thread_time_ns()
        s = sampler.sample_once()
        costs.append((time.thread_time_ns() - t0, sampler.cpu_time_ns))
    after = sampler.bus.clock.now()
    assert isinstance(s.t_ns, int) and before <= s.t_ns <= after and seen[-1] is s
    total, available = _meminfo_mib()
    assert s.sys_ram_available_mib == pytest.approx(available, rel=0.05)
    assert s.sys_ram_used_mib == pytest.approx(total - available, rel=0.2, abs=256)
    assert isinstance(s.cpu_percent, float) and s.cpu_percent >= 0
    assert len(s.per_core_percent) == psutil.cpu_count() and s.threads >= 1
    # The sampler's own CPU time: each sample's share added up, never more than the calls took.
    assert sampler.samples_taken == 10
    shares = [c for _, c in costs]
    assert all(0 < a < b for a, b in zip(shares, shares[1:])) and shares[-1] <= sum(d for d, _ in costs)


@pytest.mark.parametrize("gpu_index, nvml, reason", [
    (None, FakeNvml(), "no GPU device in use"),
    (0, None, "nvidia-ml-py is not installed"),
    (0, FakeNvml(devices=0), "NVML sees no GPU"),
    (2, FakeNvml(devices=2), "NVML sees 2 GPU(s), not index 2"),
    (0, FakeNvml(init_error=RuntimeError("no driver")), "NVML unavailable (RuntimeError)"),
])
def test_host_only_sampling_says_why_once(gpu_index: int | None, nvml: FakeNvml | None, reason: str) -> None:
    sampler, seen = _collect(nvml=nvml, gpu_index=gpu_index)
    sampler.start()
    sampler.stop()
    assert sampler.gpu is None and sampler.host_only_reason == reason
    notes = [e for e in seen if isinstance(e, Note)]
    assert [n.text for n in notes] == [f"host-only sampling: {reason}; GPU columns are N/A"] and isinstance(notes[0].t_ns, int)
    if nvml is not None:
        assert nvml.shutdowns == 0  # no device was opened: nothing to close


def test_a_mig_device_is_said_once_and_the_second_gpu_is_read_when_asked_for() -> None:
    sampler, seen = _collect(nvml=FakeNvml(mig=True), gpu_index=0)
    sampler.start()
    sampler.stop()
    notes = [e for e in seen if isinstance(e, Note)]
    assert [n.text for n in notes] == ["GPU is in MIG mode: per-process GPU memory is N/A"] and isinstance(notes[0].t_ns, int)
    sampler, _ = _collect(nvml=TwoGpus(), gpu_index=1)
    sampler.start()
    s = sampler.sample_once()
    sampler.stop()
    assert (s.gpu_used_mib, s.gpu_total_mib, s.gpu_process_mib, s.gpu_util_percent) == (4 * 1024, 48 * 1024, 512, 43)


def test_the_sampler_runs_on_a_daemon_thread_of_its_own_and_ends_with_a_sample() -> None:
    sampler, seen = _collect(hz=20, nvml=None, gpu_index=0)
    sampler.stop()  # never started: nothing to stop, nothing sampled
    assert sampler.samples_taken == 0
    sampler, seen = _collect(hz=20, nvml=None, gpu_index=0)
    sampler.start()
    (thread,) = [t for t in threading.enumerate() if t.name == "embprof-sampler"]
    assert thread.daemon
    time.sleep(1.0)
    ticks = sampler.samples_taken
    sampler.poke()
    time.sleep(0.02)
    sampler.stop()
    assert not thread.is_alive()
    samples = [e for e in seen if isinstance(e, ResourceSample)]
    # About 20 ticks in the second (a busy machine may skip some), the poke's sample, and the closing one.
    assert 5 <= ticks and len(samples) == sampler.samples_taken >= ticks + 1
    assert [s.t_ns for s in samples] == sorted(s.t_ns for s in samples)


def test_torchs_own_counters_are_read_once_the_workload_has_started_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    started = {"yes": False}
    cuda = SimpleNamespace(is_initialized=lambda: started["yes"], memory_allocated=lambda: 100 * MIB, memory_reserved=lambda: 200 * MIB,
                           max_memory_allocated=lambda: 300 * MIB, max_memory_reserved=lambda: 400 * MIB)
    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=cuda))
    sampler, _ = _collect(nvml=None, gpu_index=0)
    s = sampler.sample_once()
    assert (s.torch_allocated_mib, s.torch_reserved_mib, s.torch_max_allocated_mib, s.torch_max_reserved_mib) == (None, None, None, None)
    started["yes"] = True
    s = sampler.sample_once()
    assert (s.torch_allocated_mib, s.torch_reserved_mib, s.torch_max_allocated_mib, s.torch_max_reserved_mib) == (100, 200, 300, 400)
    monkeypatch.delitem(sys.modules, "torch")
    assert sampler.sample_once().torch_allocated_mib is None  # never imported: never read (the sampler does not import it)


class ServerOnGpu(FakeNvml):
    """NVML listing the embedding server's process, with 2 GiB."""

    def __init__(self, server_pid: int) -> None:
        super().__init__()
        self.server_pid = server_pid

    def nvmlDeviceGetComputeRunningProcesses(self, h: str) -> list[FakeProc]:
        return [*super().nvmlDeviceGetComputeRunningProcesses(h), FakeProc(pid=self.server_pid, usedGpuMemory=2 * GIB)]


def test_the_servers_gpu_memory_cpu_and_end_are_sampled() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        sampler, seen = _collect(nvml=ServerOnGpu(child.pid), gpu_index=0, server_pid=child.pid)
        sampler.start()
        s = sampler.sample_once()
        assert s.server_gpu_mib == 2048 and isinstance(s.server_cpu_percent, float) and sampler.server_gone is False
        child.kill()
        child.wait()
        assert sampler.sample_once().server_rss_mib is None and sampler.server_gone is True
        sampler.stop()
        (note,) = [e for e in seen if isinstance(e, Note)]
        assert (note.text, note.level) == (f"the server process {child.pid} is gone", "warning") and isinstance(note.t_ns, int)
        # A server gone before the sampler started, or before it was made: sampled as gone from the start.
        late, _ = _collect(nvml=None, gpu_index=0, server_pid=child.pid)
        assert late.server_gone is True and late.sample_once().server_rss_mib is None
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_a_server_that_ends_before_the_sampler_starts_is_gone_from_its_start() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    sampler, seen = _collect(hz=1, nvml=None, gpu_index=0, server_pid=child.pid)
    assert sampler.server_gone is False
    child.kill()
    child.wait()
    sampler.start()
    # start() itself finds it gone, before the first tick (a second away) could.
    gone_at_start = sampler.server_gone
    sampler.stop()
    assert gone_at_start is True and sampler.server_gone is True
    samples = [e for e in seen if isinstance(e, ResourceSample)]
    assert samples and all(s.server_rss_mib is None and s.server_cpu_percent is None for s in samples)


# -- CPU figures against the kernel's own counters, with a child process whose CPU time the test controls ----------


def _proc_stat(pid: int) -> list[str]:
    """/proc/PID/stat from the state field on (the command name can hold spaces)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        return fh.read().rsplit(")", 1)[1].split()


def _cpu_s(pid: int) -> float:
    """The process's user + system CPU time as the kernel counts it (utime, stime)."""
    fields = _proc_stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _halt(pid: int) -> None:
    """SIGSTOP, and wait until the kernel has it stopped: from then on its CPU time cannot move."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 30
    while _proc_stat(pid)[0] != "T":
        assert time.monotonic() < deadline, "the child did not stop"
        time.sleep(0.001)


def _burn(pid: int, cpu_s: float) -> None:
    """Let the stopped child spin until the kernel has counted ``cpu_s`` more seconds of its CPU time; stop it again."""
    target = _cpu_s(pid) + cpu_s
    os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + 60  # a busy machine gives it less than a core, never nothing
    while _cpu_s(pid) < target:
        assert time.monotonic() < deadline, "the child got no CPU"
        time.sleep(0.01)
    _halt(pid)


@pytest.fixture
def spinner() -> Iterator[subprocess.Popen[bytes]]:
    """A child that spins on a CPU whenever it runs, stopped: it uses CPU only while a test lets it (_burn)."""
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        _halt(child.pid)
        yield child
    finally:
        child.kill()
        child.wait()


def _core_ticks() -> list[tuple[int, int]]:
    """Each core's (busy, total) clock ticks from /proc/stat, counted as psutil counts them: guest time is already
    inside user and nice, and idle and iowait are not busy."""
    out = []
    with open("/proc/stat", encoding="ascii") as fh:
        for line in fh:
            name, *values = line.split()
            if name.startswith("cpu") and name != "cpu":
                v = [int(x) for x in values[:8]]  # user nice system idle iowait irq softirq steal
                out.append((sum(v) - v[3] - v[4], sum(v)))
    return out


def _assert_cores_within(got: tuple[float, ...], a: list[tuple[int, int]], a2: list[tuple[int, int]],
                         b2: list[tuple[int, int]], b: list[tuple[int, int]]) -> None:
    """Per core, a busy percentage measured from a moment between snapshots a and a2 to one between b2 and b lies
    between the inner interval's busy ticks over the outer one's total and the outer busy over the inner total
    (2 points of slack: psutil rounds to 0.1, and the kernel's idle and iowait counters may step back a tick)."""
    assert len(got) == len(a)
    for pct, (busy_a, tot_a), (busy_a2, tot_a2), (busy_b2, tot_b2), (busy_b, tot_b) in zip(got, a, a2, b2, b):
        low = 100 * (busy_b2 - busy_a2) / (tot_b - tot_a)
        high = 100 * (busy_b - busy_a) / (tot_b2 - tot_a2)
        assert low - 2 <= pct <= high + 2, (got, low, high)


def _assert_matches_the_kernels_view(s: ResourceSample, pid: int) -> None:
    """RSS (statm) and threads (status) of a process stopped since the sample, from /proc: exact, as nothing could
    change them in between."""
    with open(f"/proc/{pid}/statm", encoding="ascii") as fh:
        rss_mib = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        threads = next(int(line.split()[1]) for line in fh if line.startswith("Threads:"))
    assert (s.rss_mib, s.threads) == (rss_mib, threads)
    assert (s.server_rss_mib, s.server_threads) == (rss_mib, threads)


def test_a_sample_reads_cpu_figures_the_kernel_counted_and_a_repeat_keeps_the_last(spinner: subprocess.Popen[bytes]) -> None:
    """The watched process (pid=) and the server are the stopped spinner: its CPU time moves only in _burn, so a
    reading agrees with /proc to psutil's rounding, over an interval the test brackets by the monotonic clock."""
    pid = spinner.pid
    sampler, _ = _collect(nvml=None, gpu_index=None, pid=pid, server_pid=pid)
    # Before any reading there is nothing to repeat: 0 %, and one figure per core that /proc/stat lists.
    s0 = sampler.sample_once(repeat_cpu=True)
    _assert_matches_the_kernels_view(s0, pid)
    assert (s0.cpu_percent, s0.server_cpu_percent, s0.per_core_percent) == (0.0, 0.0, (0.0,) * len(_core_ticks()))
    a, ta = _core_ticks(), time.monotonic()
    s1 = sampler.sample_once()  # psutil's first reading of each process: its baseline
    ta2, a2 = time.monotonic(), _core_ticks()
    _assert_matches_the_kernels_view(s1, pid)
    c0 = _cpu_s(pid)
    _burn(pid, 0.2)
    burned = _cpu_s(pid) - c0
    s2 = sampler.sample_once(repeat_cpu=True)
    _assert_matches_the_kernels_view(s2, pid)
    assert (s2.cpu_percent, s2.server_cpu_percent, s2.per_core_percent) == (s1.cpu_percent, s1.server_cpu_percent, s1.per_core_percent)
    b2, tb2 = _core_ticks(), time.monotonic()
    s3 = sampler.sample_once()
    tb, b = time.monotonic(), _core_ticks()
    # psutil: the process's CPU seconds over the wall seconds between its readings, in % of one core.
    for pct in (s3.cpu_percent, s3.server_cpu_percent):
        assert 100 * burned / (tb - ta) - 0.1 <= pct <= 100 * burned / (tb2 - ta2) + 0.1
    _assert_cores_within(s3.per_core_percent, a, a2, b2, b)
    _assert_matches_the_kernels_view(s3, pid)
    assert s3.server_gpu_mib is None and sampler.server_gone is False  # no GPU: nothing to ask NVML


@pytest.mark.parametrize("due, now, following", [
    (10.0, 10.0, 10.25),  # on time: one interval on
    (10.0, 10.125, 10.25),  # late by less than a tick: the grid holds, so the schedule does not drift
    (10.0, 10.25, 10.25),  # the next tick falls due exactly now: taken, not skipped
    (10.0, 10.375, 10.625),  # starved past the next tick: it is skipped, and the grid restarts from now
    (10.0, 11.0, 11.25),
])
def test_the_schedule_keeps_its_grid_and_skips_ticks_missed_while_starved(due: float, now: float, following: float) -> None:
    assert next_tick(due, now, 0.25) == following


class StillClock:
    """perf_counter as the sampler's loop sees it: it stands still until the test moves it, so that a tick falls
    due exactly when the test says (each wait still lasts, in real time, what the schedule asks)."""

    def __init__(self, t: float) -> None:
        self.t = t

    def perf_counter(self) -> float:
        return self.t


def test_a_tick_falling_due_with_a_poke_pending_reads_first_and_the_poke_repeats_it(
        spinner: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    """Tick 1 finds the stopped spinner idle (0 %). While it is published the spinner burns CPU, the clock moves to
    exactly when tick 2 falls due, and a poke arrives: tick 2 is taken first and reads the burn, and the poke's
    sample repeats tick 2's figure. Ticks go on after a poke: tick 3 (due at once) reads the idle spinner again.
    The spinner then burns once more, and the closing sample after stop() repeats tick 3's figure, not the burn."""
    clock = StillClock(100.0)  # binary fractions: 100 + 0.25 + 0.25 is exactly 100.5
    monkeypatch.setattr(sampler_module, "time", SimpleNamespace(perf_counter=clock.perf_counter, thread_time_ns=time.thread_time_ns))
    sampler, _ = _collect(hz=4, nvml=None, gpu_index=None, pid=spinner.pid)
    samples: list[ResourceSample] = []
    ticked = threading.Event()

    def on_sample(e: object) -> None:
        if not isinstance(e, ResourceSample):
            return
        samples.append(e)
        if len(samples) == 1:
            _burn(spinner.pid, 0.05)
            clock.t = 100.5  # tick 1 was due at 100.25: tick 2 is due now
            sampler.poke()
        elif len(samples) == 3:
            clock.t = 100.75  # tick 3 is due now
        elif len(samples) == 4:
            clock.t = -1000.0  # the next tick ~1100 s off: nothing more until stop()
            ticked.set()

    sampler.bus.subscribe(on_sample)
    sampler.start()
    try:
        assert ticked.wait(60), samples
        _burn(spinner.pid, 0.05)
    finally:
        before_stop = sampler.bus.clock.now()
        sampler.stop()
    assert len(samples) == sampler.samples_taken == 5
    cpu = [s.cpu_percent for s in samples]
    assert cpu[0] == 0.0 and cpu[1] > 0 and cpu[2] == cpu[1] and cpu[3] == cpu[4] == 0.0, cpu
    assert samples[4].t_ns >= before_stop  # the closing sample: the timeline ends when the run ends


class FirstCallHook:
    """The real perf_counter, that runs a hook on its first call: the loop's first call comes just after it primes
    psutil's per-core baseline."""

    def __init__(self, hook: Callable[[], None]) -> None:
        self.hook: Callable[[], None] | None = hook

    def perf_counter(self) -> float:
        hook, self.hook = self.hook, None
        if hook is not None:
            hook()
        return time.perf_counter()


def _write_stat(path: Path, cores: list[tuple[int, int]]) -> None:
    """A /proc/stat whose cores have spent (busy, idle) clock ticks, the busy ones as user time; written whole at once."""
    lines = [f"cpu  {sum(b for b, _ in cores)} 0 0 {sum(i for _, i in cores)} 0 0 0 0 0 0"]
    lines += [f"cpu{k} {busy} 0 0 {idle} 0 0 0 0 0 0" for k, (busy, idle) in enumerate(cores)]
    tmp = path.with_suffix(".new")
    tmp.write_text("\n".join(lines) + "\nintr 0\nctxt 0\n", encoding="ascii")
    os.replace(tmp, path)


def test_the_first_tick_comes_an_interval_after_start_and_measures_the_cores_over_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """psutil keeps its per-core baseline per calling thread, so the sampler's own thread must set it: the first
    tick's per-core figures cover the stretch from that thread's start to the tick, not the microseconds between two
    reads, nor the stretch since a baseline an earlier thread of the same id left. The kernel's counters are a fake
    /proc/stat here (psutil.PROCFS_PATH, psutil's documented way to read a /proc mounted elsewhere): they read
    `before` until the loop has started and `after` from then on, so the tick must report before -> after."""
    ncores = len(_core_ticks())
    sampler, _ = _collect(hz=2, nvml=None, gpu_index=None)  # made first: its Process keeps reading the real /proc
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "meminfo").symlink_to("/proc/meminfo")
    stat = proc / "stat"
    before = [(1000 * (k + 1), 5000) for k in range(ncores)]
    busy = [(20 + 30 * k) % 100 for k in range(ncores)]  # each core's busy % over the stretch, 100 ticks long
    after = [(b + d, i + 100 - d) for (b, i), d in zip(before, busy)]
    _write_stat(stat, before)
    monkeypatch.setattr(psutil, "PROCFS_PATH", str(proc))
    hooked = FirstCallHook(lambda: _write_stat(stat, after))
    monkeypatch.setattr(sampler_module, "time", SimpleNamespace(perf_counter=hooked.perf_counter, thread_time_ns=time.thread_time_ns))
    first: list[tuple[float, ResourceSample]] = []
    arrived = threading.Event()

    def on_sample(e: object) -> None:
        if isinstance(e, ResourceSample) and not first:
            first.append((time.perf_counter(), e))
            arrived.set()

    sampler.bus.subscribe(on_sample)
    t0 = time.perf_counter()
    sampler.start()
    try:
        assert arrived.wait(60)
    finally:
        sampler.stop()
    ((t, sample),) = first
    assert t - t0 >= 0.5 - 0.001  # not at once: one interval (0.5 s at 2 Hz) after start, by the test's own clock
    assert sample.per_core_percent == pytest.approx([float(d) for d in busy], abs=0.1)


def test_by_default_it_opens_nvml_itself_and_reads_the_first_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """nvml="auto" (the default) loads nvidia-ml-py itself (here the fake, at the import boundary), and
    gpu_index defaults to device 0; a device opened leaves no host-only reason."""
    nvml = TwoGpus()
    monkeypatch.setattr(sampler_module, "load_nvml", lambda: nvml)
    sampler = Sampler(EventBus())
    sampler.start()
    s = sampler.sample_once()
    sampler.stop()
    assert (s.gpu_used_mib, s.gpu_total_mib, s.gpu_process_mib, s.gpu_util_percent) == (3 * 1024, 24 * 1024, 256, 42)
    assert sampler.host_only_reason == "" and (nvml.inits, nvml.shutdowns) == (1, 1)
    explicit = Sampler(EventBus(), nvml="auto", gpu_index=1)
    explicit.start()
    s = explicit.sample_once()
    explicit.stop()
    assert (s.gpu_used_mib, s.gpu_process_mib) == (4 * 1024, 512) and explicit.host_only_reason == ""
