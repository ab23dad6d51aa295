"""Load on an embedding server: a fixed number of requests or a duration, at a given concurrency
(closed loop: each worker sends its next request when the last one is answered) or at a given
arrival rate (open loop: Poisson arrivals, as vLLM's `bench serve` sends them). Errors are counted
by kind and the run goes on until more than --max-errors have failed.

Before the load, the same client drives a trivial local endpoint for a moment at the same
concurrency: what the client alone can send is reported beside what the server sustained, so a
client-bound result cannot pass for a server's.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..context import RunContext
from ..errors import UserError
from ..events import Note, Result
from ..files import read_lines
from ..stats import describe
from ..targets import Target
from .encode import sample_corpus

MAX_WORKERS = 512


@dataclass
class LoadWorkload:
    requests: int | None = None
    duration_s: float | None = None
    concurrency: int | None = None
    rate: float | None = None  # requests per second, Poisson arrivals
    batch: int = 1  # texts per request
    input: str | None = None
    prompt_name: str | None = None
    seed: int = 0
    probe_s: float = 1.5  # how long the client-ceiling probe runs
    name: str = "load"
    _texts: list[str] = field(default_factory=list, repr=False)

    def prepare(self) -> None:
        if self.requests is None and self.duration_s is None:
            self.requests = 200
        if self.requests is not None and self.duration_s is not None:
            raise UserError("give --requests or --duration, not both")
        if self.requests is not None and self.requests < 1:
            raise UserError(f"--requests must be at least 1, not {self.requests}")
        if self.duration_s is not None and self.duration_s <= 0:
            raise UserError(f"--duration must be a positive number of seconds, not {self.duration_s}")
        if self.concurrency is not None and self.rate is not None:
            raise UserError("give --concurrency (closed loop) or --rate (Poisson arrivals), not both")
        if self.concurrency is None and self.rate is None:
            self.concurrency = 1
        if self.concurrency is not None and not 1 <= self.concurrency <= MAX_WORKERS:
            raise UserError(f"--concurrency must be between 1 and {MAX_WORKERS}, not {self.concurrency}")
        if self.rate is not None and self.rate <= 0:
            raise UserError(f"--rate must be a positive number of requests per second, not {self.rate}")
        if self.batch < 1:
            raise UserError(f"--batch must be at least 1 text per request, not {self.batch}")
        self._texts = sample_corpus() if self.input is None else read_lines(self.input)

    def prompt_names(self) -> list[str]:
        return [self.prompt_name] if self.prompt_name else []

    def settings(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "requests": self.requests,
            "duration_s": self.duration_s,
            "concurrency": self.concurrency,
            "rate_per_s": self.rate,
            "arrivals": "poisson" if self.rate is not None else "closed loop",
            "texts_per_request": self.batch,
            "input": self.input if self.input is not None else "built-in sample corpus",
            "prompt_name": self.prompt_name,
        }

    def run(self, ctx: RunContext, target: Target) -> None:
        from ..http_target import HttpTarget, ServerFault

        if not isinstance(target, HttpTarget):
            raise UserError("the load workload drives a server: give --server URL")
        if not self._texts:
            self.prepare()
        prefix = target._prompt_text("plain", self.prompt_name, None) or ""
        texts = [prefix + t for t in self._texts]
        workers = self.concurrency or min(MAX_WORKERS, max(8, int((self.rate or 1) * 2)))
        ceiling = client_ceiling(workers, self.probe_s)
        ctx.emit(Result(t_ns=ctx.now(), name="client_ceiling", data=ceiling))

        with ctx.phase("warm-up", "1 request"):
            target.request(ctx, texts[: self.batch], warmup=True)

        lock = threading.Lock()
        done: list[dict[str, Any]] = []
        stop = threading.Event()
        fault: list[BaseException] = []
        sent = [0]
        rnd = random.Random(self.seed)

        def next_chunk(i: int) -> list[str]:
            start = (i * self.batch) % len(texts)
            return [texts[(start + k) % len(texts)] for k in range(self.batch)]

        def one(i: int) -> None:
            if stop.is_set():
                return
            outcome = target.try_request(next_chunk(i))
            ctx.emit(outcome.event(ctx, 0, i, False))
            with lock:
                done.append({"t": time.perf_counter(), "s": outcome.duration_ns / 1e9, "kind": outcome.error_kind,
                             "items": outcome.items, "tokens": outcome.tokens})
                if outcome.error_kind:
                    target.errors += 1
                    target.errors_by_kind[outcome.error_kind] = target.errors_by_kind.get(outcome.error_kind, 0) + 1
                    if target.errors > target.spec.max_errors and not fault:
                        fault.append(ServerFault(f"{target.errors} requests failed ({outcome.error_kind}: {outcome.error}), "
                                                 f"more than --max-errors {target.spec.max_errors}; the load stopped"))
                        stop.set()

        def more(i: int, t0: float) -> bool:
            if stop.is_set() or ctx.cancel_event.is_set():
                return False
            if self.requests is not None:
                return i < self.requests
            return time.perf_counter() - t0 < (self.duration_s or 0)

        detail = f"concurrency {self.concurrency}" if self.concurrency else f"Poisson {self.rate:g}/s"
        with ctx.phase("load", detail):
            t0 = time.perf_counter()
            if self.concurrency:
                counter = iter(range(10**12))
                counter_lock = threading.Lock()

                def worker() -> None:
                    while True:
                        with counter_lock:
                            i = next(counter)
                            if not more(i, t0):
                                return
                            sent[0] += 1
                        one(i)

                threads = [threading.Thread(target=worker, name=f"embprof-load-{k}", daemon=True) for k in range(self.concurrency)]
                for th in threads:
                    th.start()
                for th in threads:
                    th.join()
            else:
                with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="embprof-load") as pool:
                    i = 0
                    next_t = t0
                    while more(i, t0):
                        next_t += rnd.expovariate(self.rate or 1.0)
                        delay = next_t - time.perf_counter()
                        if delay > 0:
                            if stop.wait(delay):
                                break
                        pool.submit(one, i)
                        sent[0] += 1
                        i += 1
            wall = time.perf_counter() - t0
        ctx.check_cancel()
        ok = [d for d in done if not d["kind"]]
        kinds: dict[str, int] = {}
        for d in done:
            if d["kind"]:
                kinds[d["kind"]] = kinds.get(d["kind"], 0) + 1
        stats = describe([d["s"] for d in ok])
        achieved = len(done) / wall if wall > 0 else 0.0
        data = {
            "requests_sent": sent[0],
            "requests_done": len(done),
            "ok": len(ok),
            "errors": sum(kinds.values()),
            "errors_by_kind": kinds,
            "wall_s": wall,
            "requests_per_s": len(ok) / wall if wall > 0 else 0.0,
            "items_per_s": sum(d["items"] for d in ok) / wall if wall > 0 else 0.0,
            "tokens_per_s": (sum(d["tokens"] or 0 for d in ok) / wall) if wall > 0 and any(d["tokens"] for d in ok) else None,
            "latency": stats,
            "client_ceiling_per_s": ceiling["requests_per_s"],
            "client_share_percent": 100.0 * achieved / ceiling["requests_per_s"] if ceiling["requests_per_s"] else None,
        }
        ctx.emit(Result(t_ns=ctx.now(), name="load", data=data))
        if data["client_share_percent"] is not None and data["client_share_percent"] > 50:
            ctx.emit(Note(t_ns=ctx.now(), level="warning",
                          text=f"the load reached {data['client_share_percent']:.0f} % of what this client alone can send: it may be client-bound"))
        if fault:
            raise fault[0]


def client_ceiling(workers: int, seconds: float) -> dict[str, Any]:
    """What this client alone can send: the same httpx client and threads against a trivial
    local endpoint that answers a fixed embedding at once."""
    import httpx

    from ..trivial_server import TrivialEmbeddingServer

    with TrivialEmbeddingServer() as server, httpx.Client(base_url=server.url, limits=httpx.Limits(max_connections=256, max_keepalive_connections=64)) as client:
        count = [0]
        lock = threading.Lock()
        t_end = time.perf_counter() + seconds
        body = b'{"content": ["x"], "embd_normalize": 2}'

        def worker() -> None:
            while time.perf_counter() < t_end:
                client.post("/embedding", content=body, headers={"Content-Type": "application/json"})
                with lock:
                    count[0] += 1

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(workers, 64))]
        t0 = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t0
    return {"requests_per_s": count[0] / wall if wall > 0 else 0.0, "workers": len(threads), "seconds": wall}
