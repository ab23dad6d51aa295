"""The sampler against the kernel's own accounting, and against a fake NVML where there is no GPU."""

from __future__ import annotations

import os
import time

import pytest
from fake_nvml import FakeNvml

from embprof.engine.events import MIB, Clock, EventBus, Note, ResourceSample
from embprof.engine.sampler import Sampler, load_nvml
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
    import subprocess
    import sys

    import psutil

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
