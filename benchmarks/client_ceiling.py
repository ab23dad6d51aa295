"""The load client's own ceiling: requests/s it sends, alone, to a fast local endpoint, measured side by side
in one run with the thread-per-request client it replaced and with the endpoint's own capacity.

1. The endpoint: embprof's fast local endpoint (an asyncio protocol server on uvloop, in its own process),
   driven by a minimal client with no HTTP library (raw asyncio streams, also in its own process): the
   endpoint answers at least this fast, so it is not what limits the clients below.
2. embprof's load client (engine/loadgen.py: aiohttp on uvloop, one event loop a process), closed loop,
   one-text requests, at 1, 16 and 64 connections, in 1 and 2 load processes: exactly the client-ceiling
   step of `embprof run load`.
3. The thread-per-request client it replaced (httpx, Python threads), at the same connections, against
   the same endpoint.

Each figure is a 3 s window; the ratios are measured in this run. Target: step 2 at least 5,000
requests/s for one-text requests on this 2-core machine.

    .venv/bin/python benchmarks/client_ceiling.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys

RAW_CLIENT = r"""
import asyncio, json, sys, time
async def main(port, conc, secs):
    body = json.dumps({"content": ["x"], "embd_normalize": 2}).encode()
    req = b"POST /embedding HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    n = 0
    end = time.perf_counter() + secs
    async def one():
        nonlocal n
        r, w = await asyncio.open_connection("127.0.0.1", port)
        while time.perf_counter() < end:
            w.write(req)
            head = await r.readuntil(b"\r\n\r\n")
            length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")][0].split(b":")[1])
            await r.readexactly(length)
            n += 1
        w.close()
    t0 = time.perf_counter()
    await asyncio.gather(*[one() for _ in range(conc)])
    print(n / (time.perf_counter() - t0))
try:
    import uvloop
    uvloop.run(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])))
except ImportError:
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])))
"""


def raw_client(port: int, connections: int, seconds: float) -> float:
    out = subprocess.run([sys.executable, "-c", RAW_CLIENT, str(port), str(connections), str(seconds)], capture_output=True, text=True,
                         check=True).stdout
    return float(out.strip())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()

    from embprof.engine.trivial_server import FAST_SERVER, FastTrivialServer
    from embprof.engine.workloads.load import client_ceiling
    from http_client import ceiling as threads_client  # the thread-per-request client's own ceiling, as measured before

    with FastTrivialServer() as server:
        port = server.port
        print(f"endpoint: {FAST_SERVER}, at {server.url}")
        raw = raw_client(port, 16, args.seconds)
        print(f"1. the endpoint's own capacity (a raw asyncio client, 16 connections): {raw:,.0f} requests/s")
    print("2. embprof's load client (the client-ceiling step), one-text requests:")
    best = 0.0
    ours: dict[int, float] = {}
    for processes in (1, 2):
        for connections in (1, 16, 64):
            probe = client_ceiling(connections, args.seconds, 1, processes=processes)
            rate = probe.ceiling.requests_per_s or 0.0
            best = max(best, rate)
            if processes == 1:
                ours[connections] = rate
            failed = f" ({sum(probe.failed.values())} failed)" if probe.failed else ""
            print(f"  {processes} process{'es' if processes > 1 else ''}, {connections:>2} connections: {rate:9,.0f} requests/s{failed}")
    print("3. the thread-per-request client it replaced (httpx threads), same endpoint:")
    with FastTrivialServer() as server:
        for connections in (1, 16, 64):
            old = threads_client(server.url, connections, args.seconds)
            print(f"  {connections:>2} threads: {old:9,.0f} requests/s; the load client sends {ours[connections] / old:.1f}x as many")
    print(f"best of step 2: {best:,.0f} requests/s ({'meets' if best >= 5000 else 'BELOW'} the 5,000 requests/s target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
