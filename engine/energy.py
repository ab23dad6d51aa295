"""Energy per 1,000 texts from the hardware's own energy counters: NVML's total-energy counter for a
GPU, RAPL's package counters for a CPU. Never an estimate from TDP or utilisation: where no counter
can be read there is no figure, only the reason.

A reading is "energy above idle": the counter's joules over the work window, less the idle power
(measured on the same counter just before, over a window as long) times that window. Both windows
start and end on a tick of the counter, because NVML's counter only moves every ~20-100 ms: a
window cut between ticks would be off by up to one tick of busy power at each end.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .sampler import cuda_index_for_nvml, load_nvml

DEFAULT_POWERCAP_ROOT = "/sys/class/powercap"
DEFAULT_MIN_WINDOW_S = 1.0

# Only the top-level zones are packages; intel-rapl:0:0 (core, uncore, dram) sits inside package-0
# and would count twice, and intel-rapl-mmio:0 is the same package read another way.
_RAPL_ZONE = re.compile(r"^intel-rapl:\d+$")


class EnergyCounter(Protocol):
    """A cumulative, monotonic energy counter in joules (wrap-around already undone)."""

    source: str

    def read_j(self) -> float: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class IdleBaseline:
    """Idle power over an idle window; reusable across measurements taken close together."""

    source: str
    idle_w: float
    baseline_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class EnergyReading:
    """Energy of a window of work, above idle. ``net_j`` can be slightly negative when the work
    drew no more than idle: that is the counter's noise, kept rather than clipped."""

    source: str
    gross_j: float
    idle_w: float
    window_s: float
    baseline_s: float
    items: int
    calls: int
    net_j: float
    j_per_1000: float
    note: str = ""


# -- NVML ------------------------------------------------------------------------------------------


class NvmlEnergyCounter:
    """Sum of nvmlDeviceGetTotalEnergyConsumption (mJ since driver load) over some GPUs.

    Open it with :meth:`open`, which says why not instead of raising.
    """

    def __init__(self, nvml: Any, handles: Sequence[Any], indices: Sequence[int]) -> None:
        self._nvml = nvml
        self._handles = list(handles)
        self.indices = list(indices)
        gpus = "+".join(str(i) for i in self.indices)
        self.source = f"nvml total energy (GPU {gpus}; GPU energy only)"
        self._closed = False

    @classmethod
    def open(cls, nvml: Any = "auto", indices: Sequence[int] | None = None) -> tuple[NvmlEnergyCounter | None, str]:
        """``indices`` None means every GPU NVML sees."""
        module = load_nvml() if nvml == "auto" else nvml
        if module is None:
            return None, "nvidia-ml-py is not installed"
        try:
            module.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, …
            return None, f"NVML unavailable ({exc.__class__.__name__})"
        # Every failure past nvmlInit must shut down again: NVML counts inits, and the sampler
        # shares the library in this process.
        try:
            count = module.nvmlDeviceGetCount()
            if count == 0:
                raise _Unavailable("NVML sees no GPU")
            wanted = list(range(count)) if indices is None else list(indices)
            if not wanted:
                raise _Unavailable("no GPU index given")
            handles = []
            for i in wanted:
                if not 0 <= i < count:
                    raise _Unavailable(f"NVML sees {count} GPU(s), not index {i}")
                handle = module.nvmlDeviceGetHandleByIndex(i)
                try:
                    module.nvmlDeviceGetTotalEnergyConsumption(handle)
                except Exception as exc:
                    raise _Unavailable(_nvml_energy_error(module, exc, i)) from exc
                handles.append(handle)
        except _Unavailable as why:
            _shutdown(module)
            return None, str(why)
        except Exception as exc:
            _shutdown(module)
            return None, f"NVML unavailable ({exc.__class__.__name__})"
        return cls(module, handles, wanted), ""

    def read_j(self) -> float:
        return sum(int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(h)) for h in self._handles) / 1000.0

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _shutdown(self._nvml)


class _Unavailable(Exception):
    pass


def _shutdown(nvml: Any) -> None:
    try:
        nvml.nvmlShutdown()
    except Exception:
        pass


