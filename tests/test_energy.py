"""The energy meter against fake counters on fake time (NVML's coarse ticks, RAPL's wrap-around,
unreadable counters), and against whatever this machine really has."""

from __future__ import annotations

import bisect
import builtins
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fake_nvml import FakeNvml, NVMLError

from embprof.engine.energy import EnergyMeter, IdleBaseline, NvmlEnergyCounter, RaplEnergyCounter, find_meter

IDLE_W = 50.0
BUSY_W = 250.0


class FakeTime:
    """Virtual time with a power draw: sleeping draws idle power, ``busy`` draws busy power.

    Keeps the true energy as a piecewise-linear history so that a fake counter can answer with
    the energy as of its last tick, as a real one does."""

    def __init__(self, idle_w: float = IDLE_W, start: float = 0.0123) -> None:
        self.idle_w = idle_w
        self.t = start  # off any tick, so an unaligned window would show
        self.e = 0.0
        self._ts = [start]
        self._es = [0.0]
        self.listeners: list[Callable[[], None]] = []

    def now(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        self._advance(dt, self.idle_w)

    def busy(self, dt: float, watts: float = BUSY_W) -> None:
        self._advance(dt, watts)

    def _advance(self, dt: float, watts: float) -> None:
        self.t += dt
        self.e += watts * dt
        self._ts.append(self.t)
        self._es.append(self.e)
        for listener in self.listeners:
            listener()

    def energy_at(self, tau: float) -> float:
        k = bisect.bisect_right(self._ts, tau)
        if k == 0:
            return 0.0
        if k == len(self._ts):
            return self._es[-1]
        t0, t1, e0, e1 = self._ts[k - 1], self._ts[k], self._es[k - 1], self._es[k]
        return e0 + (e1 - e0) * (tau - t0) / (t1 - t0)


def _work(clock: FakeTime, seconds: float, items: int, log: list[float]) -> Callable[[], int]:
    def work() -> int:
        log.append(clock.t)
        clock.busy(seconds)
        return items

    return work


def _gpu_meter(clock: FakeTime, nvml: FakeNvml, device: str = "cuda:0", **kw: object) -> EnergyMeter:
    meter, why = find_meter(device, nvml=nvml, clock=clock.now, sleep=clock.sleep, **kw)  # type: ignore[arg-type]
    assert meter is not None, why
    assert why == ""
    return meter


# -- NVML ------------------------------------------------------------------------------------------


def test_nvml_net_energy_is_busy_minus_idle_over_the_window() -> None:
    clock = FakeTime()
    nvml = FakeNvml(clock, period_s=0.05)
    calls: list[float] = []
    with _gpu_meter(clock, nvml) as meter:
        reading, why = meter.measure(_work(clock, 0.3, 100, calls), min_window_s=1.0)
    assert reading is not None, why
    assert reading.source == "nvml total energy (GPU 0; GPU energy only)"
    # 0.3 s per call: 3 calls make 0.9 s, short of the window, so a fourth one runs.
    assert len(calls) == reading.calls == 4 and reading.items == 400
    busy_s = 4 * 0.3
    assert reading.window_s >= 1.0
    assert reading.baseline_s >= 1.0
    assert reading.idle_w == pytest.approx(IDLE_W, rel=0.005)
    assert reading.net_j == pytest.approx((BUSY_W - IDLE_W) * busy_s, rel=0.005)
    assert reading.gross_j == pytest.approx(reading.net_j + reading.idle_w * reading.window_s)
    assert reading.j_per_1000 == pytest.approx(reading.net_j / 400 * 1000)
    assert reading.note == ""
    assert nvml.inits == 1 and nvml.shutdowns == 1


def test_a_coarse_counter_is_read_on_its_ticks() -> None:
    """A 100 ms counter: a window cut between ticks could miss up to 100 ms of 250 W at each end
    (about 7 % here); starting and ending on ticks keeps the error to the polling interval."""
    clock = FakeTime(start=0.0371)
    nvml = FakeNvml(clock, period_s=0.1)
    calls: list[float] = []
    meter = _gpu_meter(clock, nvml)
    reading, why = meter.measure(_work(clock, 0.33, 8, calls), min_window_s=1.0)
    assert reading is not None, why
    assert reading.net_j == pytest.approx((BUSY_W - IDLE_W) * 0.33 * len(calls), rel=0.005)
    assert reading.idle_w == pytest.approx(IDLE_W, rel=0.005)
    # The work starts right after a tick, not somewhere between two.
    assert (calls[0] % 0.1) < 0.002 or (calls[0] % 0.1) > 0.098


def test_one_long_call_is_enough_and_a_shorter_window_is_honoured() -> None:
    clock = FakeTime()
    meter = _gpu_meter(clock, FakeNvml(clock))
    calls: list[float] = []
    reading, _ = meter.measure(_work(clock, 2.5, 1000, calls), min_window_s=1.0)
    assert reading is not None and reading.calls == 1 and reading.window_s >= 2.5
    calls.clear()
    reading, _ = meter.measure(_work(clock, 0.1, 1, calls), min_window_s=0.25)
    assert reading is not None and reading.calls == 3 and 0.25 <= reading.window_s < 0.4
    assert 0.25 <= reading.baseline_s < 0.4


def test_gpu_energies_sum_over_the_devices() -> None:
    clock = FakeTime()
    nvml = FakeNvml(clock, devices=2)
    meter = _gpu_meter(clock, nvml, gpu_indices=[0, 1])
    reading, why = meter.measure(_work(clock, 0.5, 10, []), min_window_s=1.0)
    assert reading is not None, why
    assert reading.source.startswith("nvml total energy (GPU 0+1")
    assert reading.idle_w == pytest.approx(2 * IDLE_W, rel=0.005)
    assert reading.net_j == pytest.approx(2 * (BUSY_W - IDLE_W) * 1.0, rel=0.005)
    counter, why = NvmlEnergyCounter.open(nvml, None)  # no indices: every GPU
    assert counter is not None and counter.indices == [0, 1]


def test_a_baseline_can_be_reused() -> None:
    clock = FakeTime()
    meter = _gpu_meter(clock, FakeNvml(clock))
    idle, why = meter.idle_baseline(1.0)
    assert idle is not None, why
    started = clock.t
    reading, _ = meter.measure(_work(clock, 0.5, 10, []), 1.0, idle=idle)
    assert reading is not None and reading.idle_w == idle.idle_w
    assert clock.t - started < 1.3  # no second idle second


def test_work_at_idle_power_reads_near_zero_with_a_note_when_below() -> None:
    clock = FakeTime()
    meter = _gpu_meter(clock, FakeNvml(clock))
    idle = IdleBaseline(source=meter.source, idle_w=IDLE_W + 1.0, baseline_s=1.0)  # a warmer idle

    def at_idle_power() -> int:
        clock.busy(0.5, IDLE_W)
        return 5

    reading, _ = meter.measure(at_idle_power, 1.0, idle=idle)
    assert reading is not None and reading.net_j < 0
    assert "noise" in reading.note


def test_a_counter_that_does_not_move_gives_no_reading() -> None:
    clock = FakeTime()
    meter = _gpu_meter(clock, FakeNvml(clock, frozen=True))
    reading, why = meter.measure(_work(clock, 0.5, 10, []), 1.0)
    assert reading is None and "not updating" in why
    # Past a baseline it is the work window's own check that says so.
    idle = IdleBaseline(source=meter.source, idle_w=IDLE_W, baseline_s=1.0)
    reading, why = meter.measure(_work(clock, 0.5, 10, []), 1.0, idle=idle)
    assert reading is None and "not updating" in why and "of work" in why


def test_bad_work_and_windows_are_refused() -> None:
    clock = FakeTime()
    meter = _gpu_meter(clock, FakeNvml(clock))
    with pytest.raises(ValueError):
        meter.measure(lambda: 1, 0)
    idle = IdleBaseline(source=meter.source, idle_w=IDLE_W, baseline_s=1.0)
    with pytest.raises(TypeError):
        meter.measure(lambda: None, 1.0, idle=idle)  # type: ignore[arg-type, return-value]
    reading, why = meter.measure(_work(clock, 0.5, 0, []), 1.0, idle=idle)
    assert reading is None and "no items" in why


@pytest.mark.parametrize(
    ("nvml_kw", "expected"),
    [
        ({"supported": False}, "not supported on GPU 0"),
        ({"devices": 0}, "NVML sees no GPU"),
        ({"init_error": type("NVMLError_DriverNotLoaded", (NVMLError,), {})()}, "NVMLError_DriverNotLoaded"),
    ],
)
def test_nvml_unavailable_says_why(nvml_kw: dict[str, object], expected: str) -> None:
    clock = FakeTime()
    nvml = FakeNvml(clock, **nvml_kw)  # type: ignore[arg-type]
    meter, why = find_meter("cuda:0", nvml=nvml, clock=clock.now, sleep=clock.sleep)
    assert meter is None and expected in why and "\n" not in why
    assert nvml.inits == nvml.shutdowns  # whatever opened NVML closed it again


def test_nvml_missing_or_index_out_of_range() -> None:
    meter, why = find_meter("cuda", nvml=None)
    assert meter is None and "nvidia-ml-py is not installed" in why
    meter, why = find_meter("cuda:3", nvml=FakeNvml(FakeTime(), devices=2))
    assert meter is None and "not index 3" in why
    meter, why = find_meter("mps")
    assert meter is None and "mps" in why


# -- RAPL ------------------------------------------------------------------------------------------


MAX_UJ = 1_000_000_000  # 1 kJ, so that a short fake run wraps


def _powercap(root: Path, start_uj: int = 0) -> Path:
    """A powercap tree: package-0 with a core subzone, a psys zone and an MMIO twin, none of
    which may be counted."""
    zones = {
        "intel-rapl:0": "package-0",
        "intel-rapl:0:0": "core",
        "intel-rapl:1": "psys",
        "intel-rapl-mmio:0": "package-0",
    }
    for folder, name in zones.items():
        d = root / folder
        d.mkdir(parents=True)
        (d / "name").write_text(name + "\n")
        (d / "energy_uj").write_text(f"{start_uj}\n")
        (d / "max_energy_range_uj").write_text(f"{MAX_UJ}\n")
    (root / "intel-rapl").mkdir()  # the control type, not a zone
    return root / "intel-rapl:0" / "energy_uj"


def test_rapl_reads_the_package_through_a_wrap(tmp_path: Path) -> None:
    start_uj = 900_000_000  # 900 J: the 50 J of idle and 300 J of work cross 1 kJ
    energy_uj = _powercap(tmp_path, start_uj)
    clock = FakeTime()
    wraps = []

    def write() -> None:
        value = (start_uj + int(clock.e * 1e6)) % MAX_UJ
        if value < int(energy_uj.read_text()):
            wraps.append(clock.t)
        energy_uj.write_text(f"{value}\n")

    clock.listeners.append(write)
    meter, why = find_meter("cpu", powercap_root=tmp_path, clock=clock.now, sleep=clock.sleep)
    assert meter is not None, why
    assert meter.source == "rapl package-0 (whole CPU package)"
    reading, why = meter.measure(_work(clock, 0.3, 100, []), 1.0)
    assert reading is not None, why
    assert len(wraps) == 1
    assert reading.idle_w == pytest.approx(IDLE_W, rel=0.005)
    assert reading.net_j == pytest.approx((BUSY_W - IDLE_W) * 1.2, rel=0.005)


def test_rapl_wrap_arithmetic(tmp_path: Path) -> None:
    energy_uj = _powercap(tmp_path, MAX_UJ - 10)
    counter, why = RaplEnergyCounter.open(tmp_path)
    assert counter is not None, why
    energy_uj.write_text("5\n")
    assert counter.read_j() == pytest.approx(15e-6)
    energy_uj.write_text("25\n")
    assert counter.read_j() == pytest.approx(35e-6)


def test_rapl_sums_several_packages(tmp_path: Path) -> None:
    _powercap(tmp_path / "a")
    second = tmp_path / "a" / "intel-rapl:2"
    second.mkdir()
    (second / "name").write_text("package-1\n")
    (second / "energy_uj").write_text("0\n")
    (second / "max_energy_range_uj").write_text(f"{MAX_UJ}\n")
    counter, _ = RaplEnergyCounter.open(tmp_path / "a")
    assert counter is not None and counter.source.startswith("rapl package-0+package-1")
    (tmp_path / "a" / "intel-rapl:0" / "energy_uj").write_text("1000000\n")
    (second / "energy_uj").write_text("2000000\n")
    assert counter.read_j() == pytest.approx(3.0)


def test_rapl_permission_denied_by_chmod(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("running as root, where chmod 000 does not stop a read; the next test simulates it")
    energy_uj = _powercap(tmp_path)
    energy_uj.chmod(0)
    meter, why = find_meter("cpu", powercap_root=tmp_path)
    assert meter is None and "RAPL" in why and "permission denied" in why


def test_rapl_permission_denied_simulated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As a kernel patched for CVE-2020-8694 refuses a reader that is not root: opening energy_uj fails."""
    energy_uj = _powercap(tmp_path)
    real_open = builtins.open

    def open_refusing_energy_uj(file: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(file, (str, os.PathLike)) and Path(file) == energy_uj:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", open_refusing_energy_uj)
    meter, why = find_meter("cpu", powercap_root=tmp_path)
    assert meter is None and "RAPL" in why and "permission denied" in why and "CVE-2020-8694" in why


@pytest.mark.parametrize("case", ["no root", "no package", "no energy_uj", "garbage"])
def test_rapl_unavailable_says_why(tmp_path: Path, case: str) -> None:
    root = tmp_path / "powercap"
    if case != "no root":
        energy_uj = _powercap(root)
        if case == "no package":
            (root / "intel-rapl:0" / "name").write_text("psys\n")
        elif case == "no energy_uj":
            energy_uj.unlink()
        else:
            energy_uj.write_text("n/a\n")
    meter, why = find_meter("cpu", powercap_root=root)
    assert meter is None and why.startswith("no energy counter for cpu: RAPL not readable (") and "\n" not in why


# -- this machine ----------------------------------------------------------------------------------


def test_this_machines_cpu_counter() -> None:
    """No RAPL here gives a reason; readable RAPL must give joules for a second of busy loop."""
    meter, why = find_meter("cpu")
    if meter is None:
        assert "RAPL" in why
        return

    def spin() -> int:
        end = time.perf_counter() + 0.1
        n = 0
        while time.perf_counter() < end:
            n += 1
        return 1

    with meter:
        reading, why = meter.measure(spin, 1.0)
    assert reading is not None, why
    assert reading.gross_j > 0 and reading.window_s >= 1.0 and reading.items >= 10


def test_this_machines_gpu_counter() -> None:
    meter, why = find_meter("cuda:0")
    if meter is None:
        assert "NVML" in why or "nvidia-ml-py" in why or "GPU" in why
        return
    def nap() -> int:
        time.sleep(0.1)
        return 1

    with meter:
        reading, why = meter.measure(nap, 1.0)
    # An idle GPU still draws power, so the counter moves.
    assert reading is not None, why
    assert reading.gross_j > 0
