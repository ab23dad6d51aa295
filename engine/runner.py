"""The runner: executes one workload against one target on its own thread, emitting events."""

from __future__ import annotations

import resource
import sys
import threading
import traceback
import uuid
from datetime import datetime, timezone
from typing import Any

from .context import RunContext
from .crash import is_out_of_memory
from .errors import PartialFailure, RunCancelled, UserError
from .events import MIB, Clock, ErrorEvent, EventBus, Note, Result, RunFinished, RunStarted, RunStatus, Subscriber
from .plan import RunPlan
from .results import KernelCounters, SamplerFacts
from .sampler import Sampler, cuda_index_for_nvml
from .targets import Target
from .workloads import Workload
from .text import first_line, one_line


def kernel_counters(torch_carry: dict[str, float] | None = None, hwm_mib: float | None = None) -> KernelCounters:
    """High-water marks the kernel and torch keep themselves: they see peaks between samples.

    ``torch_carry``: torch's peaks from before a workload reset its counters (``RunContext.torch_peak_carry``).
    ``hwm_mib``: the run's RSS peak kept across the resets of the kernel's mark at each phase (``RunContext.highwater``):
    a reset clears ``ru_maxrss`` too."""
    carry = torch_carry or {}
    usage = resource.getrusage(resource.RUSAGE_SELF)
    # ru_maxrss is KiB on Linux and bytes on macOS.
    maxrss_bytes = usage.ru_maxrss if sys.platform == "darwin" else usage.ru_maxrss * 1024
    out: dict[str, Any] = {"ru_maxrss_mib": max(maxrss_bytes / MIB, hwm_mib or 0.0)}
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_initialized():
                out["torch_max_memory_allocated_mib"] = max(torch.cuda.max_memory_allocated() / MIB, carry.get("allocated", 0.0))
                out["torch_max_memory_reserved_mib"] = max(torch.cuda.max_memory_reserved() / MIB, carry.get("reserved", 0.0))
        except Exception:
            pass
    return KernelCounters(**out)