def _nvml_energy_error(nvml: Any, exc: Exception, index: int) -> str:
    not_supported = getattr(nvml, "NVMLError_NotSupported", None)
    if (isinstance(not_supported, type) and isinstance(exc, not_supported)) or "NotSupported" in exc.__class__.__name__:
        return f"NVML total energy counter not supported on GPU {index} (needs a Volta or newer GPU)"
    return f"NVML total energy counter unreadable on GPU {index} ({exc.__class__.__name__})"


# -- RAPL ------------------------------------------------------------------------------------------


def _read_int(path: Path) -> int:
    with open(path) as fh:
        return int(fh.read().strip())


class RaplEnergyCounter:
    """Sum of the RAPL package zones' energy_uj, with each zone's wrap at max_energy_range_uj undone.

    A zone's counter is assumed to wrap at most once between two reads; the meter reads after every
    call of the work and every slice of the idle sleep, far shorter than the minutes a wrap takes.
    """

    def __init__(self, zones: Sequence[tuple[str, Path, int]]) -> None:
        self._zones = [(name, path, max_uj) for name, path, max_uj in zones]
        self.source = "rapl " + "+".join(name for name, _, _ in self._zones) + " (whole CPU package)"
        self._last = [_read_int(path) for _, path, _ in self._zones]
        self._total_uj = 0

    @classmethod
    def open(cls, powercap_root: str | os.PathLike[str] = DEFAULT_POWERCAP_ROOT) -> tuple[RaplEnergyCounter | None, str]:
        root = Path(powercap_root)
        if not root.is_dir():
            return None, f"no {root} (no RAPL driver, or not Linux)"
        zones: list[tuple[str, Path, int]] = []
        for entry in sorted(root.iterdir(), key=lambda p: p.name):
            if not _RAPL_ZONE.match(entry.name):
                continue
            try:
                name = (entry / "name").read_text().strip()
            except OSError:
                continue
            if not name.startswith("package"):  # psys, dram at top level: not the CPU package
                continue
            energy = entry / "energy_uj"
            try:
                _read_int(energy)
                max_uj = _read_int(entry / "max_energy_range_uj")
            except PermissionError:
                return None, (
                    f"permission denied on {energy} (root-only on kernels patched for CVE-2020-8694, "
                    "Nov 2020 onwards)"
                )
            except FileNotFoundError as exc:
                return None, f"{exc.filename or energy} is missing"
            except (OSError, ValueError) as exc:
                return None, f"{energy} unreadable ({exc.__class__.__name__})"
            if max_uj <= 0:
                return None, f"{entry / 'max_energy_range_uj'} is {max_uj}, so a wrap cannot be undone"
            zones.append((name, energy, max_uj))
        if not zones:
            return None, f"no RAPL package zone under {root}"
        return cls(zones), ""

    def read_j(self) -> float:
        for k, (_, path, max_uj) in enumerate(self._zones):
            now = _read_int(path)
            prev = self._last[k]
            self._total_uj += now - prev if now >= prev else max_uj - prev + now
            self._last[k] = now
        return self._total_uj / 1e6

    def close(self) -> None:
        pass


# -- the meter -------------------------------------------------------------------------------------


