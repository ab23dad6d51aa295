"""Hostile embedding servers: every way a server can answer badly ends in a classified failure with
one sentence, never a traceback, and what was measured until then is kept.

Fault classes covered, against tests/fault_server.py: each fault mode once through the real
command line (exit code, stderr, the saved snapshot), and every case, for both APIs where they
differ, through HttpTarget in this process:

* connecting (exit 2, ``embprof: error: …``, nothing saved): connection refused; a connection
  closed without an answer; /v1/models that is HTML, has no ``data``, an empty list, items
  without ``id``, an ``id`` that is not text, a list where an object belongs, 401, a declared
  300 MiB; llama.cpp's /props that is a list.
* the connection during a run (exit 1, the run saved as failed): timeout (slow), a byte now and
  then (the whole request bounded by --timeout), dropped, the server dying mid-run.
* the status during a run: 401, 403, 404, 413, 429, 500, 503 with JSON error bodies; 502 with an
  HTML page; 503 with an empty body; 500 with a 4 MiB message (kept to 200 characters); 500 with
  terminal control characters in the message (escaped); a redirect; llama.cpp's "too large".
* the body: HTML, truncated JSON, an empty body, JSON that is not an object, a declared 300 MiB,
  a chunked answer past the read limit (in this process only, with a lowered limit).
* the shape: no ``data``, ``data`` not a list, items not objects, no ``embedding``, an embedding
  that is a string or holds strings, true/false, nulls or nested lists, one vector per token,
  ragged vectors in one answer, a dimension that changes between answers, empty vectors, NaN,
  -Infinity, a number past float32, an integer past any float; ``index`` missing from some items,
  duplicated, out of range, negative, a float, a string; fewer or more vectors than texts.
* tolerated: no ``index`` at all (taken in order), indexes in any order (put in order), odd
  values in /props, a broken /v1/models when --server-model names the model; vectors of all zeros
  (their cosine scores 0, without a numpy warning, and the run notes it).
* the URL: surrounding whitespace, a control character, a ?query or #fragment are refused in one
  sentence before anything is sent (the query unshown); user:password@ is percent-decoded for basic
  auth, so that a password may hold @ : /.

Property tests (hypothesis) check the answer parsers on any JSON value, any near-valid answer and
any bytes: a well-formed matrix or a classified AnswerError, nothing else.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import warnings
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fault_server
from embprof.engine.errors import UserError
from embprof.engine.events import Note, RequestTimed
from embprof.engine.plan import ServerTarget
from embprof.engine.snapshot import Snapshot
from embprof.engine.targets import protocol
from embprof.engine.targets.http import HttpTarget, ServerFault
from embprof.engine.targets.protocol import AnswerError, BadShape, decode_answer, embeddings_of, model_id_of, parse_answer
from cli_helpers import run_cli, snapshot_from

EXIT_OK, EXIT_FAILED, EXIT_INPUT = 0, 1, 2
slow = pytest.mark.slow  # the tests that run the command line in a child process
# Children run at once: each spends most of its time importing, so a few overlap well even on two cores.
CLI_WORKERS = 3


@dataclass(frozen=True)
class Case:
    """One command-line run against a fault server, and what it must end in."""

    mode: str  # the fault server's mode; "refused" for a port nothing listens on
    rc: int
    kind: str = ""  # exit 1: the failed request's error_kind
    text: str = ""  # exit 1: in the request's error; exit 2: in the one line on stderr
    api: str = "openai"
    settings: tuple[tuple[str, Any], ...] = ()
    args: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.mode}-{self.api}" + ("-" + "-".join(a.lstrip("-") for a in self.args) if self.args else "")


def run_fault(mode: str, kind: str, text: str, api: str = "openai", args: tuple[str, ...] = (), **settings: Any) -> Case:
    return Case(mode, EXIT_FAILED, kind, text, api, tuple(settings.items()), args)


def connect_fault(mode: str, text: str, api: str = "openai") -> Case:
    return Case(mode, EXIT_INPUT, text=text, api=api)


def usable(mode: str, api: str = "openai", args: tuple[str, ...] = ()) -> Case:
    return Case(mode, EXIT_OK, api=api, args=args)


# -- during a run: the request fails, the run is saved as failed, exit 1 -----------------------------------
RUN_FAULTS = [
    # the connection
    run_fault("slow", "timeout", "", args=("--timeout", "0.5"), slow_s=2.0),
    run_fault("trickle", "timeout", "still arriving after 0.5 s", args=("--timeout", "0.5")),
    run_fault("drop", "connection", "disconnected"),
    run_fault("die", "connection", "", ok_first=2),
    # the status
    run_fault("401", "http 401", "Incorrect API key provided"),
    run_fault("403", "http 403", "may not use this model"),
    run_fault("404", "http 404", "does not exist"),
    run_fault("413", "http 413", "Request Entity Too Large"),
    run_fault("429", "http 429", "Rate limit reached"),
    run_fault("500", "http 500", "boom"),
    run_fault("503", "http 503", "overloaded"),
    run_fault("html502", "http 502", "HTTP 502 (Bad Gateway): 502 Bad Gateway"),
    run_fault("empty503", "http 503", "with no message"),
    run_fault("huge500", "http 500", "AAAA"),
    run_fault("ctrl500", "http 500", "bad\\x1b[2J\\x1b]0;owned\\x07 thing"),
    run_fault("redirect", "http 307", "redirects to 'http://elsewhere.invalid/v1/embeddings'"),
    run_fault("toolarge", "too large", "-b and -ub", api="llama"),
    # the body
    run_fault("notjson", "bad body", "HTML, not JSON"),
    run_fault("notjson", "bad body", "HTML, not JSON", api="llama"),
    run_fault("truncated", "bad body", "cut off or malformed, not JSON"),
    run_fault("empty", "bad body", "empty, not JSON"),
    run_fault("hugebody", "bad body", "declares 300 MiB, more than the 256 MiB"),
    run_fault("scalar", "bad shape", "a JSON number, not an object"),
    run_fault("scalar", "bad shape", "neither a list nor an object", api="llama"),
    run_fault("string", "bad shape", "a JSON string, not an object"),
    # the shape
    run_fault("badshape", "bad shape", "no 'data' list"),
    run_fault("nodata", "bad shape", "no 'data' list"),
    run_fault("datanotlist", "bad shape", "no 'data' list"),
    run_fault("itemnotobject", "bad shape", "an item of the answer is a JSON list, not an object"),
    run_fault("itemnotobject", "bad shape", "not an object", api="llama"),
    run_fault("noembedding", "bad shape", "has no 'embedding'"),
    run_fault("embstring", "bad shape", "a string, not a list of numbers"),
    run_fault("embstrings", "bad shape", "holds strings where numbers belong"),
    run_fault("embbools", "bad shape", "holds true/false where numbers belong"),
    run_fault("embnulls", "bad shape", "holds nulls where numbers belong"),
    run_fault("embnested", "bad shape", "holds nested lists where numbers belong"),
    run_fault("embnested", "bad shape", "holds nested lists where numbers belong", api="llama"),
    run_fault("pertoken", "bad shape", "one vector per token", api="llama"),
    run_fault("pertoken", "bad shape", "nested lists"),
    run_fault("ragged", "bad shape", "differ in length (4 to 5 numbers)"),
    run_fault("ragged", "bad shape", "differ in length (4 to 5 numbers)", api="llama"),
    run_fault("dimchange", "bad shape", "have 5 numbers, the server's earlier ones 4", ok_first=1),
    run_fault("emptyvec", "bad shape", "an embedding is empty"),
    run_fault("nan", "bad shape", "not finite"),
    run_fault("inf", "bad shape", "not finite"),
    run_fault("bignum", "bad shape", "not finite"),
    run_fault("hugeint", "bad shape", "too large for a float"),
    run_fault("noindex", "bad shape", "1 of the answer's 8 items have no 'index'"),
    run_fault("dupindex", "bad shape", "the 'index' 0 comes twice"),
    run_fault("outofrange", "bad shape", "an 'index' is 8, outside 0 to 7"),
    run_fault("negindex", "bad shape", "an 'index' is -1, outside 0 to 7"),
    run_fault("floatindex", "bad shape", "an 'index' is a JSON number, not an integer"),
    run_fault("strindex", "bad shape", "an 'index' is a JSON string, not an integer"),
    run_fault("fewer", "bad shape", "8 texts were sent, 7 embeddings came back"),
    run_fault("more", "bad shape", "8 texts were sent, 9 embeddings came back"),
    run_fault("more", "bad shape", "8 texts were sent, 9 embeddings came back", api="llama"),
]

# -- before anything is measured: one sentence, exit 2, nothing saved ----------------------------------------
CONNECT_FAULTS = [
    connect_fault("refused", "connection refused (is the server running?)"),
    connect_fault("models-html", "answered with something that is not JSON"),
    connect_fault("models-nodata", "/v1/models is not what an embedding server answers (its model list has no 'data' list)"),
    connect_fault("models-empty", "its model list is empty"),
    connect_fault("models-noid", "its first model has no 'id' text"),
    connect_fault("models-badid", "its first model has no 'id' text"),
    connect_fault("models-notobject", "its model list has no 'data' list"),
    connect_fault("models-401", "refused the credentials (HTTP 401)"),
    connect_fault("models-huge", "/v1/models answered with too much (the answer declares 300 MiB, more than the 16 MiB read"),
    connect_fault("get-drop", "the connection to http://127.0.0.1"),
    connect_fault("get-drop", "the connection to http://127.0.0.1", api="llama"),
    connect_fault("props-list", "/props is not what an embedding server answers (/props is a JSON list, not an object)", api="llama"),
]


def once_per_mode(cases: list[Case]) -> list[Case]:
    """The first case of each mode: the command line runs each fault once (a child costs about a
    second of CPU); the in-process tests below take every case, both APIs."""
    seen: dict[str, Case] = {}
    for case in cases:
        seen.setdefault(case.mode, case)
    return list(seen.values())


# -- odd but usable: the run completes ---------------------------------------------------------------------------
USABLE = [
    usable("allnoindex"),
    usable("shuffled"),
    usable("shuffled", api="llama"),
    usable("props-odd", api="llama"),
    usable("models-html", args=("--server-model", "m")),
]


@dataclass
class CliRun:
    rc: int
    out: str
    err: str
    embedding_requests: int | None  # what the server was asked (None: no server)


def child_env(folder: Path) -> dict[str, str]:
    """As the cli_env fixture makes it, in a folder of the run's own (the runs overlap)."""
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "XDG_CACHE_HOME": str(folder / "cache"), "EMBPROF_PROFILES_DIR": str(folder / "profiles"),
                "PYTHONUNBUFFERED": "1", "COLUMNS": "120"})
    env.pop("EMBPROF_SPEED_TEXT", None)
    return env


