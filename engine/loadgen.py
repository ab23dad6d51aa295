"""The load generator: asynchronous HTTP clients in processes of their own, every request's times
merged exactly.

A load process runs one event loop (uvloop where it is installed) with one aiohttp session: a
kept-alive connection pool as large as the process's share of the concurrency. Python threads under
one lock (the client before this one) reached about 1,200 requests/s here and fell as threads were
added; an event loop spends its time on the requests, and several processes use several cores.

What each process measures is every request's own times, on the machine's monotonic clock (the same
clock in every process): when it was due (open loop), when it was sent, when its answer was read, and
the server's own timings where it reports them (Hugging Face TEI's ``x-*-time`` headers). The records
go to embprof's process over a pipe, a batch at a time, and are folded there one by one: the merged
result is the union of the processes' records, never an average of their summaries.

Two ways to send:

* closed loop (``concurrency``): each of the process's workers sends its next request when its last
  one is answered; a request's latency runs from its send.
* open loop (``rate``): requests are due at Poisson arrival times (each process draws its own share
  of the rate from its own seed; the union of independent Poisson streams is a Poisson stream of the
  whole rate). A request's latency runs from when it was due, not from when it could be sent: a
  server that stalls delays every request due during the stall, and the latency says so (the
  closed loop, and a load generator that times from the send, would hide it: coordinated
  omission). How far sends fell behind schedule is recorded too.

The process is ``python -m embprof.engine.loadgen``: its settings arrive as one JSON line on stdin
(credentials included: never on its command line, never in a file). It answers ``ready`` once its
client is made, waits for ``go START DEADLINE`` (the same moment for every process, on the monotonic
clock), sends, and writes batches of records and then ``end`` (with how many it sent) as JSON lines
on stdout. A line ``stop`` (or the end of stdin) stops it at once: requests still out are neither
waited for nor counted.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from .targets import protocol
from .targets.protocol import Failure, Width

# A batch of records leaves the process at least this often: the live view stays live, the pipe calm.
FLUSH_S = 0.05
# TEI's timing headers, in milliseconds, and the part of the request each names.
TEI_HEADERS = (("x-queue-time", "queue"), ("x-tokenization-time", "tokenization"), ("x-inference-time", "inference"),
               ("x-total-time", "server_total"))


@dataclass(frozen=True)
class ProcessSpec:
    """What one load process is told to do."""

    base_url: str  # without credentials
    path: str  # /embedding or /v1/embeddings
    bodies: list[str]  # request bodies (JSON text), sent in turn: request i sends bodies[i % len]
    items: list[int]  # texts in each body
    api: str  # llama, openai, tei, ollama: how an answer is read (the API found on connect, never auto)
    concurrency: int  # closed loop: this process's workers; open loop: its connections at most
    rate: float | None = None  # open loop: this process's arrivals per second; None: closed loop
    seed: int = 0
    requests: int | None = None  # this process's share of a count of requests
    duration_s: float | None = None  # how long it sends, from the common start
    timeout_s: float = 60.0
    headers: dict[str, str] = field(default_factory=dict)  # Authorization among them: from the pipe, never written
    basic_auth: tuple[str, str] | None = None
    max_answer_bytes: int = protocol.MAX_ANSWER_BYTES
    max_in_flight: int = 4096  # open loop: arrivals beyond this wait (their latency still counts from when they were due)
    index: int = 0
    records_file: str | None = None  # also write every record here, as this process measured it (JSON lines)


@dataclass
class Record:
    """One request, as a load process measured it."""

    process: int
    index: int
    due_ns: int | None  # open loop: when it was due; None: closed loop (it was sent when it could be)
    sent_ns: int
    done_ns: int
    status: int | None
    items: int
    tokens: int | None = None
    kind: str = ""  # "" when it succeeded; the failure's kind otherwise
    message: str = ""  # the failure, unredacted: the parent redacts before anything is kept
    server: dict[str, float] | None = None  # the server's own timings in seconds, by part
    sent_bytes: int = 0
    received_bytes: int = 0
    dim: int | None = None

    @property
    def latency_ns(self) -> int:
        """From when it was due (open loop) or sent (closed loop) to its answer."""
        return self.done_ns - (self.due_ns if self.due_ns is not None else self.sent_ns)

    @property
    def lag_ns(self) -> int | None:
        """How late it was sent against its schedule (open loop only)."""
        return None if self.due_ns is None else self.sent_ns - self.due_ns

    def row(self) -> list[Any]:
        return [self.process, self.index, self.due_ns, self.sent_ns, self.done_ns, self.status, self.items, self.tokens, self.kind,
                self.message, self.server, self.sent_bytes, self.received_bytes, self.dim]

    @classmethod
    def of_row(cls, row: list[Any]) -> Record:
        return cls(*row)


# -- in the load process ----------------------------------------------------------------------------------------
class _Sender:
    def __init__(self, spec: ProcessSpec, out: Callable[[str], None]) -> None:
        self.spec = spec
        self.out = out
        self.pending: list[list[Any]] = []
        self.stopped = asyncio.Event()
        self.width = Width()  # every vector of this process's answers as long as the first one's
        self.bodies = [b.encode() for b in spec.bodies]  # str.encode is always UTF-8
        self.sent = self.recorded = 0
        self.start_ns = 0
        self.deadline_ns: int | None = None
        self.copy = open(spec.records_file, "w", encoding="utf-8") if spec.records_file else None  # noqa: SIM115 - closed in flush(last=True)

    def record(self, rec: Record) -> None:
        # Answered after the end, or cut off by a stop (the session closing under it): outside the measured window.
        # Counted as recorded it would be neither in the records nor among the requests still out.
        if self.stopped.is_set() or (self.deadline_ns is not None and rec.done_ns > self.deadline_ns):
            return
        self.recorded += 1
        self.pending.append(rec.row())

    def flush(self, last: bool = False) -> None:
        if self.pending:
            rows, self.pending = self.pending, []
            line = json.dumps({"kind": "records", "rows": rows}, separators=(",", ":"))
            if self.copy is not None:
                self.copy.write("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows))
            self.out(line)
        if last and self.copy is not None:
            self.copy.close()

    async def flusher(self) -> None:
        while not self.stopped.is_set():
            await asyncio.sleep(FLUSH_S)
            self.flush()

    async def one(self, session: Any, i: int, due_ns: int | None) -> None:
        import aiohttp

        spec = self.spec
        k = i % len(self.bodies)
        body, n = self.bodies[k], spec.items[k]
        status: int | None = None
        raw = b""
        server: dict[str, float] | None = None
        self.sent += 1
        sent = time.monotonic_ns()
        # --timeout on the loop's clock, set late by that clock's slack (stamped after the send's stamp, so that
        # the slack covers it): no request is given up before its time.
        slack = timer_slack_s(asyncio.get_running_loop())
        timeout = aiohttp.ClientTimeout(total=spec.timeout_s + slack, connect=min(10.0, spec.timeout_s) + slack)

        def done(kind: str = "", message: str = "", tokens: int | None = None, dim: int | None = None) -> None:
            self.record(Record(spec.index, i, due_ns, sent, time.monotonic_ns(), status, n, tokens, kind, message[:400], server,
                               len(body), len(raw), dim))

        try:
            # Redirects are not followed, as the synchronous client follows none: a load measured
            # somewhere else than --server names would be no measure of that server.
            async with session.post(spec.path, data=body, allow_redirects=False, timeout=timeout) as r:
                status = r.status
                server = server_timings(r.headers)
                header_tokens = protocol.header_tokens(spec.api, r.headers)
                if 200 <= r.status < 300:
                    raw = await read_capped(r, spec.max_answer_bytes)
                else:
                    raw = await read_capped(r, protocol.MAX_ERROR_BYTES, cut=True)
                phrase, location, answered = r.reason or "", r.headers.get("Location", ""), r.url.path
        except AnswerTooLong as exc:
            done(protocol.BadBody.kind, str(exc))
            return
        except (asyncio.TimeoutError, TimeoutError):
            done("timeout", f"no answer within {spec.timeout_s:g} s (--timeout)")
            return
        except aiohttp.ClientError as exc:
            done("connection", (str(exc).strip().splitlines() or [exc.__class__.__name__])[0] or exc.__class__.__name__)
            return
        except OSError as exc:
            done("connection", exc.strerror or exc.__class__.__name__)
            return
        # Unredacted: the records go to embprof's process, which redacts before anything is kept.
        answer = protocol.classify_answer(status, raw, n, spec.api, reason_phrase=phrase, location=location, path=answered,
                                          width=self.width)
        if isinstance(answer, Failure):
            done(answer.kind, answer.message)
            return
        done(tokens=answer.tokens if answer.tokens is not None else header_tokens, dim=int(answer.matrix.shape[1]) if n else None)

    async def closed(self, session: Any) -> None:
        spec = self.spec
        # One counter shared by the workers: each request index is taken once, by whichever worker is free.
        counter = iter(range(spec.requests)) if spec.requests is not None else itertools.count()

        async def worker() -> None:
            for i in counter:
                if self.over():
                    return
                await self.one(session, i, None)

        await asyncio.gather(*(worker() for _ in range(spec.concurrency)))

    async def open(self, session: Any, rate: float) -> None:
        spec = self.spec
        rnd = random.Random(spec.seed)
        gate = asyncio.Semaphore(spec.max_in_flight)
        tasks: set[asyncio.Task[None]] = set()
        due = float(self.start_ns)
        i = 0

        async def go(i: int, due_ns: int) -> None:
            async with gate:
                if not self.stopped.is_set():
                    await self.one(session, i, due_ns)

        while spec.requests is None or i < spec.requests:
            due += rnd.expovariate(rate) * 1e9
            if self.deadline_ns is not None and due >= self.deadline_ns:
                break
            await sleep_until(int(due), self.stopped)
            if self.stopped.is_set():  # a stop: nothing more is sent, nothing still out is waited for
                return
            t = asyncio.get_running_loop().create_task(go(i, int(due)))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            i += 1
        # A count ends with its last answer; a duration runs to its end, answers counted until then. No request is
        # added from here on, and process_main ends this wait at the deadline or at a stop, whichever comes first.
        if tasks:
            await asyncio.wait(set(tasks))
        if self.deadline_ns is not None:
            await self.stopped.wait()

    def over(self) -> bool:
        return self.stopped.is_set() or (self.deadline_ns is not None and time.monotonic_ns() >= self.deadline_ns)


def timer_slack_s(loop: asyncio.AbstractEventLoop) -> float:
    """How much later than asked a timer must be set on ``loop`` never to fire before the asked time on the
    monotonic clock the records are stamped with.

    uvloop's clock is libuv's count of milliseconds, read when the loop's iteration began (behind
    time.monotonic by the iteration so far), and its timers are rounded to the millisecond: a 0.5 s
    --timeout was seen to fire 499.9 ms after its request was sent, a request recorded as given up before
    its time. asyncio's own loop reads time.monotonic, and the slack is then the millisecond alone. Both
    clocks are CLOCK_MONOTONIC on Linux; a difference of a second or more says they are not the same clock,
    and only the rounding is allowed for."""
    behind = time.monotonic() - loop.time()
    return (behind if 0.0 <= behind < 1.0 else 0.0) + 0.001


async def sleep_until(at_ns: int, stopped: asyncio.Event) -> None:
    """Until the monotonic clock reads ``at_ns`` or ``stopped`` is set, whichever comes first. The loop's timer may
    wake it early (timer_slack_s): it then waits again for what is left, so that nothing is sent before it is due."""
    while not stopped.is_set():
        wait = (at_ns - time.monotonic_ns()) / 1e9
        if wait <= 0:
            return
        try:
            await asyncio.wait_for(stopped.wait(), wait)
        except (asyncio.TimeoutError, TimeoutError):
            pass


class AnswerTooLong(Exception):
    pass


async def read_capped(response: Any, limit: int, cut: bool = False) -> bytes:
    """The body, never more than ``limit`` bytes: past it the answer is refused (or, with ``cut``, its start kept)."""
    declared = protocol.declared_length(response.headers.get("content-length"))
    if not cut and declared is not None and declared > limit:
        raise AnswerTooLong(protocol.oversize_message(limit, declared))
    parts: list[bytes] = []
    size = 0
    async for part in response.content.iter_any():
        size += len(part)
        if size > limit:
            if not cut:
                raise AnswerTooLong(protocol.oversize_message(limit))
            parts.append(part[: len(part) - (size - limit)])
            break
        parts.append(part)
    return b"".join(parts)


def server_timings(headers: Any) -> dict[str, float] | None:
    """TEI's timing headers (milliseconds) as seconds by part; None when the server sends none."""
    out: dict[str, float] = {}
    for header, part in TEI_HEADERS:
        value = headers.get(header)
        if value is None:
            continue
        try:
            ms = float(value)
        except ValueError:
            continue
        if ms >= 0 and math.isfinite(ms):  # a time: no negative, NaN or infinite one
            out[part] = ms / 1e3
    return out or None


