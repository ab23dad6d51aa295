"""Load on an embedding server: a fixed number of requests or a duration, at a given concurrency
(closed loop: each worker sends its next request when the last one is answered) or at a given
arrival rate (open loop: Poisson arrivals, as vLLM's `bench serve` sends them). Errors are counted
by kind and the run goes on until more than --max-errors have failed.

Before the load, the same client drives a trivial local endpoint for a moment at the same
concurrency: what the client alone can send is reported beside what the server sustained, so a
client-bound result cannot pass for a server's.

Every wait here (for the next arrival, for answers, for the probe) ends at the run's deadline and
is cut short by a stop within POLL_S. Neither a stop nor the end of --duration waits for requests
still in flight: they were sent and are not counted as done, and their threads (daemons) end with
their request, within --timeout, counting nothing. No thread lets an exception out: a request that
fails is counted by kind, and anything else becomes the run's error.
"""

from __future__ import annotations

import itertools
import json
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

from ..context import RunContext
from ..errors import UserError
from ..events import Note, Result
from ..files import read_lines
from ..plan import MAX_LOAD_WORKERS as MAX_WORKERS
from ..plan import LoadPlan
from ..results import ClientCeiling, LoadResult
from ..stats import LatencySeries
from ..targets import Target
from .encode import sample_corpus

if TYPE_CHECKING:
    from ..http_target import HttpTarget, RequestOutcome

T = TypeVar("T")

# How long a wait goes before it looks at the run's cancel flag again: a stop is seen well within a
# second, and twenty looks a second cost nothing beside a request.
POLL_S = 0.05
# Threads of the client-ceiling probe. The client is Python threads under one lock: its ceiling is
# reached with a few dozen, and more would only contend (the probe's server shares this process).
CEILING_THREADS = 64
# The probe server's listen backlog. http.server listens with 5: dozens of threads connecting at
# once overflow it and the kernel resets some of the connections. The kernel caps it (somaxconn).
CEILING_BACKLOG = 1024
# How long the probe's threads may take to finish the request each has out at the end, so that the
# connections close between requests rather than under one; the local endpoint answers in milliseconds.
CEILING_GRACE_S = 1.0


def _wait(until: float | None, wake: threading.Event, cancel: threading.Event) -> None:
    """Return once ``wake`` or ``cancel`` is set, or perf_counter() reaches ``until`` (None: no limit).

    ``wake`` (this workload's own) ends the wait at once; ``cancel`` is the runner's and is looked at
    every POLL_S, so that a stop never waits for an arrival, an answer or the end of a duration."""
    while not wake.is_set() and not cancel.is_set():
        left = POLL_S if until is None else min(POLL_S, until - time.perf_counter())
        if left <= 0:
            return
        wake.wait(left)


def _quiet(request: object, client_address: object) -> None:
    return


def _stoppable(ctx: RunContext, fn: Callable[[], T], name: str) -> T:
    """``fn()`` on a daemon thread, waited for unless the run is stopped (RunCancelled): a server that
    does not answer then holds that thread until --timeout, not the run. Its exception is raised here."""
    done = threading.Event()
    box: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            box.append((True, fn()))
        except BaseException as exc:  # to the run thread, never to the thread excepthook
            box.append((False, exc))
        finally:
            done.set()

    threading.Thread(target=run, name=name, daemon=True).start()
    _wait(None, done, ctx.cancel_event)
    ctx.check_cancel()
    ok, value = box[0]
    if not ok:
        raise value
    return cast(T, value)


