"""A small local embedding server that misbehaves on purpose, for the fault tests.

It answers llama.cpp's and the OpenAI shapes like engine/trivial_server.py, except as told:
``mode`` says how each request (after ``ok_first`` good ones) goes wrong, ``every`` makes only
every n-th request fail, and ``ok_at`` names requests (counted from 1) that are answered well.
It records the Authorization header it was sent. Each server started has
its own State (``server.state``), so that several can run at once; ``STATE`` is the latest one's.

The modes, by what goes wrong:

* the connection: ``slow`` (answers after ``slow_s``), ``drop`` (closes without answering),
  ``die`` (closes and stops serving: later connects are refused), ``trickle`` (a byte now and
  then, each in time for a read timeout), ``hugebody`` (declares 300 MiB), ``endless`` (a chunked
  answer that does not end before 64 MiB);
* the stall, each going on until the client leaves (STALL_MODES): ``endless1xx`` (an informational
  ``102 Processing`` answer after another), ``dribble`` (header lines one after another, never the
  blank line that ends them), ``drip`` (a body one byte at a time), ``endless-status`` (a status line
  one byte at a time, never finished); each piece comes in time for any read timeout;
* the status: any three digits (``401``, ``429``, ``503`` … with a JSON error), ``toolarge``
  (llama.cpp's batch message), ``html502``, ``empty503``, ``huge500`` (a 4 MiB message),
  ``ctrl500`` (terminal control characters in the message), ``redirect``;
* the body: ``notjson`` (HTML), ``truncated``, ``empty``, ``scalar``, ``string``;
* the shape (ANSWER_MODES): ``badshape``, ``nodata``, ``datanotlist``, ``itemnotobject``,
  ``noembedding``, ``embstring``, ``embstrings``, ``embbools``, ``embnulls``, ``embnested``,
  ``pertoken``, ``ragged``, ``emptyvec``, ``dimchange``, ``nan``, ``inf``, ``bignum``, ``hugeint``,
  ``noindex``, ``dupindex``, ``outofrange``, ``negindex``, ``floatindex``, ``strindex``,
  ``fewer``, ``more``; and three that are well-formed: ``allnoindex``, ``shuffled`` and ``zeros``
  (every vector all zeros, whose cosine is undefined);
* what the server says of itself, before any embedding (GET_MODES): ``health-404`` (llama.cpp's
  /health answers 404), ``metrics-nan`` (llama.cpp's /metrics with a rate over no time yet: NaN and
  Inf beside a number), ``models-html``,
  ``models-nodata``, ``models-empty``, ``models-noid``, ``models-badid``, ``models-notobject``,
  ``models-401``, ``models-huge``, ``props-list``, ``props-odd`` (well-formed JSON with odd
  values, which is tolerated), ``get-drop``;
* the credentials quoted back (ECHO_MODES): ``echo400``, ``echo401``, ``echo500`` (a JSON error,
  and a reason phrase, that quote the Authorization header), ``echotext`` (a 200 answer of text
  that quotes it), ``echostatus`` (a broken status line that quotes it); before any embedding,
  ``models-echo`` (the first model's id quotes it), ``props-echo`` (llama.cpp's build and model
  file quote it), ``get-echostatus`` (a broken status line).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from embprof.engine.trivial_server import VECTOR, TrivialEmbeddingServer, TrivialHandler

# How a well-formed answer is changed: (the vectors, their indexes) for n texts -> the vectors and
# indexes to send (an index of None leaves the item without one).
Vectors = list[Any]
Indexes = list[Any]
_SHAPES: dict[str, Callable[[Vectors, Indexes], tuple[Vectors, Indexes]]] = {
    "ragged": lambda v, ix: ([x + [0.5] * (i % 2) for i, x in enumerate(v)], ix),
    "emptyvec": lambda v, ix: ([[] for _ in v], ix),
    "dimchange": lambda v, ix: ([x + [0.5] for x in v], ix),
    "embstrings": lambda v, ix: ([["0.5"] * len(v[0])] + v[1:], ix),
    "embbools": lambda v, ix: ([[True, False] * (len(v[0]) // 2)] + v[1:], ix),
    "embnulls": lambda v, ix: ([[None] * len(v[0])] + v[1:], ix),
    "embnested": lambda v, ix: ([[[0.5, 0.5], [0.5, 0.5]]] + v[1:], ix),
    "embstring": lambda v, ix: (["AAAAPwAAAD8AAAA/AAAAPw=="] + v[1:], ix),
    "nan": lambda v, ix: ([[float("nan")] + v[0][1:]] + v[1:], ix),
    "inf": lambda v, ix: ([[float("-inf")] + v[0][1:]] + v[1:], ix),
    "bignum": lambda v, ix: ([[1e39] + v[0][1:]] + v[1:], ix),
    "hugeint": lambda v, ix: ([[10**400] + v[0][1:]] + v[1:], ix),
    "noindex": lambda v, ix: (v, [None] + ix[1:]),
    "allnoindex": lambda v, ix: (v, [None] * len(ix)),
    "dupindex": lambda v, ix: (v, [0] + ix[:-1]),
    "outofrange": lambda v, ix: (v, ix[:-1] + [len(ix)]),
    "negindex": lambda v, ix: (v, [-1] + ix[1:]),
    "floatindex": lambda v, ix: (v, [float(i) for i in ix]),
    "strindex": lambda v, ix: (v, [str(i) for i in ix]),
    "shuffled": lambda v, ix: (v[::-1], ix[::-1]),
    "zeros": lambda v, ix: ([[0.0] * len(x) for x in v], ix),
    "fewer": lambda v, ix: (v[:-1], ix[:-1]),
    "more": lambda v, ix: (v + [v[0]], ix + [len(ix)]),
}
# Answers whose top level is wrong, for either API.
_TOPS: dict[str, Any] = {
    "badshape": {"embeddings": "nope"},
    "nodata": {"object": "list", "model": "m"},
    "datanotlist": {"data": {"index": 0, "embedding": VECTOR}},
    "scalar": 42,
    "string": "embeddings",
}
ANSWER_MODES = (*_SHAPES, *_TOPS, "itemnotobject", "noembedding", "pertoken")
GET_ECHO_MODES = ("models-echo", "props-echo", "get-echostatus")
# The stalling modes send a piece every STALL_S until the client has gone (or STALL_MAX_S have passed).
STALL_MODES = ("endless1xx", "dribble", "drip", "endless-status")
STALL_S = 0.05
STALL_MAX_S = 120.0
METRICS_NAN = (b"# HELP llamacpp:prompt_tokens_seconds a rate\nllamacpp:prompt_tokens_seconds nan\n"
               b"llamacpp:predicted_tokens_seconds inf\nllamacpp:requests_processing 0\n")
GET_MODES = ("health-404", "metrics-nan",
             "models-html", "models-nodata", "models-empty", "models-noid", "models-badid", "models-notobject", "models-401",
             "models-huge", "props-list", "props-odd", "get-drop", *GET_ECHO_MODES)
ECHO_MODES = ("echo400", "echo401", "echo500", "echotext", "echostatus", *GET_ECHO_MODES)
MODES = ("ok", "500", "slow", "drop", "notjson", "badshape", "toolarge", "die", "trickle", "hugebody", "endless", "html502",
         "empty503", "huge500", "ctrl500", "redirect", "truncated", "empty", *STALL_MODES, *ANSWER_MODES, *GET_MODES, *ECHO_MODES)
STATUS_MESSAGES = {
    401: "Incorrect API key provided",
    403: "This key may not use this model",
    404: "The model 'm' does not exist",
    413: "Request Entity Too Large",
    429: "Rate limit reached for requests",
    500: "boom",
    503: "The server is overloaded",
}
CONTROL_MESSAGE = "bad\x1b[2J\x1b]0;owned\x07\r\nthing"


class State:
    def __init__(self) -> None:
        self.mode = "ok"
        self.every = 1
        self.ok_first = 0
        self.ok_at: tuple[int, ...] = ()
        self.slow_s = 2.0
        self.count = 0
        self.auth: list[str] = []
        self.bodies: list[Any] = []
        self.stalls: list[float] = []  # when each stalling answer began (time.monotonic)
        self.lock = threading.Lock()
        self.server: TrivialEmbeddingServer | None = None


STATE = State()


def texts_of(body: Any) -> int:
    """How many texts a request sent (either API)."""
    items = body.get("input", body.get("content")) if isinstance(body, dict) else None
    return len(items) if isinstance(items, list) else 1


def answer(path: str, mode: str, n: int) -> Any:
    """The JSON answer a shape mode sends to n texts on ``path``."""
    if mode in _TOPS:
        return _TOPS[mode]
    openai = path == "/v1/embeddings"
    vectors: Vectors = [list(VECTOR) for _ in range(n)]
    indexes: Indexes = list(range(n))
    if mode in _SHAPES:
        vectors, indexes = _SHAPES[mode](vectors, indexes)
    items: list[Any] = []
    for vector, index in zip(vectors, indexes):
        # llama.cpp nests a pooled vector in a list of one; "pertoken" sends one vector per token as it
        # does with --pooling none (for OpenAI, a list of vectors where one belongs).
        embedding = [vector, vector] if mode == "pertoken" else vector if openai or isinstance(vector, str) else [vector]
        item: dict[str, Any] = {"object": "embedding", "embedding": embedding} if openai else {"embedding": embedding}
        if index is not None:
            item["index"] = index
        items.append(item)
    if mode == "itemnotobject":
        items = [item["embedding"] for item in items]
    elif mode == "noembedding":
        items[0].pop("embedding")
    if openai:
        return {"object": "list", "data": items, "model": "m", "usage": {"prompt_tokens": n, "total_tokens": n}}
    return items


class FaultHandler(TrivialHandler):
    state: State  # set on the subclass that start() makes for each server

    def do_GET(self) -> None:  # noqa: N802
        mode = self.state.mode
        on_models = self.path == "/v1/models"
        auth = self.headers.get("Authorization", "")
        if mode == "get-drop":
            self.close_connection = True
            self.connection.close()
        elif mode == "get-echostatus":
            self._broken_status(auth)
        elif mode == "health-404" and self.path == "/health":
            self._send(404, b"File Not Found", "text/plain")
        elif mode == "metrics-nan" and self.path == "/metrics":
            self._send(200, METRICS_NAN, "text/plain")
        elif mode.startswith("models-") and on_models:
            self._models(mode)
        elif mode == "props-echo" and self.path == "/props":
            self._send(200, json.dumps({"build_info": f"b1 {auth}", "model_path": f"/models/{auth}.gguf"}).encode())
        elif mode.startswith("props-") and self.path == "/props":
            odd = {"default_generation_settings": "big", "n_ctx": "a lot", "build_info": [[[1]]], "model_path": 5}
            self._send(200, json.dumps([] if mode == "props-list" else odd).encode())
        else:
            super().do_GET()

    def _models(self, mode: str) -> None:
        if mode == "models-html":
            self._send(200, b"<!doctype html><title>Welcome</title>", "text/html")
        elif mode == "models-401":
            self._send(401, json.dumps({"error": {"message": STATUS_MESSAGES[401]}}).encode())
        elif mode == "models-huge":
            self._declare_and_close(200, 300 * 2**20)
        elif mode == "models-echo":
            self._send(200, json.dumps({"data": [{"id": "model for " + self.headers.get("Authorization", "")}]}).encode())
        else:
            body = {"models-nodata": {"object": "list"}, "models-empty": {"data": []}, "models-noid": {"data": [{"object": "model"}]},
                    "models-badid": {"data": [{"id": 42}]}, "models-notobject": [{"id": "m"}]}[mode]
            self._send(200, json.dumps(body).encode())

    def do_POST(self) -> None:  # noqa: N802
        st = self.state
        with st.lock:
            st.count += 1
            n = st.count
            st.auth.append(self.headers.get("Authorization", ""))
        failing = st.mode not in ("ok", *GET_MODES) and n > st.ok_first and (n - st.ok_first) % st.every == 0 and n not in st.ok_at
        body = self._body()
        with st.lock:
            st.bodies.append(body)
        if not failing:
            return self._answer(body)
        try:
            self._fail(st, body)
        except OSError:  # the client gave up (a timeout, a refused answer): nothing more to send
            self.close_connection = True

    def _fail(self, st: State, body: Any) -> None:
        mode = st.mode
        auth = self.headers.get("Authorization", "")
        if mode.startswith("echo") and mode[4:].isdigit():
            status = int(mode[4:])
            error = {"error": {"code": status, "message": f"invalid token: {auth}", "type": "invalid_request_error"}}
            self._send(status, json.dumps(error).encode(), reason=f"Bad token {auth}")
        elif mode == "echotext":
            self._send(200, f"invalid token: {auth}".encode(), "text/plain")
        elif mode == "echostatus":
            self._broken_status(auth)
        elif mode.isdigit():
            status = int(mode)
            message = STATUS_MESSAGES.get(status, f"status {status}")
            self._send(status, json.dumps({"error": {"code": status, "message": message, "type": "server_error"}}).encode())
        elif mode == "toolarge":
            msg = "input (600 tokens) is too large to process. increase the physical batch size (current batch size: 512)"
            self._send(500, json.dumps({"error": {"code": 500, "message": msg, "type": "server_error"}}).encode())
        elif mode == "html502":
            page = b"<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center></body></html>"
            self._send(502, page, "text/html")
        elif mode == "empty503":
            self._send(503, b"")
        elif mode == "huge500":
            self._send(500, json.dumps({"error": {"message": "A" * (4 * 2**20)}}).encode())
        elif mode == "ctrl500":
            self._send(500, json.dumps({"error": {"message": CONTROL_MESSAGE}}).encode())
        elif mode == "redirect":
            self.send_response(307)
            self.send_header("Location", "http://elsewhere.invalid/v1/embeddings")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif mode == "slow":
            time.sleep(st.slow_s)
            self._answer(body)
        elif mode == "drop":
            self.close_connection = True
            self.connection.close()
        elif mode == "trickle":
            self._trickle()
        elif mode == "hugebody":
            self._declare_and_close(200, 300 * 2**20)
        elif mode == "endless":
            self._endless()
        elif mode in STALL_MODES:
            self._stall(mode)
        elif mode == "notjson":
            self._send(200, b"<html>proxy error</html>", "text/html")
        elif mode == "truncated":
            whole = json.dumps(answer(self.path, "ok", texts_of(body))).encode()
            self._send(200, whole[: len(whole) // 2])
        elif mode == "empty":
            self._send(200, b"")
        elif mode in ANSWER_MODES:
            self._send(200, json.dumps(answer(self.path, mode, texts_of(body))).encode())
        elif mode == "die":
            self.close_connection = True
            self.connection.close()
            server = st.server
            if server is not None:  # stop serving and close the port: later connects are refused
                def die() -> None:
                    server.httpd.shutdown()
                    server.httpd.server_close()

                threading.Thread(target=die, daemon=True).start()

    def _send(self, status: int, body: bytes, content_type: str = "application/json", reason: str | None = None) -> None:
        self.send_response(status, reason)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _broken_status(self, auth: str) -> None:
        """A status line that is no HTTP, quoting the credentials: the client's parser quotes it back."""
        self.close_connection = True
        self.wfile.write(f"HTTP/1.1 abc {auth}\r\n\r\n".encode())

    def _declare_and_close(self, status: int, length: int) -> None:
        """Headers that promise ``length`` bytes, a few of them, then the end of the connection."""
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(b'{"data": [')
        self.close_connection = True

    def _trickle(self) -> None:
        """A byte every 50 ms: each read comes in time, the whole answer would take minutes."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "4000")
        self.end_headers()
        self.close_connection = True
        for _ in range(60):  # at most 3 s: the client gives up long before
            self.wfile.write(b" ")
            self.wfile.flush()
            time.sleep(0.05)

    def _stall(self, mode: str) -> None:
        """An answer that never ends, a piece every STALL_S: each read of the client's comes in time."""
        self.close_connection = True
        first, piece = {
            "endless1xx": (b"", b"HTTP/1.1 102 Processing\r\n\r\n"),
            "dribble": (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n", b"X-Stall: x\r\n"),
            "drip": (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n", b" "),
            "endless-status": (b"HTTP/1.1 200 ", b"O"),
        }[mode]
        self.wfile.write(first)
        self.wfile.flush()
        with self.state.lock:
            self.state.stalls.append(time.monotonic())
        until = time.monotonic() + STALL_MAX_S
        while time.monotonic() < until:
            self.wfile.write(piece)  # an OSError once the client has gone ends the handler
            self.wfile.flush()
            time.sleep(STALL_S)

    def _endless(self) -> None:
        """A chunked answer without a declared length that goes on to 64 MiB."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.close_connection = True
        chunk = b" " * 2**20
        for _ in range(64):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        self.wfile.write(b"0\r\n\r\n")


class FaultServer(TrivialEmbeddingServer):
    """The trivial server's handler class, misbehaving as ``state`` says, served on a thread of its own (``thread``)
    with a short poll: shutting the server down waits for one, and the fault tests start many servers."""

    state: State

    def __enter__(self) -> FaultServer:
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="embprof-fault-server",
                                       daemon=True)
        self.thread.start()
        return self


def start(mode: str = "ok", **settings: Any) -> FaultServer:
    global STATE
    if mode not in MODES and not mode.isdigit():
        raise ValueError(f"unknown fault mode {mode!r}")
    state = State()
    state.mode = mode
    for k, v in settings.items():
        if not hasattr(state, k):
            raise TypeError(f"unknown fault server setting {k!r}")
        setattr(state, k, v)
    handler = type("BoundFaultHandler", (FaultHandler,), {"state": state})
    server = FaultServer(handler)
    server.state = state
    state.server = server
    STATE = state
    server.__enter__()
    return server