async def process_main(spec: ProcessSpec) -> None:
    import aiohttp

    loop = asyncio.get_running_loop()
    go = asyncio.Event()

    def out(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    sender = _Sender(spec, out)

    def on_stdin() -> None:
        line = sys.stdin.readline()
        words = line.split()
        if words[:1] == ["go"] and len(words) == 3:
            sender.start_ns = int(words[1])
            sender.deadline_ns = None if words[2] == "-" else int(words[2])
            go.set()
            return
        # "stop", or the end of stdin (embprof's process gone): stop now.
        sender.stopped.set()
        go.set()
        loop.remove_reader(sys.stdin.fileno())

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    # One host (redirects are not followed), so the pool's limit is the limit on connections to the server.
    connector = aiohttp.TCPConnector(limit=spec.concurrency, ttl_dns_cache=300, enable_cleanup_closed=True)
    # total: --timeout bounds each request from its connect to its last byte, whatever the server sends meanwhile
    # (1xx answers without end, a byte now and then), as the synchronous client's bound does; such a request is a
    # "timeout" record (tests/test_fault_deadlines.py).
    timeout = aiohttp.ClientTimeout(total=spec.timeout_s, connect=min(10.0, spec.timeout_s))
    headers = {**protocol.BASE_HEADERS, **spec.headers}
    if spec.basic_auth:  # never beside an API key's bearer header (protocol.basic_auth)
        headers["Authorization"] = protocol.basic_auth_header(spec.basic_auth)
    async with aiohttp.ClientSession(base_url=spec.base_url, connector=connector, timeout=timeout, headers=headers,
                                     auto_decompress=False) as session:  # a status is classified, never raised (the default)
        out(json.dumps({"kind": "ready"}))
        await go.wait()
        # Until the common start, or a stop; a start already past (or a stop already read) returns at once.
        await sleep_until(sender.start_ns, sender.stopped)
        flusher = loop.create_task(sender.flusher())
        body = loop.create_task(sender.closed(session) if spec.rate is None else sender.open(session, spec.rate))
        stop = loop.create_task(sender.stopped.wait())
        while True:  # again where the loop's timer ended the wait before the deadline (timer_slack_s)
            deadline = None if sender.deadline_ns is None else max(0.0, (sender.deadline_ns - time.monotonic_ns()) / 1e9)
            finished, _ = await asyncio.wait({body, stop}, timeout=deadline, return_when=asyncio.FIRST_COMPLETED)
            if finished or sender.deadline_ns is None or time.monotonic_ns() >= sender.deadline_ns:
                break
        # The end (a count sent, a duration over, a stop): requests still out are not waited for and not counted.
        sender.stopped.set()
        for t in (body, stop):
            t.cancel()
        await asyncio.gather(body, stop, return_exceptions=True)
        flusher.cancel()
        await asyncio.gather(flusher, return_exceptions=True)
        sender.flush(last=True)
    out(json.dumps({"kind": "end", "sent": sender.sent, "in_flight": sender.sent - sender.recorded}))


def main() -> int:
    line = sys.stdin.readline()
    if not line:
        return 2
    data = json.loads(line)
    if data.get("basic_auth"):
        data["basic_auth"] = tuple(data["basic_auth"])
    spec = ProcessSpec(**data)
    try:
        import uvloop

        uvloop.run(process_main(spec))
    except ImportError:  # uvloop is for Linux and macOS: elsewhere asyncio's own loop does the same, more slowly
        asyncio.run(process_main(spec))
    return 0


# -- in embprof's process ---------------------------------------------------------------------------------------------
@dataclass
class Merged:
    """What the processes did, merged: each record was folded in as it came."""

    processes: int
    wall_s: float  # from the common start to the deadline, the last answer, or the stop
    ended: str  # "done", "deadline", "stopped"
    sent: int = 0  # requests sent, by every process
    in_flight: int = 0  # sent and not answered when the load ended (not counted as done)
    crashed: list[str] = field(default_factory=list)  # a process that ended without saying so: why, one line each


class LoadProcesses:
    """Start ``len(specs)`` load processes, start them sending at the same moment, and hand every record
    to ``on_record`` (in embprof's process, on the calling thread: nothing there needs a lock) as it arrives."""

    READY_S = 120.0  # for the processes to start (a busy machine imports slowly)

    def __init__(self, specs: list[ProcessSpec]) -> None:
        self.specs = specs
        self.procs: list[Any] = []

    def run(self, on_record: Callable[[Record], None], should_stop: Callable[[], bool], poll_s: float = 0.05) -> Merged:
        import queue
        import subprocess
        import tempfile
        import threading

        messages: queue.Queue[tuple[int, Any]] = queue.Queue()
        errs = [tempfile.TemporaryFile() for _ in self.specs]
        try:
            for k, spec in enumerate(self.specs):
                # Its own session: a Ctrl-C reaches embprof, which stops the load processes itself, in order.
                p = subprocess.Popen([sys.executable, "-m", "embprof.engine.loadgen"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=errs[k], start_new_session=True)
                self.procs.append(p)
                self._send(p, json.dumps(asdict(spec)))

            def read(k: int, stream: Any) -> None:
                try:
                    for raw in stream:
                        try:
                            messages.put((k, json.loads(raw)))
                        except ValueError:
                            continue
                finally:
                    messages.put((k, None))

            for k, p in enumerate(self.procs):
                threading.Thread(target=read, args=(k, p.stdout), name=f"embprof-load-{k}", daemon=True).start()
            return self._drive(messages, errs, on_record, should_stop, poll_s)
        finally:
            for p in self.procs:
                self._send(p, "stop")
            for p in self.procs:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            for f in errs:
                f.close()

    def _drive(self, messages: Any, errs: list[Any], on_record: Callable[[Record], None], should_stop: Callable[[], bool],
               poll_s: float) -> Merged:
        import queue

        n = len(self.procs)
        live, ready, ended_ok = n, 0, [False] * n
        merged = Merged(n, 0.0, "done")
        started = False
        ready_by = time.monotonic() + self.READY_S
        start_ns = stop_ns = 0
        last_done = 0
        duration = self.specs[0].duration_s
        deadline_ns: int | None = None
        while live:
            if not started and (ready == n or time.monotonic() > ready_by):
                # Every process is ready (or the rest are late): all begin at one moment, a little ahead.
                start_ns = time.monotonic_ns() + int(0.05e9)
                deadline_ns = None if duration is None else start_ns + int(duration * 1e9)
                for p in self.procs:
                    self._send(p, f"go {start_ns} {deadline_ns if deadline_ns is not None else '-'}")
                started = True
                last_done = start_ns
            if should_stop() and merged.ended == "done":
                merged.ended = "stopped"
                stop_ns = time.monotonic_ns()
                for p in self.procs:
                    self._send(p, "stop")
            try:
                k, msg = messages.get(timeout=poll_s)
            except queue.Empty:
                continue
            if msg is None:
                live -= 1
                if not ended_ok[k]:
                    merged.crashed.append(self._why(k, errs[k]))
                    if merged.ended == "done":  # one process gone: the load is not what was asked for any more
                        merged.ended = "stopped"
                        stop_ns = time.monotonic_ns()
                        for p in self.procs:
                            self._send(p, "stop")
                continue
            kind = msg.get("kind")
            if kind == "ready":
                ready += 1
            elif kind == "records":
                for row in msg["rows"]:
                    rec = Record.of_row(row)
                    last_done = max(last_done, rec.done_ns)
                    on_record(rec)
            elif kind == "end":
                ended_ok[k] = True
                merged.sent += msg["sent"]  # an end line always says both (process_main)
                merged.in_flight += msg["in_flight"]
        if not started:
            return merged
        if merged.ended == "stopped":
            end_ns = stop_ns
        elif deadline_ns is not None:
            merged.ended, end_ns = "deadline", deadline_ns
        else:
            end_ns = last_done
        merged.wall_s = max(0.0, (end_ns - start_ns) / 1e9)
        return merged

    def _why(self, k: int, err: Any) -> str:
        p = self.procs[k]
        try:
            rc = p.wait(timeout=5)
        except Exception:
            rc = None
        err.seek(0)
        lines = err.read().decode(errors="replace").strip().splitlines()  # UTF-8, whatever the process wrote
        how = (f"killed by signal {-rc}" if rc is not None and rc < 0 else f"exit status {rc}")
        return f"load process {k + 1} ended unexpectedly ({how})" + (f": {lines[-1][:200]}" if lines else "")

    @staticmethod
    def _send(p: Any, line: str) -> None:
        try:
            p.stdin.write(line.encode() + b"\n")  # str.encode is always UTF-8
            p.stdin.flush()
        except (OSError, ValueError):
            pass


def split(total: int | None, parts: int) -> list[int | None]:
    """``total`` shared as evenly as it goes (the first ones take the remainder); None stays None."""
    if total is None:
        return [None] * parts
    return [total // parts + (1 if k < total % parts else 0) for k in range(parts)]


if __name__ == "__main__":
    sys.exit(main())