class _Load:
    """What the load's threads share: the tallies (aggregates, not a list per request: an hour of
    load must not grow the client's memory), the first fault, and whether the load is over."""

    def __init__(self, ctx: RunContext, target: HttpTarget, threads: int) -> None:
        self.ctx, self.target = ctx, target
        self.lock = threading.Lock()
        self.latency = LatencySeries()
        self.sent = self.done = self.ok = self.items = self.tokens = 0
        self.tokens_known = True
        self.kinds: dict[str, int] = {}
        self.fault: BaseException | None = None
        self.live = threads
        self.wake = threading.Event()  # the run thread looks again: a fault, or every worker has left
        self.over = threading.Event()  # the load has ended: nothing more is sent or counted

    def going(self) -> bool:
        return self.fault is None and not self.over.is_set() and not self.ctx.cancel_event.is_set()

    def begin(self) -> bool:
        """Whether a request may go out now; it is counted as sent if so."""
        with self.lock:
            if not self.going():
                return False
            self.sent += 1
            return True

    def record(self, index: int, outcome: RequestOutcome) -> None:
        from ..http_target import ServerFault

        target = self.target
        with self.lock:
            if self.over.is_set():  # answered after the end: outside the measured window, and the run may be saved
                return
            self.ctx.emit(outcome.event(self.ctx, 0, index, False, "load"))
            self.done += 1
            if not outcome.error_kind:
                self.ok += 1
                self.items += outcome.items
                self.latency.add(outcome.duration_ns / 1e9)
                if outcome.tokens is None:
                    self.tokens_known = False
                else:
                    self.tokens += outcome.tokens
                return
            kind = outcome.error_kind
            self.kinds[kind] = self.kinds.get(kind, 0) + 1
            target.errors += 1
            target.errors_by_kind[kind] = target.errors_by_kind.get(kind, 0) + 1
            if target.errors > target.spec.max_errors and self.fault is None:
                self.fault = ServerFault(f"{target.errors} requests failed ({kind}: {outcome.error}), "
                                         f"more than --max-errors {target.spec.max_errors}; the load stopped")
                self.wake.set()

    def fail(self, exc: BaseException) -> None:
        """A worker's failure that is no request's: the run's error (the first one), said once."""
        with self.lock:
            if self.fault is None and not self.over.is_set():
                self.fault = exc
        self.wake.set()

    def leave(self) -> None:
        with self.lock:
            self.live -= 1
            if self.live == 0:
                self.wake.set()

    def end(self) -> float:
        """Close the measured window; the moment it closed (perf_counter)."""
        with self.lock:
            self.over.set()
            return time.perf_counter()

    def thread(self, body: Callable[[], None], name: str) -> threading.Thread:
        def run() -> None:
            try:
                body()
            except BaseException as exc:  # never to the thread excepthook: a traceback per thread on stderr
                self.fail(exc)
            finally:
                self.leave()

        return threading.Thread(target=run, name=name, daemon=True)


