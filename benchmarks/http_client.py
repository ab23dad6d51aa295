"""embprof's HTTP client, measured: its own ceiling, its overhead against curl, and the fixed and
per-line cost of a real llama-server, as the user measured them with `time curl`.

1. Ceiling: requests/s the client alone drives against a trivial local endpoint (one that answers
   a fixed vector at once), at concurrency 1, 4 and 16.
2. Overhead: the same request timed by curl (`%{time_total}`, a fresh connection each time) and by
   embprof (send to parsed response, on a kept-alive connection and on a fresh one), alternating;
   the median difference (target: embprof adds at most 2 ms).
3. Against a real llama-server serving all-MiniLM-L6-v2 (f16 GGUF, built by tests/llama_server.py):
   25, 50 and 100 lines in one request, 7 times each; latency = fixed + per line, fitted.

    .venv/bin/python benchmarks/http_client.py [--no-llama]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def ceiling(url: str, workers: int, seconds: float = 2.0) -> float:
    import httpx

    body = json.dumps({"content": ["hello"], "embd_normalize": 2}).encode()
    count = [0]
    lock = threading.Lock()
    with httpx.Client(base_url=url, limits=httpx.Limits(max_connections=64)) as client:
        end = time.perf_counter() + seconds

        def work() -> None:
            while time.perf_counter() < end:
                client.post("/embedding", content=body, headers={"Content-Type": "application/json"})
                with lock:
                    count[0] += 1

        threads = [threading.Thread(target=work) for _ in range(workers)]
        t0 = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        return count[0] / (time.perf_counter() - t0)


def curl_ms(url: str, body: str) -> float:
    out = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{time_total}", "-H", "Content-Type: application/json", "-d", body, f"{url}/embedding"],
        capture_output=True, text=True, check=True,
    ).stdout
    return float(out) * 1e3


def overhead(url: str, lines: list[str], rounds: int = 30) -> None:
    from embprof.engine.targets.http import HttpTarget
    from embprof.engine.plan import ServerTarget

    body = json.dumps({"content": lines, "embd_normalize": 2})
    kept = HttpTarget(ServerTarget(url=url))
    kept.request(None, lines)  # open the kept-alive connection
    c: list[float] = []
    k: list[float] = []
    f: list[float] = []
    parse: list[float] = []

    def by_curl() -> None:
        c.append(curl_ms(url, body))

    def by_kept() -> None:
        o = kept.try_request(lines)
        k.append((o.received_ns or 0) / 1e6)
        parse.append((o.duration_ns - (o.received_ns or 0)) / 1e6)

    def by_fresh() -> None:
        fresh = HttpTarget(ServerTarget(url=url))
        _ = fresh.client  # the client object exists before the clock starts, as in a run
        f.append((fresh.try_request(lines).received_ns or 0) / 1e6)
        fresh.close()

    order = [by_curl, by_kept, by_fresh]
    for r in range(rounds):  # the order rotates every round, so no side always follows the same one
        for fn in order[r % 3:] + order[: r % 3]:
            fn()
    kept.close()
    mc, mk, mf = statistics.median(c), statistics.median(k), statistics.median(f)
    print(f"  curl (new connection, to the last byte)            median {mc:7.2f} ms")
    print(f"  embprof, kept-alive connection, to the last byte   median {mk:7.2f} ms   added {mk - mc:+.2f} ms")
    print(f"  embprof, new connection, to the last byte          median {mf:7.2f} ms   added {mf - mc:+.2f} ms   target <= +2 ms: "
          f"{'met' if mf - mc <= 2.0 else 'NOT met'}")
    print(f"  and parsing the answer (in embprof's request time, not curl's): median {statistics.median(parse):.2f} ms")
    from embprof.engine.sweepstats import differ

    for name, xs in (("kept-alive", k), ("new connection", f)):
        d = differ(c, xs)
        verdict = "beyond the noise" if d["beyond_noise"] else "within the noise"
        print(f"  embprof {name} against curl: {verdict} (Mann-Whitney U, p={d['p_value']:.2g}; curl's own spread: "
              f"p10 {statistics.quantiles(c, n=10)[0]:.1f} ms, p90 {statistics.quantiles(c, n=10)[-1]:.1f} ms)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-llama", action="store_true", help="skip the parts that need llama-server")
    args = ap.parse_args()

    from embprof.engine.trivial_server import TrivialEmbeddingServer
    from embprof.engine.workloads.encode import sample_corpus

    corpus = sample_corpus()
    with TrivialEmbeddingServer() as trivial:
        print("1. the client alone against a trivial local endpoint (requests/s)")
        for w in (1, 4, 16):
            print(f"  concurrency {w:>2}: {ceiling(trivial.url, w):8.0f} requests/s")
        print("2. one request of 43 lines against the trivial endpoint, curl against embprof (30 rounds, alternating)")
        overhead(trivial.url, [corpus[i % len(corpus)] for i in range(43)])
    if args.no_llama:
        return 0

    from embprof.engine.targets.http import HttpTarget
    from embprof.engine.plan import ServerTarget
    from embprof.engine.sweepstats import fit_latency
    from llama_server import LlamaServer, minilm_gguf

    with LlamaServer(minilm_gguf()) as server:
        print(f"3. llama-server (all-MiniLM-L6-v2 f16 GGUF, 2 threads, -ub 512) at {server.url}")
        print("  the same request, curl against embprof:")
        overhead(server.url, [corpus[i % len(corpus)] for i in range(43)], rounds=21)
        target = HttpTarget(ServerTarget(url=server.url))
        target.request(None, corpus[:4])
        ls, ts, ys = [], [], []
        for n in (25, 50, 100):
            texts = [corpus[i % len(corpus)] for i in range(n)]
            times = []
            for _ in range(7):
                times.append(target.try_request(texts).duration_ns / 1e9)
            ls += [n] * len(times)
            ts += [0] * len(times)
            ys += times
            print(f"  {n:>3} lines in one request: median {statistics.median(times) * 1e3:7.1f} ms   (7 runs)")
        fit = fit_latency(ls, ts, ys)
        if fit is not None:
            print(f"  latency = {fit.formula()}   R² {fit.r2:.4f}   (fixed 95% CI {fit.ci['fixed'][0] * 1e3:.1f}–{fit.ci['fixed'][1] * 1e3:.1f} ms, "
                  f"per line {fit.ci['per_line'][0] * 1e3:.2f}–{fit.ci['per_line'][1] * 1e3:.2f} ms)")
        target.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
