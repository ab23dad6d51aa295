"""Load on an embedding server: a fixed number of requests or a duration, at a given concurrency
(closed loop: each connection sends its next request when the last one is answered) or at a given
arrival rate (open loop: Poisson arrivals, as vLLM's `bench serve` sends them). Errors are counted
by kind and the run goes on until more than --max-errors have failed.

The requests are sent by load processes (engine/loadgen.py): asynchronous clients, one event loop
each, whose every request's times come back and are folded here one by one. In the open loop a
request's latency runs from when it was due, so a server that falls behind shows in every request
that waited (no coordinated omission), and how late the sends were is reported beside it.

Before the load, the same client drives a fast local endpoint for a moment at the same concurrency,
processes and request shape: what the client alone can send is reported beside what the server
sustained, and a load above half of it is flagged as client-bound.

Every wait here ends at the run's deadline and is cut short by a stop within POLL_S. Neither a stop
nor the end of --duration waits for requests still in flight: they were sent and are not counted as
done. A load process that ends unexpectedly is the run's one error.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import orjson

from ..bounds import MAX_LOAD_WORKERS as MAX_WORKERS
from ..context import RunContext
from ..errors import UserError
from ..events import Note, RequestTimed, Result
from ..files import read_lines
from ..loadgen import LoadProcesses, ProcessSpec, Record, split
from ..plan import LoadPlan, strip_credentials
from ..results import ClientCeiling, KneeResult, KneeStep, LoadResult
from ..stats import LatencySeries
from ..targets import Target
from ..targets.http import HttpTarget, ServerFault
from ..targets.protocol import auth_header, basic_auth
from ..workload_facts import LoadFacts
from .encode import sample_corpus

T = TypeVar("T")

# How long a wait goes before it looks at the run's cancel flag again: a stop is seen well within a
# second, and twenty looks a second cost nothing beside a request.
POLL_S = 0.05
# Connections of the client-ceiling probe at most: an event loop reaches its ceiling with a few dozen;
# more only make the probe's own endpoint the bottleneck.
CEILING_CONNECTIONS = 64
# Request bodies made ahead of the load (each a distinct chunk of the input): the load sends them in turn.
MAX_BODIES = 4096
# A load above this share of the client's own ceiling may be measuring the client.
CLIENT_BOUND_PERCENT = 50.0
# The knee search: the rate grows by GROWTH while the objective holds, then the bracket is halved
# (geometrically) until its ends are within BRACKET of each other; never more than MAX_STEPS steps.
GROWTH = 1.5
BRACKET = 1.05
MAX_STEPS = 16
# The search's answer is held for this many steps' time once more: an answer that holds only for a short step is not one.
CONFIRM_STEPS = 2
# A step whose requests still waiting at its end are more than this share of those sent fell behind.
BACKLOG_SHARE = 0.10
# After a step that left requests waiting, the server still works through them (the client gave up on
# them, the server does not know): the next step starts once one request is answered about as fast as
# on an idle server again, so that no step measures the one before it.
DRAIN_LIMIT_S = 120.0


def _wait(until: float | None, wake: threading.Event, cancel: threading.Event) -> None:
    """Return once ``wake`` or ``cancel`` is set, or perf_counter() reaches ``until`` (None: no limit).

    ``wake`` (this workload's own) ends the wait at once; ``cancel`` is the runner's and is looked at
    every POLL_S, so that a stop never waits for an arrival, an answer or the end of a duration."""
    while not wake.is_set() and not cancel.is_set():
        left = POLL_S if until is None else min(POLL_S, until - time.perf_counter())
        if left <= 0:
            return
        wake.wait(left)


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


def _kinds(by_kind: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(by_kind.items()))


class _Tally:
    """The load's records, folded one by one as they arrive (aggregates, not a list per request: an hour
    of load must not grow embprof's memory; the recorder keeps a bounded share of the request events)."""

    def __init__(self, ctx: RunContext, target: HttpTarget, group: str = "load", fault_on_errors: bool = True,
                 labels: list[str] | None = None) -> None:
        self.ctx, self.target = ctx, target
        self.labels = labels or []  # each body's source: latency by source when a mix sends several
        self.mixed = len(set(self.labels)) > 1
        self.by_source: dict[str, LatencySeries] = {}
        self.group = group
        self.fault_on_errors = fault_on_errors  # the knee search counts errors against its objective instead
        self.latency = LatencySeries()
        self.lag = LatencySeries()  # open loop: how late each request was sent against its schedule
        self.split: dict[str, LatencySeries] = {}  # the server's own timings by part, and what is left
        self.split_count = 0
        self.done = self.ok = self.items = self.tokens = 0
        self.tokens_known = True
        self.kinds: dict[str, int] = {}
        self.fault: BaseException | None = None
        self.index = 0

    def add(self, rec: Record) -> None:
        target = self.target
        message = target.redact(rec.message) if rec.message else ""
        # A count the warm-up found to be characters or words (CountCheck) is no token count here either.
        tokens = rec.tokens if target.counts.usable() else None
        self.ctx.emit(RequestTimed(t_ns=self.ctx.now(), phase_id=self.ctx.phase_id, call_index=0, request_index=self.index,
                                   items=rec.items, duration_ns=rec.latency_ns, status=rec.status, bytes_sent=rec.sent_bytes,
                                   bytes_received=rec.received_bytes, tokens=tokens, error_kind=rec.kind, error=message,
                                   group=self.group, lag_ns=rec.lag_ns))
        self.index += 1
        self.done += 1
        if rec.lag_ns is not None:
            self.lag.add(max(0, rec.lag_ns) / 1e9)
        if not rec.kind:
            self.ok += 1
            self.items += rec.items
            self.latency.add(rec.latency_ns / 1e9)
            if self.mixed:
                self.by_source.setdefault(self.labels[rec.index % len(self.labels)], LatencySeries()).add(rec.latency_ns / 1e9)
            if tokens is None:
                self.tokens_known = False
            else:
                self.tokens += tokens
            if rec.server:
                self.split_count += 1
                for part, seconds in rec.server.items():
                    self.split.setdefault(part, LatencySeries()).add(seconds)
                total = rec.server.get("server_total")
                if total is not None:
                    # The rest of the request's own time (its send to its answer): the network and this client.
                    self.split.setdefault("network_client", LatencySeries()).add(max(0.0, (rec.done_ns - rec.sent_ns) / 1e9 - total))
            return
        kind = rec.kind
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        target.errors += 1
        target.errors_by_kind[kind] = target.errors_by_kind.get(kind, 0) + 1
        if self.fault_on_errors and target.errors > target.spec.max_errors and self.fault is None:
            self.fault = ServerFault(f"{target.errors} requests failed ({kind}: {message}), "
                                     f"more than --max-errors {target.spec.max_errors}; the load stopped")


@dataclass(frozen=True)
class Shape:
    """What the load sends: the request bodies in turn, to one path, and how the processes share it."""

    path: str
    bodies: list[str]
    items: list[int]
    processes: int
    first: list[str]  # the texts of the first body (the warm-up sends them)
    labels: list[str]  # each body's source ("mixed" for a body that holds texts of several)


class LoadWorkload:
    name = "load"
    probe_s = 1.0  # how long the client-ceiling probe runs (an event loop is at its pace within milliseconds)

    def __init__(self, plan: LoadPlan) -> None:
        self.plan = plan
        self.requests, self.duration_s = plan.requests, plan.duration_s
        self.concurrency, self.rate, self.batch = plan.concurrency, plan.rate, plan.batch
        self._texts: list[str] = []
        self._mix_files: dict[str, list[str]] = {}

    def prepare(self) -> None:
        p = self.plan
        self._texts = read_lines(p.input) if p.input is not None else sample_corpus()
        # Every file of a mix is read now: a missing one is one sentence before anything is sent.
        self._mix_files = {src: read_lines(src) for src, _ in p.mix if not src.startswith("tokens=")}

    def _texts_of_tokens(self, ctx: RunContext, target: HttpTarget, n: int) -> list[str]:
        """32 different texts of about ``n`` tokens, cut from the sample corpus's words: counted by the server's own
        tokenizer where it has one (llama.cpp's /tokenize), else estimated at 1.3 tokens a word, and said so."""
        words = [w for line in sample_corpus() for w in line.split() if w.isascii()]
        prefix = target.prompt_text("plain", self.plan.prompt_name, None) or ""

        def text(count: int, k: int = 0) -> str:
            return " ".join(words[(k * 7 + j) % len(words)] for j in range(count))

        count = max(1, round(n / 1.3))
        counted = None
        for _ in range(4):
            lengths = target.token_lengths([text(count)], prefix or None)
            if not lengths:
                break
            counted = lengths[0]
            if counted == n:
                break
            count = max(1, round(count * n / max(1, counted)))
        how = (f"{counted} tokens by the server's tokenizer (with the prompt and special tokens)" if counted is not None else
               f"about {n} tokens, estimated at 1.3 tokens a word: the server has no tokenizer endpoint")
        ctx.emit(Note(t_ns=ctx.now(), text=f"texts of {n} tokens: {count} words each, {how}"))
        return [text(count, k) for k in range(32)]

    def _sources(self, ctx: RunContext, target: HttpTarget) -> list[tuple[str, list[str], float]]:
        """(label, texts, share) of each source of the texts sent."""
        p = self.plan
        if p.mix:
            out = []
            for src, share in p.mix:
                if src.startswith("tokens="):
                    n = int(src.removeprefix("tokens="))
                    out.append((f"{n} tokens", self._texts_of_tokens(ctx, target, n), share))
                else:
                    out.append((Path(src).name or src, self._mix_files[src], share))
            return out
        if p.text_tokens is not None:
            return [(f"{p.text_tokens} tokens", self._texts_of_tokens(ctx, target, p.text_tokens), 1.0)]
        return [(Path(p.input).name if p.input else "sample corpus", self._texts, 1.0)]

    def prompt_names(self) -> list[str]:
        return [self.plan.prompt_name] if self.plan.prompt_name else []

    def facts(self) -> LoadFacts:
        p = self.plan
        return LoadFacts(
            input=p.input if p.input is not None else None if (p.mix or p.text_tokens) else "built-in sample corpus",
            arrivals="poisson" if p.rate is not None or p.find_knee else "closed loop",
            latency_from="when each request was due" if p.rate is not None else "each request's send",
        )

    def _shape(self, ctx: RunContext, target: HttpTarget) -> Shape:
        prefix = target.prompt_text("plain", self.plan.prompt_name, None) or ""
        sources = self._sources(ctx, target)
        bodies, items, chunks, labels = [], [], [], []
        path = "/embedding"
        if len(sources) == 1:  # one source: its texts in turn, K to a request
            label, texts, _ = sources[0]
            texts = [prefix + t for t in texts]
            for i in range(min(MAX_BODIES, len(texts))):
                start = (i * self.batch) % len(texts)
                chunks.append([texts[(start + k) % len(texts)] for k in range(self.batch)])
                labels.append(label)
        else:  # a mix: each text's source drawn in the stated shares (seeded: the same run sends the same requests)
            rnd = random.Random(self.plan.seed)
            cursors = [0] * len(sources)
            weights = [share for _, _, share in sources]
            for _ in range(MAX_BODIES):
                chunk, used = [], set()
                for _ in range(self.batch):
                    j = rnd.choices(range(len(sources)), weights)[0]
                    texts = sources[j][1]
                    chunk.append(prefix + texts[cursors[j] % len(texts)])
                    cursors[j] += 1
                    used.add(sources[j][0])
                chunks.append(chunk)
                labels.append(used.pop() if len(used) == 1 else "mixed")
        for chunk in chunks:
            path, body = target.payload(chunk)
            bodies.append(orjson.dumps(body).decode("utf-8"))
            items.append(len(chunk))
        return Shape(path, bodies, items, self.plan.processes, chunks[0], labels)

    def _specs(self, target: HttpTarget, shape: Shape, workers: int, *, concurrency: int | None, rate: float | None,
               requests: int | None, duration_s: float | None, seed: int, records: str | None) -> list[ProcessSpec]:
        headers = auth_header(target.spec)
        n = shape.processes
        shares = split(concurrency, n) if concurrency else split(workers, n)
        counts = split(requests, n)
        return [ProcessSpec(base_url=strip_credentials(target.base), path=shape.path, bodies=shape.bodies, items=shape.items,
                            api=target.api, concurrency=max(1, shares[k] or 1), rate=None if rate is None else rate / n,
                            seed=seed * 1000 + k, requests=counts[k], duration_s=duration_s, timeout_s=target.spec.timeout_s,
                            headers=headers, basic_auth=basic_auth(target.spec), index=k,
                            records_file=None if records is None else f"{records}/process-{k + 1}.jsonl")
                for k in range(n)]

    def run(self, ctx: RunContext, target: Target) -> None:
        if not isinstance(target, HttpTarget):
            raise UserError("the load workload drives a server: give --server URL")
        if not self._texts:
            self.prepare()
        if self.plan.records is not None:
            from ..files import ensure_writable_dir

            ensure_writable_dir(Path(self.plan.records), "--records folder")
            Path(self.plan.records).mkdir(parents=True, exist_ok=True)  # the check creates nothing; each load process writes a file here
        shape = self._shape(ctx, target)
        # Open loop: connections enough for the arrivals that overlap (more wait: their latency counts it).
        workers = self.concurrency or min(MAX_WORKERS, max(8, int((self.rate or 1) * 2)))
        # The probe sends requests of the load's own shape (K texts each), with its processes and connections:
        # a ceiling measured another way would say nothing about this load.
        probe = client_ceiling(workers, self.probe_s, self.batch, ctx.cancel_event, processes=shape.processes)
        ctx.check_cancel()
        ceiling = probe.ceiling
        ctx.emit(Result(t_ns=ctx.now(), result=ceiling))
        if probe.failed:
            ctx.emit(Note(t_ns=ctx.now(), level="warning", text=probe.note()))

        with ctx.phase("warm-up", "1 request"):
            self._warm_up(ctx, target, shape.first)
        # The server's own totals (llama.cpp's /metrics) cover the timed requests alone, not the warm-up.
        target.count_from_here(ctx)

        if self.plan.find_knee:
            self._find_knee(ctx, target, shape)
            return
        tally = _Tally(ctx, target, labels=shape.labels)
        detail = f"concurrency {self.concurrency}" if self.concurrency else f"Poisson {self.rate:g}/s"
        if shape.processes > 1:
            detail += f", {shape.processes} load processes"
        with ctx.phase("load", detail):
            specs = self._specs(target, shape, workers, concurrency=self.concurrency, rate=self.rate, requests=self.requests,
                                duration_s=self.duration_s, seed=self.plan.seed, records=self.plan.records)
            merged = LoadProcesses(specs).run(tally.add, lambda: ctx.cancel_event.is_set() or tally.fault is not None, POLL_S)
        wall = merged.wall_s
        achieved = tally.done / wall if wall > 0 else None
        ceiling_rate = ceiling.requests_per_s
        share = 100.0 * achieved / ceiling_rate if achieved is not None and ceiling_rate else None
        result = LoadResult(
            requests_sent=merged.sent,
            requests_done=tally.done,
            ok=tally.ok,
            errors=sum(tally.kinds.values()),
            errors_by_kind=dict(tally.kinds),
            wall_s=wall,
            requests_per_s=tally.ok / wall if wall > 0 else None,
            items_per_s=tally.items / wall if wall > 0 else None,
            tokens_per_s=tally.tokens / wall if wall > 0 and tally.tokens_known and tally.ok else None,
            latency=tally.latency.stats(),
            client_ceiling_per_s=ceiling_rate,
            client_share_percent=share,
            latency_from="due" if self.rate is not None else "send",
            send_lag=tally.lag.stats() if self.rate is not None else None,
            server_split={k: v.stats() for k, v in tally.split.items()} if tally.split else None,
            server_split_requests=tally.split_count,
            load_processes=shape.processes,
            client_bound=share is not None and share > CLIENT_BOUND_PERCENT,
            by_source={k: v.stats() for k, v in sorted(tally.by_source.items())} if tally.by_source else None,
        )
        # Kept whatever ended the load (a stop, a fault): what was measured until then is the run's.
        ctx.emit(Result(t_ns=ctx.now(), result=result))
        if merged.sent == 0 and self.rate is not None and self.duration_s is not None and tally.fault is None \
                and not merged.crashed and not ctx.cancel_event.is_set():
            ctx.emit(Note(t_ns=ctx.now(), level="warning",
                          text=f"no request was sent: at --rate {self.rate:g} the first arrival fell after the {self.duration_s:g} s "
                               f"of --duration (arrivals are {1 / self.rate:g} s apart on average)"))
        if merged.in_flight > 0:
            ctx.emit(Note(t_ns=ctx.now(),
                          text=f"{merged.in_flight} request{'s were' if merged.in_flight > 1 else ' was'} still in flight when the load "
                               "ended: counted as sent, not as done (the end of a duration, a fault or a stop does not wait for answers)"))
        if result.client_bound:
            ctx.emit(Note(t_ns=ctx.now(), level="warning",
                          text=f"the load reached {share:.0f} % of what this client alone can send: it may be client-bound"))
        if self.rate is not None and result.send_lag is not None and result.send_lag.p99_s is not None and result.send_lag.p99_s > 0.01:
            ctx.emit(Note(t_ns=ctx.now(), level="warning",
                          text=f"sends fell behind the schedule (p99 {result.send_lag.p99_s * 1e3:.1f} ms late): the latency counts "
                               "from when each request was due, so the wait is in it"))
        ctx.check_cancel()
        if merged.crashed:
            raise RuntimeError(merged.crashed[0])
        if tally.fault is not None:
            raise tally.fault

    # -- the knee ------------------------------------------------------------------------------------------
    def _step(self, ctx: RunContext, target: HttpTarget, shape: Shape, *, rate: float | None, seconds: float, group: str,
              index: int) -> tuple[_Tally, Any]:
        """One open-loop step (or, with rate None, one connection's closed loop): its requests folded, as a load's are."""
        tally = _Tally(ctx, target, group=group, fault_on_errors=False)
        workers = 1 if rate is None else min(MAX_WORKERS, max(8, int(rate * 2)))
        records = None if self.plan.records is None else f"{self.plan.records}/step-{index}"
        if records is not None:
            Path(records).mkdir(parents=True, exist_ok=True)
        specs = self._specs(target, shape, workers, concurrency=1 if rate is None else None, rate=rate, requests=None, duration_s=seconds,
                            seed=self.plan.seed + index, records=records)
        merged = LoadProcesses(specs).run(tally.add, ctx.cancel_event.is_set, POLL_S)
        if merged.crashed:
            raise RuntimeError(merged.crashed[0])
        return tally, merged

    def _find_knee(self, ctx: RunContext, target: HttpTarget, shape: Shape) -> None:
        """Raise an open-loop rate until the objective breaks, then bisect: the largest rate that held it."""
        p = self.plan
        slo_p99, slo_errors = p.slo_p99_ms / 1e3, p.slo_errors_percent
        steps: list[KneeStep] = []
        idle: list[float] = []  # one request's latency on the idle server: the one-connection loop's p50, or the first step's
        good: float | None = None
        bad: float | None = None
        start_from = "--rate"
        rate = p.rate
        if rate is None:
            seconds = min(2.0, p.step_s)
            with ctx.phase("knee: one connection", f"closed loop, {seconds:g} s"):
                tally, merged = self._step(ctx, target, shape, rate=None, seconds=seconds, group="knee: one connection", index=0)
            ctx.check_cancel()
            single = tally.ok / merged.wall_s if merged.wall_s > 0 else 0.0
            if single <= 0:
                raise UserError("the server answered no request on one connection: there is no knee to find "
                                f"({_kinds(tally.kinds) or 'nothing came back'})")
            rate = single / 2
            start_from = f"half of what one connection sustained ({single:.4g}/s)"
            p50 = tally.latency.stats().p50_s
            if p50 is not None:
                idle.append(p50)

        def judge(offered: float, tally: _Tally, merged: Any) -> KneeStep:
            done = tally.done
            errors = sum(tally.kinds.values())
            lat = tally.latency.stats()
            lag = tally.lag.stats()
            why = []
            if done == 0:
                why.append("no request was answered")
            if done and 100.0 * errors / done > slo_errors:
                why.append(f"{100.0 * errors / done:.2f} % failed (objective {slo_errors:g} %)")
            if lat.p99_s is not None and lat.p99_s > slo_p99:
                why.append(f"p99 {lat.p99_s * 1e3:.1f} ms (objective {p.slo_p99_ms:g} ms)")
            if merged.sent and merged.in_flight > BACKLOG_SHARE * merged.sent:
                why.append(f"the server fell behind: {merged.in_flight} of {merged.sent} requests still waiting at the step's end")
            return KneeStep(offered_per_s=offered, achieved_per_s=tally.ok / merged.wall_s if merged.wall_s > 0 else None, sent=merged.sent,
                            ok=tally.ok, errors=errors, p50_s=lat.p50_s, p99_s=lat.p99_s, send_lag_p99_s=lag.p99_s, passed=not why,
                            why="; ".join(why))

        confirmation: list[KneeStep] = []

        def run_step(offered: float, confirm: bool = False) -> bool:
            n = len(steps) + len(confirmation) + 1
            seconds = p.step_s * (CONFIRM_STEPS if confirm else 1)
            name, group = ("knee: confirmation", f"knee confirmation {offered:.4g}/s") if confirm else (f"knee step {n}", f"knee {offered:.4g}/s")
            with ctx.phase(name, f"Poisson {offered:.4g}/s for {seconds:g} s"):
                tally, merged = self._step(ctx, target, shape, rate=offered, seconds=seconds, group=group, index=n)
            step = judge(offered, tally, merged)
            (confirmation if confirm else steps).append(step)
            ctx.emit(Result(t_ns=ctx.now(), result=result()))  # the curve so far: the dashboard draws it as the search goes
            if not idle and step.p50_s is not None:
                idle.append(step.p50_s)
            if not step.passed and merged.in_flight and idle:  # a step that held leaves only the last few answers, done at once
                self._drain(ctx, target, shape, idle[0], merged.in_flight)
            ctx.emit(Note(t_ns=ctx.now(), text=f"knee {'confirmation' if confirm else f'step {n}'}: {offered:.4g}/s offered, "
                                               f"{step.achieved_per_s or 0:.4g}/s answered, p99 "
                                               f"{'n/a' if step.p99_s is None else f'{step.p99_s * 1e3:.1f} ms'}: "
                                               + ("holds" if step.passed else f"breaks ({step.why})")))
            return step.passed

        def result() -> KneeResult:
            return KneeResult(objective_p99_s=slo_p99, objective_errors_percent=slo_errors, objective_min_achieved_share=1 - BACKLOG_SHARE,
                              step_s=p.step_s, steps=tuple(steps), sustainable_per_s=good,
                              bracket=(good, bad) if good is not None and bad is not None else None, start_from=start_from,
                              confirmation=confirmation[0] if confirmation else None)

        try:
            while len(steps) < MAX_STEPS and not ctx.cancel_event.is_set():
                if p.max_rate is not None and rate > p.max_rate:
                    rate = p.max_rate
                if run_step(rate):
                    good = rate
                    if p.max_rate is not None and rate >= p.max_rate:
                        break
                    rate *= GROWTH
                else:
                    bad = rate
                    break
            while good is not None and bad is not None and bad / good > BRACKET and len(steps) < MAX_STEPS \
                    and not ctx.cancel_event.is_set():
                mid = (good * bad) ** 0.5
                if run_step(mid):
                    good = mid
                else:
                    bad = mid
            if good is not None and not ctx.cancel_event.is_set():
                run_step(good, confirm=True)
        finally:  # a stop keeps the steps measured so far
            ctx.emit(Result(t_ns=ctx.now(), result=result()))
        ctx.check_cancel()
        final = result()
        if final.sustainable_per_s is None:
            ctx.emit(Note(t_ns=ctx.now(), level="warning", text=f"even the first rate ({steps[0].offered_per_s:.4g}/s) broke the objective: "
                                                               "start lower with --rate" if steps else "no step ran"))
        elif bad is None:
            ctx.emit(Note(t_ns=ctx.now(), level="warning",
                          text=f"the objective held at every rate tried, up to {good:.4g}/s: the knee is above it "
                               + ("(--max-rate)" if p.max_rate is not None else f"(the search stops after {MAX_STEPS} steps)")))
        held = final.confirmation
        if held is not None and not held.passed:
            ctx.emit(Note(t_ns=ctx.now(), level="warning",
                          text=f"the knee did not hold for {CONFIRM_STEPS * p.step_s:g} s at {held.offered_per_s:.4g}/s ({held.why}): "
                               "the sustainable rate is lower than the search's short steps say; try a longer --step-duration"))

    def _drain(self, ctx: RunContext, target: HttpTarget, shape: Shape, idle_s: float, waiting: int) -> None:
        """Wait until the server answers one request about as fast as when idle (twice its idle latency, or 5 ms
        more); said in a phase of its own and a note, never counted in a step."""
        bound = max(2 * idle_s, idle_s + 0.005)
        started = time.perf_counter()
        with ctx.phase("knee: the server catching up", f"{waiting} requests left waiting"):
            while True:
                outcome = _stoppable(ctx, lambda: target.try_request(shape.first), "embprof-knee-drain")
                if not outcome.error_kind and outcome.duration_ns / 1e9 <= bound:
                    break
                if time.perf_counter() - started > DRAIN_LIMIT_S:
                    ctx.emit(Note(t_ns=ctx.now(), level="warning",
                                  text=f"the server was still slower than when idle {DRAIN_LIMIT_S:g} s after a step: the next step "
                                       "may measure what the last one left behind"))
                    return
                _wait(time.perf_counter() + 0.2, threading.Event(), ctx.cancel_event)
                ctx.check_cancel()
        ctx.emit(Note(t_ns=ctx.now(), text=f"waited {time.perf_counter() - started:.1f} s for the server to work through the "
                                           f"{waiting} requests the step left waiting, before the next step"))

    def _warm_up(self, ctx: RunContext, target: HttpTarget, chunk: list[str]) -> None:
        """One request that is not counted, retried while --max-errors allows (as HttpTarget.request does); each
        try on a thread of its own, so that a stop does not wait for a server that does not answer."""
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


def client_ceiling(workers: int, seconds: float, texts_per_request: int = 1, cancel: threading.Event | None = None, *,
                   processes: int = 1, endpoint: str | None = None) -> CeilingProbe:
    """What this client alone can send: the same load processes, connections and request shape against
    a fast local endpoint that answers a fixed embedding at once, for ``seconds`` or until ``cancel``.
    ``endpoint``: another URL to drive instead (the tests' way to see the probe's failures)."""
    from ..trivial_server import FAST_SERVER, FastTrivialServer

    cancel = cancel if cancel is not None else threading.Event()
    n = max(1, min(workers, CEILING_CONNECTIONS))
    processes = max(1, min(processes, n))
    body = json.dumps({"content": ["x"] * texts_per_request, "embd_normalize": 2})
    failed: dict[str, int] = {}
    first: list[str] = []
    answered = [0]

    def add(rec: Record) -> None:
        if rec.kind:
            failed[rec.kind] = failed.get(rec.kind, 0) + 1
            if not first:
                first.append(f"{rec.kind}: {rec.message}")
        else:
            answered[0] += 1

    def drive(url: str) -> float:
        specs = [ProcessSpec(base_url=url, path="/embedding", bodies=[body], items=[texts_per_request], api="llama",
                             concurrency=max(1, share or 1), duration_s=seconds, timeout_s=max(5.0, seconds), index=k)
                 for k, share in enumerate(split(n, processes))]
        merged = LoadProcesses(specs).run(add, cancel.is_set, POLL_S)
        if merged.crashed:  # the probe's own client failed: the run's error, as a load process's is
            raise RuntimeError(merged.crashed[0])
        return merged.wall_s

    if endpoint is not None:
        wall = drive(endpoint)
    else:
        with FastTrivialServer() as server:
            wall = drive(server.url)
    ceiling = ClientCeiling(requests_per_s=answered[0] / wall if wall > 0 and answered[0] else None, workers=n, seconds=wall,
                            texts_per_request=texts_per_request, processes=processes, endpoint=FAST_SERVER if endpoint is None else "given")
    return CeilingProbe(ceiling=ceiling, failed=dict(failed), first_failure=first[0] if first else "")
