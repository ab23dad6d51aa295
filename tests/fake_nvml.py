"""A fake pynvml: the NVML calls embprof makes, for the sampler (memory, utilisation, this process's share) and
the energy meter (the total energy counter), where there is no GPU or none that does what a test needs."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Protocol

MIB = 1 << 20
GIB = 1 << 30


class NVMLError(Exception):
    pass


class NVMLError_NotSupported(NVMLError):  # noqa: N801 - pynvml's own name
    pass


class PowerClock(Protocol):
    """Virtual time with a power draw (test_energy.FakeTime): its time now, and the energy used up to a time."""

    t: float

    def energy_at(self, tau: float) -> float: ...


@dataclass
class FakeProc:
    pid: int
    usedGpuMemory: int | None


class FakeNvml:
    """The pynvml module as embprof calls it, answering like ``devices`` GPUs of 24 GiB, 3 GiB used, 42 % busy.

    For the sampler: this process (``pid``) uses ``process_mem`` bytes of GPU 0 (None: the driver cannot say), beside
    another process's 1 GiB; ``mig``: the device is in MIG mode. For the energy meter: each device draws the power of
    ``clock``, and its energy counter moves only every ``period_s``, like the driver's; ``supported=False`` (or no
    clock) makes the counter NotSupported, ``frozen`` keeps it still, ``init_error`` is raised by nvmlInit. It counts
    its inits, shutdowns and energy readings.
    """

    NVMLError_NotSupported = NVMLError_NotSupported

    def __init__(self, clock: PowerClock | None = None, *, devices: int = 1, mig: bool = False, process_mem: int | None = 512 * MIB,
                 pid: int | None = None, period_s: float = 0.05, supported: bool = True, frozen: bool = False,
                 init_error: Exception | None = None) -> None:
        self.clock = clock
        self.devices = devices
        self.mig = mig
        self.process_mem = process_mem
        self.pid = pid if pid is not None else os.getpid()
        self.period_s = period_s
        self.supported = supported
        self.frozen = frozen
        self.init_error = init_error
        self.inits = 0
        self.shutdowns = 0
        self.energy_calls = 0

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise self.init_error
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return self.devices

    def nvmlDeviceGetHandleByIndex(self, i: int) -> str:
        return f"handle{i}"

    def nvmlDeviceGetMigMode(self, h: str) -> tuple[int, int]:
        return (1 if self.mig else 0, 0)

    def nvmlDeviceGetName(self, h: str) -> str:
        return "Fake GPU"

    def nvmlSystemGetDriverVersion(self) -> str:
        return "999.1"

    def nvmlDeviceGetMemoryInfo(self, h: str) -> SimpleNamespace:
        return SimpleNamespace(used=3 * GIB, total=24 * GIB, free=21 * GIB)

    def nvmlDeviceGetUtilizationRates(self, h: str) -> SimpleNamespace:
        return SimpleNamespace(gpu=42, memory=10)

    def nvmlDeviceGetComputeRunningProcesses(self, h: str) -> list[FakeProc]:
        return [FakeProc(pid=1, usedGpuMemory=GIB), FakeProc(pid=self.pid, usedGpuMemory=self.process_mem)]

    def nvmlDeviceGetTotalEnergyConsumption(self, h: str) -> int:
        self.energy_calls += 1
        if not self.supported or self.clock is None:
            raise NVMLError_NotSupported("Not Supported")
        if self.frozen:
            return 123_456
        tick = math.floor(self.clock.t / self.period_s + 1e-9) * self.period_s
        return 10_000_000 + int(self.clock.energy_at(tick) * 1000)  # mJ since "driver load"
