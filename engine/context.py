"""What a target and a workload see of the run: the clock, the event stream, phases, cancellation."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import RunCancelled
from .events import Event, EventBus, PhaseEnded, PhaseStarted
from .highwater import HighWater


class RunContext:
    def __init__(self, bus: EventBus, cancel: threading.Event | None = None) -> None:
        self.bus = bus
        self.cancel_event = cancel or threading.Event()
        self._phase_ids = itertools.count(1)
        self._call_ids = itertools.count(0)
        self._phase_stack: list[tuple[int, str]] = []
        self.failed_phase = ""  # the innermost phase an exception left, for the error event
        # torch's CUDA peak counters before a workload reset them (a training step's own peak): the
        # run's high-water marks are the larger of these and the counters at the end.
        self.torch_peak_carry: dict[str, float] = {}
        # The kernel's exact RSS peak of each phase, and the run's as their running maximum (highwater.py).
        self.highwater = HighWater()

    def now(self) -> int:
        return self.bus.clock.now()

    def emit(self, event: Event) -> None:
        self.bus.publish(event)

    def check_cancel(self) -> None:
        if self.cancel_event.is_set():
            raise RunCancelled()

    def next_call_index(self) -> int:
        return next(self._call_ids)

    @property
    def phase_id(self) -> int:
        return self._phase_stack[-1][0] if self._phase_stack else 0

    @property
    def phase_name(self) -> str:
        return self._phase_stack[-1][1] if self._phase_stack else ""

    @contextmanager
    def phase(self, name: str, detail: str = "") -> Iterator[int]:
        phase_id = next(self._phase_ids)
        self.highwater.start_phase()
        start = self.now()
        self.emit(PhaseStarted(t_ns=start, phase_id=phase_id, name=name, detail=detail, parent_id=self.phase_id))
        self._phase_stack.append((phase_id, name))
        ok = False
        try:
            yield phase_id
            ok = True
        finally:
            self._phase_stack.pop()
            if not ok and not self.failed_phase:
                self.failed_phase = name
            end = self.now()
            hwm = self.highwater.end_phase()
            self.emit(PhaseEnded(t_ns=end, phase_id=phase_id, name=name, duration_ns=end - start, ok=ok, rss_hwm_mib=hwm))