class Runner:
    """One run: target load + workload, sampled from start to end.

    ``start()`` returns at once; every fact arrives through the subscribers. ``cancel()`` asks the
    workload to stop at the next batch boundary, and a server's request under way ends at once (within
    the HTTP target's STOP_POLL_S); what was measured until then is kept.
    """

    def __init__(
        self,
        target: Target,
        workload: Workload,
        *,
        plan: RunPlan | None = None,
        sample_hz: float = 10.0,
        subscribers: list[Subscriber] | None = None,
        nvml: Any = "auto",
    ) -> None:
        self.target = target
        self.workload = workload
        self.plan = plan
        self.sample_hz = plan.recording.sample_hz if plan is not None else sample_hz
        self.bus = EventBus(Clock())
        for sub in subscribers or []:
            self.bus.subscribe(sub)
        self.run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
        self.cancel_event = threading.Event()
        self.cancel_reason = "the user"
        self.status: RunStatus | None = None
        self.error: ErrorEvent | None = None
        self._nvml = nvml
        self._thread: threading.Thread | None = None
        self._done = threading.Event()
        self.sampler: Sampler | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="embprof-runner", daemon=True)
        self._thread.start()

    def cancel(self, reason: str = "the user") -> None:
        """Stop at the next batch boundary (a server's request under way ends at once); ``reason`` (who stopped it:
        "the user", "SIGTERM") goes into the snapshot."""
        if not self.cancel_event.is_set():
            self.cancel_reason = reason
        self.cancel_event.set()

    def wait(self, timeout: float | None = None) -> bool:
        """True once the run has finished and every event is out.

        An Event rather than Thread.join: a join interrupted by Ctrl-C can leave CPython (before
        3.13) believing the thread has ended while it is still writing its last events.
        """
        return self._done.wait(timeout)

    def join(self) -> None:
        """Wait for the run and for its thread: quitting never leaves a thread behind."""
        self._done.wait()
        if self._thread is not None:
            self._thread.join()

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    def run_sync(self) -> RunStatus:
        self.start()
        self.join()
        assert self.status is not None
        return self.status

    def _gpu_index(self) -> int | None:
        caps = self.target.capabilities
        device = self.target.device or ""
        if caps.local_device and (device == "auto" or device.startswith("cuda")):
            return cuda_index_for_nvml(device)
        if caps.server_process and self.target.server_pid is not None:
            return cuda_index_for_nvml("cuda")  # a local server's GPU memory, if it has one
        return None

    def run(self) -> None:
        """Run on the calling thread (a UI's worker thread); ``start()`` runs it on a thread of its own."""
        bus = self.bus
        clock = bus.clock
        try:
            sampler = Sampler(bus, self.sample_hz, gpu_index=self._gpu_index(), nvml=self._nvml, server_pid=self.target.server_pid)
            self.sampler = sampler
            bus.subscribe(sampler)
            ctx = RunContext(bus, self.cancel_event)
            bus.publish(
                RunStarted(
                    t_ns=clock.now(),
                    run_id=self.run_id,
                    started_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    target=self.target.describe(),
                    workload=self.workload.facts(),
                    sample_hz=self.sample_hz,
                    plan=self.plan,
                )
            )
        except BaseException:
            # Before the run began there is nothing to save; whoever waits for it is still released (join), and the
            # failure goes on to the thread's own report.
            self.status = "failed"
            self._done.set()
            raise
        status: RunStatus = "complete"
        sampler.start()
        try:
            self.target.load(ctx)
            bus.publish(Result(t_ns=clock.now(), result=self.target.describe()))
            self.workload.run(ctx, self.target)
        except RunCancelled:
            status = "incomplete"
            self._error(ctx, "cancelled", f"stopped by {self.cancel_reason}; what was measured until then is kept")
        except UserError as exc:
            status = "failed"
            self._error(ctx, "input", str(exc))
        except PartialFailure as exc:
            status = "failed"
            self._error(ctx, "runtime", str(exc))
        except BaseException as exc:  # the run must end with a snapshot whatever happened
            status = "failed"
            kind = "oom" if is_out_of_memory(exc) else "runtime"
            first = first_line(exc)
            self._error(ctx, kind, f"{exc.__class__.__name__}: {first}", traceback.format_exc(limit=8))
        finally:
            try:
                self.target.finish(ctx)
            except Exception as exc:  # the run's record stands without the target's end facts; a note says they are missing
                self._finish_failed(ctx, exc)
            sampler.stop()
            try:
                self.target.close()
            except Exception:
                pass
            self.status = status
            try:
                bus.publish(
                    Result(
                        t_ns=clock.now(),
                        result=SamplerFacts(
                            hz=self.sample_hz,
                            samples=sampler.samples_taken,
                            cpu_time_s=sampler.cpu_time_ns / 1e9,
                            cpu_percent_of_one_core=100.0 * sampler.cpu_time_ns / max(1, clock.now()),
                            host_only_reason=sampler.host_only_reason,
                        ),
                    )
                )
                bus.publish(Result(t_ns=clock.now(), result=kernel_counters(ctx.torch_peak_carry, ctx.highwater.whole_peak())))
                bus.publish(RunFinished(t_ns=clock.now(), status=status, duration_ns=clock.now()))
            finally:
                # Whatever failed above, whoever waits for the run is released: a process must not wait for ever.
                self._done.set()

    def _finish_failed(self, ctx: RunContext, exc: Exception) -> None:
        """A target whose end of run failed: what it would have added from there on (a server's end counters) is
        missing, and the run's notes say so and why (a target's own redaction first: the failure may quote a server)."""
        text = f"{exc.__class__.__name__}: {first_line(exc)}"
        redact = getattr(self.target, "redact", None)
        if callable(redact):
            text = str(redact(text))
        ctx.emit(Note(t_ns=ctx.now(), level="warning",
                      text=f"the target's end of the run failed, so what it adds then (a server's end counters) may be missing: "
                           f"{one_line(text)[:300]}"))

    def _error(self, ctx: RunContext, kind: str, message: str, detail: str = "") -> None:
        event = ErrorEvent(t_ns=ctx.now(), error_kind=kind, message=message, phase=ctx.failed_phase or ctx.phase_name, detail=detail)  # type: ignore[arg-type]
        self.error = event
        ctx.emit(event)