def run_case(case: Case, folder: Path) -> CliRun:
    if case.mode == "refused":
        from llama_server import free_port

        rc, out, err, _ = run_cli(encode(f"http://127.0.0.1:{free_port()}", case), child_env(folder))
        return CliRun(rc, out, err, None)
    s = fault_server.start(case.mode, **dict(case.settings))
    try:
        rc, out, err, _ = run_cli(encode(s.url, case), child_env(folder))
    finally:
        try:
            s.__exit__()
        except OSError:  # a server that died on purpose is closed already
            pass
    return CliRun(rc, out, err, s.state.count)


def encode(url: str, case: Case) -> list[str]:
    return ["run", "encode", "--server", url, "--api", case.api, "--batch-size", "8", "--repeats", "1", *case.args]


@pytest.fixture(scope="module")
def cli_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The command-line run of a case. The first call starts every selected case's run, a few at a
    time, so that later tests find theirs done; a case not selected with them runs when asked for."""
    cases = [item.callspec.params["case"] for item in request.session.items
             if getattr(item, "module", None) is request.module and hasattr(item, "callspec")
             and isinstance(item.callspec.params.get("case"), Case) and item.get_closest_marker("slow")]
    pool = ThreadPoolExecutor(max_workers=CLI_WORKERS, thread_name_prefix="embprof-fault-cli")
    futures: dict[Case, Future[CliRun]] = {}

    def submit(case: Case) -> Future[CliRun]:
        if case not in futures:
            futures[case] = pool.submit(run_case, case, tmp_path_factory.mktemp("fault-cli"))
        return futures[case]

    def get(case: Case) -> CliRun:
        for c in cases:
            submit(c)
        return submit(case).result(timeout=120)

    yield get
    pool.shutdown(wait=True, cancel_futures=True)


def requests_of(snap: Snapshot) -> list[RequestTimed]:
    return [e for e in snap.events if isinstance(e, RequestTimed)]


@slow
@pytest.mark.parametrize("case", once_per_mode(RUN_FAULTS), ids=lambda c: c.id)
def test_a_fault_during_a_run_is_classified_and_saved(cli_runs: Any, case: Case) -> None:
    run = cli_runs(case)
    assert run.rc == EXIT_FAILED, (run.rc, run.err)
    assert "Traceback" not in run.err and "\x1b" not in run.err, run.err
    assert f"request failed ({case.kind})" in run.err, run.err
    _, snap = snapshot_from(run.out)
    assert snap.status == "failed"
    last = requests_of(snap)[-1]
    assert last.error_kind == case.kind and case.text in last.error, (last.error_kind, last.error)
    # One sentence, on one line, of bounded length whatever the server sent.
    assert "\n" not in last.error and len(last.error) <= 260, last.error
    assert snap.summary.errors[-1].message.startswith(f"request failed ({case.kind}): ")
    assert snap.summary.results["requests"].errors_by_kind == {case.kind: 1}


@slow
@pytest.mark.parametrize("case", once_per_mode(CONNECT_FAULTS), ids=lambda c: c.id)
def test_a_fault_while_connecting_is_one_sentence(cli_runs: Any, case: Case) -> None:
    run = cli_runs(case)
    assert run.rc == EXIT_INPUT, (run.rc, run.err)
    assert run.out == "" and run.err.startswith("embprof: error: ") and run.err.count("\n") == 1, run.err
    assert "Traceback" not in run.err and case.text in run.err, run.err
    assert not run.embedding_requests  # nothing was measured


@slow
@pytest.mark.parametrize("case", once_per_mode(USABLE), ids=lambda c: c.id)
def test_odd_but_usable_answers_complete(cli_runs: Any, case: Case) -> None:
    run = cli_runs(case)
    assert run.rc == EXIT_OK, run.err
    _, snap = snapshot_from(run.out)
    assert snap.status == "complete" and not any(r.error_kind for r in requests_of(snap))


def target_for(url: str, case: Case) -> HttpTarget:
    args = dict(zip(case.args[::2], case.args[1::2]))
    return HttpTarget(ServerTarget(url=url, api=case.api, timeout_s=float(args.get("--timeout", 60)),
                                   server_model=args.get("--server-model")))


@pytest.mark.parametrize("case", RUN_FAULTS, ids=lambda c: c.id)
def test_every_fault_during_a_run_in_process(server: Any, case: Case) -> None:
    target = target_for(server(case.mode, **dict(case.settings)), case)
    texts = [f"text {i}" for i in range(8)]
    try:
        target.resolve()
        with pytest.raises(ServerFault) as failure:
            for _ in range(4):  # at most ok_first answers come first
                target.request(None, texts)
    finally:
        target.close()
    assert target.errors_by_kind == {case.kind: 1}
    message = str(failure.value)
    assert message.startswith(f"request failed ({case.kind}): ") and case.text in message, message
    assert "\n" not in message and len(message) <= 300


@pytest.mark.parametrize("case", CONNECT_FAULTS, ids=lambda c: c.id)
def test_every_fault_while_connecting_in_process(server: Any, case: Case) -> None:
    from llama_server import free_port

    url = f"http://127.0.0.1:{free_port()}" if case.mode == "refused" else server(case.mode)
    target = target_for(url, case)
    try:
        with pytest.raises(UserError) as failure:
            target.resolve()
    finally:
        target.close()
    assert case.text in str(failure.value) and "\n" not in str(failure.value)


@pytest.mark.parametrize("case", USABLE, ids=lambda c: c.id)
def test_every_usable_answer_in_process(server: Any, case: Case) -> None:
    target = target_for(server(case.mode), case)
    texts = [f"text {i}" for i in range(8)]
    try:
        target.resolve()
        vectors, _, _ = target.request(None, texts)
    finally:
        target.close()
    assert vectors.shape == (8, len(fault_server.VECTOR)) and target.errors == 0
    assert target.describe().model_name  # odd /props values leave the facts unknown, not broken


# -- in this process: what the command line cannot show ---------------------------------------------------------
def test_an_endless_answer_is_cut_at_the_read_limit(server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # The real limit is 256 MiB; a smaller one shows the same refusal without sending that much.
    monkeypatch.setattr(protocol, "MAX_ANSWER_BYTES", 4 * 2**20)
    target = HttpTarget(ServerTarget(url=server("endless"), api="openai"))
    try:
        outcome = target.try_request(["a", "b"])
    finally:
        target.close()
    assert outcome.error_kind == "bad body" and "goes on, more than the 4 MiB" in outcome.error, outcome.error
    assert outcome.received == 0 and outcome.vectors is None


def test_indexes_in_any_order_are_put_in_order() -> None:
    rows = [[float(i), 1.0] for i in range(5)]
    order = [3, 0, 4, 1, 2]
    answer = {"data": [{"index": i, "embedding": rows[i]} for i in order]}
    matrix, tokens = embeddings_of(answer, 5, "openai")
    assert matrix.tolist() == rows and tokens is None
    llama = [{"index": i, "embedding": [rows[i]]} for i in order]
    assert embeddings_of(llama, 5, "llama")[0].tolist() == rows


def test_reported_tokens_are_whole_counts_or_unknown() -> None:
    answer: dict[str, Any] = {"data": [{"index": 0, "embedding": [1.0]}]}
    for usage, tokens in [({"prompt_tokens": 7}, 7), ({"prompt_tokens": 7.0}, 7), ({"prompt_tokens": math.nan}, None),
                          ({"prompt_tokens": math.inf}, None), ({"prompt_tokens": True}, None), ({"prompt_tokens": -1}, None),
                          ({"prompt_tokens": "7"}, None), ("7", None)]:
        assert embeddings_of({**answer, "usage": usage}, 1, "openai")[1] == tokens, usage


def test_one_run_keeps_one_dimension_across_answers() -> None:
    target = HttpTarget(ServerTarget(url="http://127.0.0.1:9", api="openai"))
    target.parse({"data": [{"index": 0, "embedding": [1.0, 2.0]}]}, 1)
    with pytest.raises(BadShape, match="have 3 numbers, the server's earlier ones 2"):
        target.parse({"data": [{"index": 0, "embedding": [1.0, 2.0, 3.0]}]}, 1)


# -- the URL ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("url", "text"), [
    (" http://127.0.0.1:8080", "holds a space or control character"),
    ("http://127.0.0.1:8080\n", "holds a space or control character"),
    ("http://127.0.0.1:80\t80", "holds a space or control character"),
    ("http://127.0.0.1:8080/?key=abc", "without ?query or #fragment: give 'http://127.0.0.1:8080/'"),
    ("http://127.0.0.1:8080?", "without ?query or #fragment"),
    ("http://127.0.0.1:8080/#abc", "without ?query or #fragment"),
    ("http://alice:abc@127.0.0.1:8080/?key=abc", "give 'http://127.0.0.1:8080/'"),
    ("http://alice:abc@127.0.0.1:99999", "'http://127.0.0.1:99999' has no valid port"),
    ("http://alice:abc@127.0.0.1:0", "has no valid port"),
])
def test_a_server_url_that_cannot_be_sent_as_is_is_refused_in_one_sentence(url: str, text: str) -> None:
    with pytest.raises(UserError) as refused:
        ServerTarget(url=url)
    message = str(refused.value)
    # One line, and neither the URL's credentials nor its query (which may hold a key) in it.
    assert text in message and "\n" not in message and "abc" not in message, message


@slow
def test_a_pasted_space_or_a_query_in_the_url_is_one_sentence_on_the_command_line(server: Any, tmp_path: Path) -> None:
    url = server("ok")
    for written, text in ((f" {url}", "holds a space or control character"), (f"{url}/?key=abc", "without ?query or #fragment")):
        rc, out, err, _ = run_cli(["run", "encode", "--server", written, "--api", "openai"], child_env(tmp_path))
        assert rc == EXIT_INPUT and out == "" and err.startswith("embprof: error: ") and err.count("\n") == 1, err
        assert text in err and "abc" not in err, err
    assert fault_server.STATE.count == 0  # refused before anything was sent


def test_url_credentials_are_percent_decoded_for_basic_auth(server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    url = server("ok")
    # A password with @ : / can only be written percent-encoded; the server must get it decoded.
    target = HttpTarget(ServerTarget(url=url.replace("http://", "http://al%69ce:p%40ss%3Aw%2Frd@"), api="openai"))
    try:
        target.resolve()
        target.request(None, ["a"])
    finally:
        target.close()
    assert fault_server.STATE.auth[-1] == "Basic " + base64.b64encode(b"alice:p@ss:w/rd").decode()
    # With an API key, the key is sent instead, as a bearer token.
    monkeypatch.setenv("EMBPROF_TEST_KEY", "sk-test")
    target = HttpTarget(ServerTarget(url=url.replace("http://", "http://alice:pw@"), api="openai", api_key_env="EMBPROF_TEST_KEY"))
    try:
        target.request(None, ["a"])
    finally:
        target.close()
    assert fault_server.STATE.auth[-1] == "Bearer sk-test"


# -- vectors of all zeros -----------------------------------------------------------------------------------------
class _Ctx:
    """What finish() uses of a RunContext: a clock and somewhere to put events."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def now(self) -> int:
        return 0

    def emit(self, event: Any) -> None:
        self.events.append(event)


