"""Load on an embedding server: a fixed number of requests or a duration, at a given concurrency
(closed loop: each worker sends its next request when the last one is answered) or at a given
arrival rate (open loop: Poisson arrivals, as vLLM's `bench serve` sends them). Errors are counted
by kind and the run goes on until more than --max-errors have failed.

Before the load, the same client drives a trivial local endpoint for a moment at the same
concurrency: what the client alone can send is reported beside what the server sustained, so a
client-bound result cannot pass for a server's.
"""

from __future__ import annotations

import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

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
        from ..http_target import HttpTarget, ServerFault

        if not isinstance(target, HttpTarget):
            raise UserError("the load workload drives a server: give --server URL")
        if not self._texts:
            self.prepare()
        prefix = target.prompt_text("plain", self.plan.prompt_name, None) or ""
        texts = [prefix + t for t in self._texts]
        workers = self.concurrency or min(MAX_WORKERS, max(8, int((self.rate or 1) * 2)))
        # The probe sends requests of the load's own shape (K texts each): a ceiling measured with
        # one text a request would say nothing about a load that sends K.
        ceiling = client_ceiling(workers, self.probe_s, self.batch)
        ctx.emit(Result(t_ns=ctx.now(), result=ceiling))

        with ctx.phase("warm-up", "1 request"):
            target.request(ctx, texts[: self.batch], warmup=True, group="load")

        lock = threading.Lock()
        # Aggregates, not a list per request: an hour of load must not grow the client's memory.
        latency = LatencySeries()
        tally = {"done": 0, "ok": 0, "items": 0, "tokens": 0, "tokens_known": True}
        kinds: dict[str, int] = {}
        stop = threading.Event()
        fault: list[BaseException] = []
        sent = [0]
        rnd = random.Random(self.plan.seed)

        def next_chunk(i: int) -> list[str]:
            start = (i * self.batch) % len(texts)
            return [texts[(start + k) % len(texts)] for k in range(self.batch)]

        def one(i: int) -> None:
            if stop.is_set():
                return
            outcome = target.try_request(next_chunk(i))
            ctx.emit(outcome.event(ctx, 0, i, False, "load"))
            with lock:
                tally["done"] += 1
                if not outcome.error_kind:
                    tally["ok"] += 1
                    tally["items"] += outcome.items
                    latency.add(outcome.duration_ns / 1e9)
                    if outcome.tokens is None:
                        tally["tokens_known"] = False
                    else:
                        tally["tokens"] += outcome.tokens
                    return
                kinds[outcome.error_kind] = kinds.get(outcome.error_kind, 0) + 1
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
        achieved = tally["done"] / wall if wall > 0 else None
        ceiling_rate = ceiling.requests_per_s
        share = 100.0 * achieved / ceiling_rate if achieved is not None and ceiling_rate else None
        result = LoadResult(
            requests_sent=sent[0],
            requests_done=int(tally["done"]),
            ok=int(tally["ok"]),
            errors=sum(kinds.values()),
            errors_by_kind=kinds,
            wall_s=wall,
            requests_per_s=tally["ok"] / wall if wall > 0 else None,
            items_per_s=tally["items"] / wall if wall > 0 else None,
            tokens_per_s=tally["tokens"] / wall if wall > 0 and tally["tokens_known"] and tally["ok"] else None,
            latency=latency.stats(),
            client_ceiling_per_s=ceiling_rate,
            client_share_percent=share,
        )
        ctx.emit(Result(t_ns=ctx.now(), result=result))
        if share is not None and share > 50:
            ctx.emit(Note(t_ns=ctx.now(), level="warning",
                          text=f"the load reached {share:.0f} % of what this client alone can send: it may be client-bound"))
        if fault:
            raise fault[0]


def client_ceiling(workers: int, seconds: float, texts_per_request: int = 1) -> ClientCeiling:
    """What this client alone can send: the same httpx client and threads against a trivial
    local endpoint that answers a fixed embedding at once."""
    import httpx

    from ..trivial_server import TrivialEmbeddingServer

    with TrivialEmbeddingServer() as server, httpx.Client(base_url=server.url, limits=httpx.Limits(max_connections=256, max_keepalive_connections=64)) as client:
        count = [0]
        lock = threading.Lock()
        t_end = time.perf_counter() + seconds
        body = json.dumps({"content": ["x"] * texts_per_request, "embd_normalize": 2}).encode()

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
    return ClientCeiling(requests_per_s=count[0] / wall if wall > 0 and count[0] else None, workers=len(threads), seconds=wall,
                         texts_per_request=texts_per_request)