class LoadWorkload:
    name = "load"
    probe_s = 1.5  # how long the client-ceiling probe runs

    def __init__(self, plan: LoadPlan) -> None:
        self.plan = plan
        self.requests, self.duration_s = plan.requests, plan.duration_s
        self.concurrency, self.rate, self.batch = plan.concurrency, plan.rate, plan.batch
        self._texts: list[str] = []

    def prepare(self) -> None:
        self._texts = sample_corpus() if self.plan.input is None else read_lines(self.plan.input)

    def prompt_names(self) -> list[str]:
        return [self.plan.prompt_name] if self.plan.prompt_name else []

    def settings(self) -> dict[str, Any]:
        p = self.plan
        return {
            "name": self.name,
            "requests": p.requests,
            "duration_s": p.duration_s,
            "concurrency": p.concurrency,
            "rate_per_s": p.rate,
            "arrivals": "poisson" if p.rate is not None else "closed loop",
            "texts_per_request": p.batch,
            "input": p.input if p.input is not None else "built-in sample corpus",
            "prompt_name": p.prompt_name,
        }

    def run(self, ctx: RunContext, target: Target) -> None:
        from ..http_target import HttpTarget

        if not isinstance(target, HttpTarget):
            raise UserError("the load workload drives a server: give --server URL")
        if not self._texts:
            self.prepare()
        prefix = target.prompt_text("plain", self.plan.prompt_name, None) or ""
        texts = [prefix + t for t in self._texts]
        workers = self.concurrency or min(MAX_WORKERS, max(8, int((self.rate or 1) * 2)))
        # The probe sends requests of the load's own shape (K texts each): a ceiling measured with
        # one text a request would say nothing about a load that sends K.
        probe = client_ceiling(workers, self.probe_s, self.batch, ctx.cancel_event)
        ctx.check_cancel()
        ceiling = probe.ceiling
        ctx.emit(Result(t_ns=ctx.now(), result=ceiling))
        if probe.failed:
            ctx.emit(Note(t_ns=ctx.now(), level="warning", text=probe.note()))

        with ctx.phase("warm-up", "1 request"):
            self._warm_up(ctx, target, texts[: self.batch])

        def next_chunk(i: int) -> list[str]:
            start = (i * self.batch) % len(texts)
            return [texts[(start + k) % len(texts)] for k in range(self.batch)]

        load = _Load(ctx, target, workers)

        def one(i: int) -> None:
            if load.begin():
                load.record(i, target.try_request(next_chunk(i)))

        detail = f"concurrency {self.concurrency}" if self.concurrency else f"Poisson {self.rate:g}/s"
        with ctx.phase("load", detail):
            t0 = time.perf_counter()
            deadline = None if self.requests is not None else t0 + (self.duration_s or 0.0)
            jobs: queue.SimpleQueue[int | None] = queue.SimpleQueue()

            def more(i: int) -> bool:
                if not load.going():
                    return False
                return i < self.requests if self.requests is not None else time.perf_counter() < (deadline or 0.0)

            counter = itertools.count()
            counter_lock = threading.Lock()

            def closed_loop() -> None:
                while True:
                    with counter_lock:
                        i = next(counter)
                    if not more(i):
                        return
                    one(i)

            def open_loop() -> None:
                while (i := jobs.get()) is not None:
                    one(i)

            try:
                try:
                    for k in range(workers):
                        load.thread(closed_loop if self.concurrency else open_loop, f"embprof-load-{k}").start()
                    if not self.concurrency:
                        self._arrivals(ctx, load, jobs, t0, deadline)
                finally:
                    for _ in range(0 if self.concurrency else workers):
                        jobs.put(None)  # after the arrivals still queued: each worker leaves once the queue is drained
                # Until every worker has left (a count of requests), the deadline (a duration), a fault or a stop.
                _wait(deadline, load.wake, ctx.cancel_event)
            finally:
                # Also when this thread fails (a thread that cannot start): the workers started send nothing more.
                wall = load.end() - t0
        achieved = load.done / wall if wall > 0 else None
        ceiling_rate = ceiling.requests_per_s
        share = 100.0 * achieved / ceiling_rate if achieved is not None and ceiling_rate else None
        result = LoadResult(
            requests_sent=load.sent,
            requests_done=load.done,
            ok=load.ok,
            errors=sum(load.kinds.values()),
            errors_by_kind=dict(load.kinds),
            wall_s=wall,
            requests_per_s=load.ok / wall if wall > 0 else None,
            items_per_s=load.items / wall if wall > 0 else None,
            tokens_per_s=load.tokens / wall if wall > 0 and load.tokens_known and load.ok else None,
            latency=load.latency.stats(),
            client_ceiling_per_s=ceiling_rate,
            client_share_percent=share,
        )
        # Kept whatever ended the load (a stop, a fault): what was measured until then is the run's.
        ctx.emit(Result(t_ns=ctx.now(), result=result))
        if load.sent == 0 and self.rate is not None and deadline is not None and load.fault is None and not ctx.cancel_event.is_set():
            ctx.emit(Note(t_ns=ctx.now(), level="warning",
                          text=f"no request was sent: at --rate {self.rate:g} the first arrival fell after the {self.duration_s:g} s "
                               f"of --duration (arrivals are {1 / self.rate:g} s apart on average)"))
        in_flight = load.sent - load.done
        if in_flight > 0:
            ctx.emit(Note(t_ns=ctx.now(),
                          text=f"{in_flight} request{'s were' if in_flight > 1 else ' was'} still in flight when the load ended: "
                               "counted as sent, not as done (the end of a duration, a fault or a stop does not wait for answers)"))
        if share is not None and share > 50:
            ctx.emit(Note(t_ns=ctx.now(), level="warning",
                          text=f"the load reached {share:.0f} % of what this client alone can send: it may be client-bound"))
        ctx.check_cancel()
        if load.fault is not None:
            raise load.fault

    def _arrivals(self, ctx: RunContext, load: _Load, jobs: queue.SimpleQueue[int | None], t0: float, deadline: float | None) -> None:
        """Queue each request at its Poisson arrival time, until the count is sent, the deadline, a fault or a stop.
        Arrivals that find every worker busy wait in the queue, as an open loop's arrivals must."""
        rnd = random.Random(self.plan.seed)
        rate = self.rate or 1.0
        next_t = t0
        i = 0
        while self.requests is None or i < self.requests:
            next_t += rnd.expovariate(rate)
            # Never past the deadline: at a low rate the next arrival can be hours away.
            until = next_t if deadline is None else min(next_t, deadline)
            _wait(until, load.wake, ctx.cancel_event)
            if not load.going() or (deadline is not None and next_t >= deadline):
                return
            jobs.put(i)
            i += 1

    def _warm_up(self, ctx: RunContext, target: HttpTarget, chunk: list[str]) -> None:
        """One request that is not counted, retried while --max-errors allows (as HttpTarget.request does); each
        try on a thread of its own, so that a stop does not wait for a server that does not answer."""
        from ..http_target import ServerFault

        tries = 0
        while True:
            outcome = _stoppable(ctx, lambda: target.try_request(chunk), "embprof-load-warm-up")
            ctx.emit(outcome.event(ctx, 0, tries, True, "load"))
            tries += 1
            if not outcome.error_kind:
                return
            target.errors += 1
            target.errors_by_kind[outcome.error_kind] = target.errors_by_kind.get(outcome.error_kind, 0) + 1
            limit = target.spec.max_errors
            if target.errors > limit:
                raise ServerFault(f"request failed ({outcome.error_kind}): {outcome.error}" + (
                    f"; {target.errors} failed requests, more than --max-errors {limit}" if limit else ""))