def test_a_zero_vector_scores_zero_without_a_warning_and_is_noted() -> None:
    target = HttpTarget(ServerTarget(url="http://127.0.0.1:9", api="openai"))
    queries = np.array([[0.0, 0.0], [3.0, 4.0]], dtype=np.float32)
    documents = np.array([[0.0, 0.0], [4.0, 3.0], [1e-40, 0.0], [3e38, 3e38]], dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's divide-by-zero warning would fail here
        scores = target.similarity(queries, documents)
    assert np.isfinite(scores).all()
    assert scores[0].tolist() == [0.0, 0.0, 0.0, 0.0] and scores[1][0] == 0.0
    # A subnormal and a vector near float32's limit keep their direction.
    assert scores[1][1:].tolist() == pytest.approx([0.96, 0.6, 0.7 * math.sqrt(2)])
    ctx = _Ctx()
    target.finish(ctx)  # type: ignore[arg-type]
    notes = [e for e in ctx.events if isinstance(e, Note)]
    assert len(notes) == 1 and notes[0].level == "warning" and "2 vector(s) of all zeros" in notes[0].text


@slow
def test_a_server_of_zero_vectors_gives_a_readable_similarity_run(server: Any, tmp_path: Path) -> None:
    rc, out, err, _ = run_cli(["run", "similarity", "--server", server("zeros"), "--api", "openai"], child_env(tmp_path))
    assert rc == EXIT_OK, err
    assert "Warning" not in err and not re.search(r"\bnan\b", out, re.I), err
    _, snap = snapshot_from(out)  # NaN scores were written as nulls, which the snapshot could not read back
    sim = snap.summary.results["similarity"]
    assert all(score == 0.0 for row in sim.scores for score in row)
    assert any("of all zeros" in note for note in snap.summary.notes)


# -- properties: any answer parses well or fails classified -----------------------------------------------------
JSON_LEAVES = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
JSON = st.recursive(JSON_LEAVES, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
                    max_leaves=30)
# Hostile parts for near-valid answers.
NUMBER = st.floats(width=32) | st.integers(-3, 3) | st.sampled_from([math.nan, math.inf, 1e39, 10**400])
VECTOR = st.lists(NUMBER, min_size=0, max_size=4)
EMBEDDING = VECTOR | st.lists(VECTOR, max_size=2) | JSON_LEAVES
INDEX = st.integers(-1, 4) | st.none() | st.sampled_from([0.0, 1.5, "0", True])
GOOD_NUMBER = st.floats(-1, 1, width=32) | st.integers(-3, 3)
APIS = st.sampled_from(["openai", "llama"])
COUNTS = st.integers(0, 4)


def rarely(draw: st.DrawFn) -> bool:
    """True about one time in eight: most of an answer stays valid, so each draw breaks one or two things."""
    return draw(st.integers(0, 7)) == 0


@st.composite
def near_valid(draw: st.DrawFn) -> tuple[Any, int, str]:
    """(answer, texts sent, api): an answer of the API's shape that is valid but for a few hostile parts."""
    api = draw(APIS)
    n = draw(COUNTS)
    dim = draw(st.integers(1, 4))
    count = max(0, n + (draw(st.sampled_from([-1, 1])) if rarely(draw) else 0))
    order = draw(st.permutations(range(count)))
    no_index = rarely(draw)
    items: list[Any] = []
    for pos in range(count):
        vector: Any = draw(EMBEDDING if rarely(draw) else st.lists(GOOD_NUMBER, min_size=dim, max_size=dim))
        if rarely(draw):
            vector = draw(VECTOR)
        item: dict[str, Any] = {"embedding": [vector] if api == "llama" and not rarely(draw) else vector}
        if not no_index:
            item["index"] = draw(INDEX) if rarely(draw) else order[pos]
        if rarely(draw):
            item.pop("embedding")
        items.append(draw(JSON_LEAVES) if rarely(draw) else item)
    value: Any
    if api == "openai":
        value = {"object": "list", "data": items, "usage": {"prompt_tokens": draw(JSON_LEAVES) if rarely(draw) else n}}
    else:
        value = items[0] if count == 1 and rarely(draw) else items
    return (draw(JSON) if rarely(draw) else value), n, api


BOUNDED = settings(max_examples=300, deadline=None, derandomize=True)


def parsed_or_classified(call: Any, n: int) -> None:
    """``call()`` gives an (n × dim) finite float32 matrix and a whole token count or none, or raises AnswerError."""
    try:
        matrix, tokens = call()
    except AnswerError as exc:
        assert exc.kind in ("bad shape", "bad body")
        message = str(exc)
        assert message and "\n" not in message and len(message) <= 200, message
        return
    assert isinstance(matrix, np.ndarray) and matrix.dtype == np.float32 and matrix.ndim == 2
    assert matrix.shape[0] == n and (n == 0 or matrix.shape[1] > 0)
    assert np.isfinite(matrix).all()
    assert tokens is None or (type(tokens) is int and tokens >= 0)


@BOUNDED
@given(value=JSON, n=COUNTS, api=APIS)
def test_any_json_value_parses_or_is_classified(value: Any, n: int, api: str) -> None:
    parsed_or_classified(lambda: embeddings_of(value, n, api), n)


@BOUNDED
@given(answer=near_valid())
def test_any_near_valid_answer_parses_or_is_classified(answer: tuple[Any, int, str]) -> None:
    value, n, api = answer
    parsed_or_classified(lambda: embeddings_of(value, n, api), n)


@BOUNDED
@given(answer=near_valid(), cut=st.integers(0, 400))
def test_any_answer_as_bytes_parses_or_is_classified(answer: tuple[Any, int, str], cut: int) -> None:
    # As Python's json writes it (NaN and Infinity literals, big integers), whole and cut short.
    value, n, api = answer
    raw = json.dumps(value).encode()
    parsed_or_classified(lambda: parse_answer(raw, n, api), n)
    parsed_or_classified(lambda: parse_answer(raw[:cut], n, api), n)


@BOUNDED
@given(raw=st.binary(max_size=200), n=COUNTS, api=APIS)
def test_any_bytes_parse_or_are_classified(raw: bytes, n: int, api: str) -> None:
    parsed_or_classified(lambda: parse_answer(raw, n, api), n)


@BOUNDED
@given(rows=st.integers(1, 4).flatmap(lambda dim: st.lists(st.lists(GOOD_NUMBER, min_size=dim, max_size=dim), max_size=5)),
       data=st.data(), api=APIS)
def test_a_valid_answer_in_any_order_gives_its_rows_in_index_order(rows: list[list[float]], data: st.DataObject, api: str) -> None:
    order = data.draw(st.permutations(range(len(rows))))
    items = [{"index": i, "embedding": rows[i] if api == "openai" else [rows[i]]} for i in order]
    matrix, _ = embeddings_of({"data": items} if api == "openai" else items, len(rows), api)
    expected = np.array(rows, dtype=np.float32).reshape(len(rows), -1) if rows else np.zeros((0, 0), np.float32)
    assert matrix.shape == expected.shape and (matrix == expected).all()


def test_deep_nesting_is_classified() -> None:
    for raw in (b"[" * 100_000, b"[" * 5000 + b"]" * 5000, b'{"data": ' + b"[" * 5000 + b"]" * 5000 + b"}"):
        for api in ("openai", "llama"):
            parsed_or_classified(lambda raw=raw, api=api: parse_answer(raw, 1, api), 1)


MODELS = st.fixed_dictionaries({}, optional={"data": st.lists(st.fixed_dictionaries({}, optional={"id": JSON_LEAVES}) | JSON, max_size=3) | JSON})


@BOUNDED
@given(value=MODELS | JSON)
def test_any_model_list_gives_a_model_id_or_is_classified(value: Any) -> None:
    try:
        model = model_id_of(value)
    except BadShape as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert isinstance(model, str) and model.strip() and len(model) <= protocol.MODEL_ID_CHARS


@BOUNDED
@given(raw=st.binary(max_size=300) | JSON.map(lambda v: json.dumps({"error": {"message": v}}).encode()))
def test_any_error_body_gives_a_short_line(raw: bytes) -> None:
    message = protocol.server_message(raw)
    assert len(message) <= protocol.MESSAGE_CHARS
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in message), message


@BOUNDED
@given(raw=st.binary(max_size=300))
def test_any_bytes_decode_or_are_a_bad_body(raw: bytes) -> None:
    try:
        decode_answer(raw)
    except AnswerError as exc:
        assert exc.kind == "bad body" and "\n" not in str(exc)