class EnergyMeter:
    """Measures a window of work on one energy counter.

    ``clock`` and ``sleep`` are injectable so that tests can drive a fake counter on fake time.
    """

    def __init__(
        self,
        counter: EnergyCounter,
        *,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], None] = time.sleep,
        poll_s: float = 0.001,
        edge_timeout_s: float = 0.5,
    ) -> None:
        self.counter = counter
        self._clock = clock
        self._sleep = sleep
        self.poll_s = poll_s
        self.edge_timeout_s = edge_timeout_s

    @property
    def source(self) -> str:
        return self.counter.source

    def close(self) -> None:
        self.counter.close()

    def __enter__(self) -> EnergyMeter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _edge(self) -> tuple[float, float, bool]:
        """(joules, time, aligned) at the counter's next tick.

        The counter's value at a tick holds the energy up to that tick, so the clock read right
        after seeing it change is the matching time; between ticks the value is stale.
        """
        first = self.counter.read_j()
        deadline = self._clock() + self.edge_timeout_s
        while True:
            self._sleep(self.poll_s)
            value = self.counter.read_j()
            now = self._clock()
            if value != first:
                return value, now, True
            if now >= deadline:
                return value, now, False

    def idle_baseline(self, min_window_s: float = DEFAULT_MIN_WINDOW_S) -> tuple[IdleBaseline | None, str]:
        """Idle watts over at least ``min_window_s`` of sleep, edge to edge."""
        _check_window(min_window_s)
        e0, t0, _ = self._edge()
        while (left := min_window_s - (self._clock() - t0)) > 0:
            # Sliced so that a RAPL counter is read often enough to see each wrap.
            self._sleep(min(left, 0.25))
            self.counter.read_j()
        e1, t1, _ = self._edge()
        if e1 == e0:
            return None, f"counter not updating: {self.source} did not advance in {t1 - t0:.2f} s of idle"
        return IdleBaseline(source=self.source, idle_w=(e1 - e0) / (t1 - t0), baseline_s=t1 - t0), ""

    def measure(
        self,
        work: Callable[[], int],
        min_window_s: float = DEFAULT_MIN_WINDOW_S,
        *,
        idle: IdleBaseline | None = None,
    ) -> tuple[EnergyReading | None, str]:
        """Call ``work()`` (which returns the items it did) until at least ``min_window_s`` has
        passed and it ran at least once; (reading, "") or (None, reason).

        The idle baseline is taken first unless ``idle`` is given. ``work`` must not return before
        its device work is done (synchronise CUDA), or its tail lands outside the window.
        """
        _check_window(min_window_s)
        if idle is None:
            idle, why = self.idle_baseline(min_window_s)
            if idle is None:
                return None, why
        e0, t0, start_aligned = self._edge()
        items = calls = 0
        while True:
            done = work()
            if isinstance(done, bool) or not isinstance(done, int) or done < 0:
                raise TypeError(f"the work must return the number of items it did, not {done!r}")
            items += done
            calls += 1
            self.counter.read_j()  # sees a RAPL wrap between calls
            if self._clock() - t0 >= min_window_s:
                break
        e1, t1, end_aligned = self._edge()
        window = t1 - t0
        if e1 == e0:
            return None, f"counter not updating: {self.source} did not advance in {window:.2f} s of work"
        if items == 0:
            return None, "the work reported no items"
        gross = e1 - e0
        net = gross - idle.idle_w * window
        notes = []
        if not (start_aligned and end_aligned):
            notes.append(f"counter did not tick within {self.edge_timeout_s:g} s at an edge: window edges unaligned")
        if net < 0:
            notes.append("work drew no more than idle: net energy is within the counter's noise")
        return (
            EnergyReading(
                source=self.source,
                gross_j=gross,
                idle_w=idle.idle_w,
                window_s=window,
                baseline_s=idle.baseline_s,
                items=items,
                calls=calls,
                net_j=net,
                j_per_1000=net / items * 1000.0,
                note="; ".join(notes),
            ),
            "",
        )


def _check_window(min_window_s: float) -> None:
    if not min_window_s > 0:
        raise ValueError(f"the minimum window must be positive, not {min_window_s!r}")


def find_meter(
    device: str,
    *,
    nvml: Any = "auto",
    powercap_root: str | os.PathLike[str] = DEFAULT_POWERCAP_ROOT,
    gpu_indices: Sequence[int] | None = None,
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[EnergyMeter | None, str]:
    """The energy meter for a torch device string, or (None, the one-line reason).

    "cpu" reads RAPL; "cuda"/"cuda:N" reads NVML for the GPU that device maps to (through
    CUDA_VISIBLE_DEVICES), or for ``gpu_indices`` (NVML indices) when a model spans several.
    A GPU reading is the GPU's energy only: the host CPU's share is not in it.
    """
    if device == "cpu":
        rapl, why = RaplEnergyCounter.open(powercap_root)
        if rapl is None:
            return None, f"no energy counter for cpu: RAPL not readable ({why})"
        return EnergyMeter(rapl, clock=clock, sleep=sleep), ""
    if device == "cuda" or device.startswith("cuda:"):
        indices = list(gpu_indices) if gpu_indices is not None else [cuda_index_for_nvml(device)]
        gpu, why = NvmlEnergyCounter.open(nvml, indices)
        if gpu is None:
            return None, f"no energy counter for {device}: {why}"
        return EnergyMeter(gpu, clock=clock, sleep=sleep), ""
    return None, f"no energy counter for device {device!r}: only cpu (RAPL) and cuda (NVML) have one"