@dataclass(frozen=True)
class CeilingProbe:
    """The client-ceiling step: what it measured, and its requests to the local endpoint that failed."""

    ceiling: ClientCeiling
    failed: dict[str, int]
    first_failure: str  # "kind: reason" of the first that failed; "" when none did

    def note(self) -> str:
        n = sum(self.failed.values())
        if self.ceiling.requests_per_s is None:
            return f"the client's own ceiling could not be measured: its {n} requests to a local endpoint all failed ({self.first_failure})"
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.failed.items()))
        return (f"{n} of the client-ceiling probe's requests to a local endpoint failed ({kinds}; the first: {self.first_failure}); "
                "the ceiling counts those answered")


def client_ceiling(workers: int, seconds: float, texts_per_request: int = 1, cancel: threading.Event | None = None) -> CeilingProbe:
    """What this client alone can send: the same httpx client and threads against a trivial
    local endpoint that answers a fixed embedding at once, for ``seconds`` or until ``cancel``.
    A request that fails is counted by kind; any other failure of a thread is raised here."""
    import httpx

    from ..trivial_server import TrivialEmbeddingServer

    cancel = cancel if cancel is not None else threading.Event()
    n = max(1, min(workers, CEILING_THREADS))
    body = json.dumps({"content": ["x"] * texts_per_request, "embd_normalize": 2}).encode()
    lock = threading.Lock()
    wake, over, gone = threading.Event(), threading.Event(), threading.Event()
    answered = [0]
    live = [n]
    failed: dict[str, int] = {}
    first_failure = [""]
    unexpected: list[BaseException] = []

    server = TrivialEmbeddingServer()
    server.httpd.socket.listen(CEILING_BACKLOG)  # listen() again on the same socket only sets the backlog
    # A connection the client dropped (a stop, a request still out after the grace) is no news: http.server
    # would print a traceback for each on stderr.
    server.httpd.handle_error = _quiet  # type: ignore[method-assign]
    # Served here rather than by the server's own thread: a short poll, because shutting down waits for one.
    serving = threading.Thread(target=server.httpd.serve_forever, kwargs={"poll_interval": POLL_S}, name="embprof-ceiling-server",
                               daemon=True)
    serving.start()
    try:
        with httpx.Client(base_url=server.url, limits=httpx.Limits(max_connections=256, max_keepalive_connections=64)) as client:

            def post() -> tuple[str, str]:
                """One request: its failure's kind and reason, or ("", "")."""
                try:
                    r = client.post("/embedding", content=body, headers={"Content-Type": "application/json"})
                except httpx.HTTPError as exc:  # refused, reset, timed out: this request's failure
                    kind = "timeout" if isinstance(exc, httpx.TimeoutException) else "connection"
                    return kind, (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
                return ("", "") if 200 <= r.status_code < 300 else (f"http {r.status_code}", r.reason_phrase)

            def worker() -> None:
                try:
                    while not over.is_set() and not cancel.is_set() and time.perf_counter() < t_end:
                        kind, why = post()
                        with lock:
                            if over.is_set():
                                return
                            if not kind:
                                answered[0] += 1
                                continue
                            failed[kind] = failed.get(kind, 0) + 1
                            first_failure[0] = first_failure[0] or f"{kind}: {why}"
                except BaseException as exc:  # never to the thread excepthook; after the end (a closed client) it is no failure
                    with lock:
                        if not over.is_set():
                            unexpected.append(exc)
                    wake.set()
                finally:
                    with lock:
                        live[0] -= 1
                        if live[0] == 0:
                            gone.set()
                            wake.set()

            threads = [threading.Thread(target=worker, name=f"embprof-ceiling-{k}", daemon=True) for k in range(n)]
            t0 = time.perf_counter()
            t_end = t0 + seconds
            for th in threads:
                th.start()
            # The answers counted are those before t_end: a request still out then is not waited for.
            _wait(t_end, wake, cancel)
            with lock:
                over.set()
                wall = time.perf_counter() - t0
                count = answered[0]
            _wait(time.perf_counter() + CEILING_GRACE_S, gone, cancel)
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
    if unexpected:
        raise unexpected[0]
    ceiling = ClientCeiling(requests_per_s=count / wall if wall > 0 and count else None, workers=n, seconds=wall,
                            texts_per_request=texts_per_request)
    return CeilingProbe(ceiling=ceiling, failed=dict(failed), first_failure=first_failure[0])
