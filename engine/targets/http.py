"""Embedding servers as targets: llama.cpp's native `POST /embedding` and the OpenAI-compatible
`POST /v1/embeddings` (served by llama.cpp, vLLM, TEI, Infinity …), over one httpx client with
connection reuse and timeouts.

Every request is an event (RequestTimed): wall time from send to parsed response, bytes each way,
items, the tokens the server reports, the status, and for a failure its kind. Prompts are applied
client-side, as sentence-transformers applies them for a local model. What is sent, how an answer
is read and how secrets are kept out of every message is the server protocol's (protocol.py),
shared with the load generator's asynchronous client; this module is the synchronous client.
No answer is read past a size limit.

--timeout bounds a whole request, from its connect to its last byte, whatever the server sends
meanwhile (informational answers without end, header lines or a body a byte at a time, a status line
never finished); a stop of the run ends a request within STOP_POLL_S. httpx's own timeouts hold for
each read alone, and a blocked read cannot be woken from another thread, so the client's sockets are
its own (a network backend for httpcore's pool): each wait on a socket lasts no longer than what is
left of its request, and no longer than STOP_POLL_S where a stop may come. Connections are still
kept alive between requests.
"""

from __future__ import annotations

import errno
import math
import os
import re
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpcore

import numpy as np
import orjson

from ..context import RunContext
from ..errors import PartialFailure, RunCancelled, UserError
from ..events import BatchTimed, EncodeTimed, Note, RequestTimed, Result
from ..plan import EncodeMode, ServerTarget, strip_credentials
from ..results import RequestErrors, ServerMetrics, TargetFacts
from ..stats import known_sum
from . import protocol
from .base import Capabilities, EncodeOutcome, bundled_model_dir, default_prompt_name, resolve_prompt_text
from .discover import Api, Found, discover
from .token_counts import CountCheck, Counter, folder_counter
from .local import declared_prompts_of
from .protocol import (
    MODEL_ID_CHARS,
    BadBody,
    BadShape,
    Failure,
    Width,
    clip,
    embeddings_of,
    is_count,
    reason,
)

__all__ = ["HttpTarget", "RequestOutcome", "ServerFault", "find_listening_pid"]

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "0.0.0.0")


class ServerFault(PartialFailure):
    """More failed requests than --max-errors allows; everything measured until then is kept."""


def find_listening_pid(port: int) -> int | None:
    """The local process listening on a TCP port, if this user may see it."""
    import psutil

    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return int(conn.pid)
    except (psutil.AccessDenied, PermissionError):
        return None
    return None


def _classify(exc: Exception) -> str:
    import httpx

    if isinstance(exc, _Oversize):
        return BadBody.kind
    # Anything else that stops an answer arriving (refused, reset, closed mid-body) is the connection's.
    return "timeout" if isinstance(exc, httpx.TimeoutException) else "connection"


class _Oversize(Exception):
    """An answer longer than what is read of it."""

    def __init__(self, limit: int, declared: int | None = None) -> None:
        super().__init__(protocol.oversize_message(limit, declared))


def _read_capped(response: Any, limit: int, *, cut: bool = False) -> bytes:
    """The body of a streamed response, never more than ``limit`` bytes of it.

    Past the limit the answer is refused (_Oversize) or, with ``cut``, its start is kept and the
    rest left unread (the connection then closes). A declared length over the limit is refused
    before anything is read. How long the body may take is the request's bound (_Bound).
    """
    declared = protocol.declared_length(response.headers.get("content-length"))
    if not cut and declared is not None and declared > limit:
        raise _Oversize(limit, declared)
    parts: list[bytes] = []
    size = 0
    for part in response.iter_bytes():
        size += len(part)
        if size > limit:
            if not cut:
                raise _Oversize(limit)
            parts.append(part[: len(part) - (size - limit)])
            break
        parts.append(part)
    return b"".join(parts)


# -- one request's bound, on the sockets that carry it --------------------------------------------------------------
# How long a wait on a socket lasts at most before it looks at the run's stop flag again: a stop ends a
# request well within the 2 s a stop may take, and a wake-up every 50 ms costs nothing beside a request.
STOP_POLL_S = 0.05
# llama.cpp's end counters (/metrics) at the end of a run, and after a stop: a stop ends the run within
# 2 s, and a server that stalls must not take that time.
METRICS_S = 5.0
STOPPED_METRICS_S = 0.5
# The phase in which llama.cpp's start counters are read again after a warm-up (count_from_here): a run
# that has it counted its /metrics totals from there; one without, from the connect.
COUNTERS_PHASE = "server counters"
# httpcore's trace events (its module's name, then the step's) and the part of the request each begins.
_STAGES = {"connection.connect_tcp": "connect", "connection.start_tls": "connect", "http11.send_request_headers": "send",
           "http11.send_request_body": "send", "http11.receive_response_headers": "head", "http11.receive_response_body": "body"}
_INFORMATIONAL = re.compile(rb"HTTP/\d(?:\.\d)? 1\d\d\b")

_local = threading.local()  # the bound of the request this thread is sending, if any


class _Bound:
    """One request's limits: its deadline (--timeout from its start) and, where a stop may end it, the run's
    stop flag. The sockets read it from the thread that sends the request (httpx's synchronous client does
    all of a request's I/O on its caller's thread); httpcore's trace events say which part is under way."""

    __slots__ = ("deadline", "head", "received", "stage", "stop", "timeout_s")

    def __init__(self, timeout_s: float, stop: threading.Event | None, start: float | None = None) -> None:
        self.timeout_s = timeout_s
        self.deadline = (time.perf_counter() if start is None else start) + timeout_s
        self.stop = stop
        self.stage = "connect"
        self.received = 0
        self.head = b""  # the answer's first bytes: an informational (1xx) status says why no answer came

    def trace(self, event: str, _info: dict[str, Any]) -> None:
        step, _, moment = event.rpartition(".")
        if moment == "started" and step in _STAGES:
            self.stage = _STAGES[step]

    def took(self, data: bytes) -> None:
        if len(self.head) < 16:
            self.head += data[: 16 - len(self.head)]
        self.received += len(data)

    def wait(self, op_end: float | None, expired: type[Exception], op_message: str) -> float:
        """How long the next wait on a socket may last: to the request's deadline, to the operation's own
        timeout (``op_end``), and, where a stop may come, STOP_POLL_S. Raises RunCancelled once the run is
        stopped, ``expired`` (one sentence) once the deadline or the operation's timeout has passed."""
        if self.stop is not None and self.stop.is_set():
            raise RunCancelled()
        now = time.perf_counter()
        left = self.deadline - now
        if left <= 0:
            raise expired(self.message())
        if op_end is not None:
            if op_end <= now:
                raise expired(op_message)
            left = min(left, op_end - now)
        return min(left, STOP_POLL_S) if self.stop is not None else left

    def message(self) -> str:
        """Why the request was given up, as far as it had come."""
        t = f"{self.timeout_s:g} s (--timeout)"
        if self.stage == "connect":
            return f"no connection within {t}"
        if self.stage == "send":
            return f"the request was still being sent after {t}"
        if self.stage == "body":
            return f"the answer was still arriving after {t}"
        if not self.received:
            return f"no answer within {t}"
        if _INFORMATIONAL.match(self.head):
            return f"only informational (1xx) answers came within {t}, no final one"
        return (f"the answer's status line and headers were still arriving after {self.timeout_s:g} s "
                f"(--timeout; {self.received:,} bytes had come)")


def _current() -> _Bound | None:
    bound: _Bound | None = getattr(_local, "bound", None)
    return bound


@contextmanager
def _bounded(bound: _Bound) -> Iterator[_Bound]:
    """``bound`` holds for what this thread sends meanwhile."""
    previous = _current()
    _local.bound = bound
    try:
        yield bound
    finally:
        _local.bound = previous


def _op_end(timeout: float | None) -> float | None:
    return None if timeout is None else time.perf_counter() + timeout


def _ready(sock: socket.socket, write: bool, timeout: float | None) -> bool:
    """Whether ``sock`` can be written (``write``) or read within ``timeout`` seconds (None: no limit). poll
    where there is one: a descriptor past 1023 is fine, and a poll object costs no system call to make."""
    if not hasattr(select, "poll"):  # Windows
        ready = select.select([] if write else [sock], [sock] if write else [], [sock], timeout)
        return any(ready)
    poller = select.poll()
    poller.register(sock, select.POLLOUT if write else select.POLLIN)
    return bool(poller.poll(None if timeout is None else max(0, int(timeout * 1000 + 0.999))))


def _readable(sock: socket.socket) -> bool:
    """Whether a kept-alive connection has something to read (or is closed): the server closed it, or sent
    what was not asked for; either way it is not reused (httpcore asks before it sends on one)."""
    return sock.fileno() == -1 or _ready(sock, False, 0)


class _Stream(httpcore.NetworkStream):
    """A connection's socket for httpcore, each wait on it held to the sending thread's bound (none:
    httpcore's own timeout for the operation, as its own stream does)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        bound = _current()
        op_end = _op_end(timeout)
        while True:
            wait = timeout if bound is None else bound.wait(op_end, httpcore.ReadTimeout, "timed out")
            try:
                self._sock.settimeout(wait)
                data = self._sock.recv(max_bytes)
            except TimeoutError:  # socket.timeout: nothing came in this wait
                if bound is None:
                    raise httpcore.ReadTimeout("timed out") from None
                continue
            except OSError as exc:
                raise httpcore.ReadError(str(exc)) from exc
            if bound is not None:
                bound.took(data)
            return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        bound = _current()
        op_end = _op_end(timeout)
        view = memoryview(buffer)
        while view:
            wait = timeout if bound is None else bound.wait(op_end, httpcore.WriteTimeout, "timed out")
            try:
                self._sock.settimeout(wait)
                sent = self._sock.send(view)
            except TimeoutError:
                if bound is None:
                    raise httpcore.WriteTimeout("timed out") from None
                continue
            except OSError as exc:
                raise httpcore.WriteError(str(exc)) from exc
            view = view[sent:]

    def close(self) -> None:
        self._sock.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        bound = _current()
        op_end = _op_end(timeout)
        try:
            sock = ssl_context.wrap_socket(self._sock, server_hostname=server_hostname, do_handshake_on_connect=False)
            while True:  # the handshake, in waits as short as the bound asks: a stop is seen during it too
                slow = "the TLS handshake timed out"
                sock.settimeout(timeout if bound is None else bound.wait(op_end, httpcore.ConnectTimeout, slow))
                try:
                    sock.do_handshake()
                    break
                except TimeoutError:
                    if bound is None:
                        raise httpcore.ConnectTimeout(slow) from None
        except OSError as exc:  # ssl.SSLError among them
            self._sock.close()
            raise httpcore.ConnectError(str(exc)) from exc
        except BaseException:
            self._sock.close()
            raise
        return _Stream(sock)

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object":  # asked for the protocol it agreed (ALPN), which an SSLSocket answers itself
            return self._sock if isinstance(self._sock, ssl.SSLSocket) else None
        if info == "client_addr":
            return self._sock.getsockname()
        if info == "server_addr":
            return self._sock.getpeername()
        if info == "socket":
            return self._sock
        if info == "is_readable":
            return _readable(self._sock)
        return None


class _Backend(httpcore.NetworkBackend):
    """httpcore's connections, made as its synchronous backend makes them (TCP_NODELAY, the pool's socket
    options), with the connect held to the sending thread's bound too."""

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        bound = _current()
        op_end = _op_end(timeout)
        message = f"no connection within {timeout:g} s" if timeout is not None else "no connection"

        def wait() -> float | None:
            if bound is not None:
                return bound.wait(op_end, httpcore.ConnectTimeout, message)
            left = None if op_end is None else op_end - time.perf_counter()
            if left is not None and left <= 0:
                raise httpcore.ConnectTimeout(message)
            return left

        try:
            sock = _connect(host, port, local_address, wait)
        except OSError as exc:  # refused, unreachable, a name that does not resolve
            raise httpcore.ConnectError(str(exc)) from exc
        try:
            for option in socket_options or ():
                sock.setsockopt(*option)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except BaseException:
            sock.close()
            raise
        return _Stream(sock)

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("embprof connects to servers over TCP only")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


# What a non-blocking connect answers while its handshake is under way (WSAEWOULDBLOCK: Windows).
_CONNECTING = frozenset(c for c in (errno.EINPROGRESS, errno.EAGAIN, errno.EALREADY, errno.EINTR, errno.EWOULDBLOCK,
                                    getattr(errno, "WSAEWOULDBLOCK", None)) if c is not None)


def _connect(host: str, port: int, local_address: str | None, wait: Callable[[], float | None]) -> socket.socket:
    """A TCP connection to the first of the host's addresses that takes one, as socket.create_connection
    makes it, except that it waits for each in steps of ``wait()`` (which raises once it must not go on)."""
    error: OSError | None = None
    for family, kind, proto, _, address in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        try:
            if local_address:
                sock.bind((local_address, 0))
            sock.setblocking(False)
            code = sock.connect_ex(address)
            while code in _CONNECTING:
                if _ready(sock, True, wait()):
                    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                raise OSError(code, os.strerror(code))
            sock.setblocking(True)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
        except BaseException:
            sock.close()
            raise
    raise error if error is not None else OSError(f"{host} has no address to connect to")


def _transport(limits: Any) -> Any:
    """httpx's transport with the pool's connections made by _Backend. httpx takes no network backend, so
    the pool it made is replaced by httpcore's own, built as httpx builds it (its default TLS settings)."""
    import httpx

    transport = httpx.HTTPTransport(limits=limits)
    transport._pool = httpcore.ConnectionPool(  # the one way to give httpx's pool a backend (a declared foreign private)
        ssl_context=httpx.create_ssl_context(), max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections, keepalive_expiry=limits.keepalive_expiry,
        network_backend=_Backend())
    return transport


class HttpTarget:
    kind = "http"
    device: str | None = None  # where it computes is the server's business

    def __init__(self, spec: ServerTarget) -> None:
        self.spec = spec
        # What the server answered on connect (discover.py): the API, where it sits, which server it is.
        self._found: Found | None = None
        self.base = spec.url.rstrip("/")
        self.url = strip_credentials(self.base)
        self.server_pid = spec.server_pid
        self.errors = 0
        self.errors_by_kind: dict[str, int] = {}
        self._client: Any = None
        # The run's stop flag (from load()): a request under way when it is set ends within STOP_POLL_S.
        self._stop: threading.Event | None = None
        self._prompts: dict[str, str] | None = None
        self._last_prompt: str | None = None
        self._props: dict[str, Any] = {}
        self._model_name = spec.server_model
        self._metrics_start: dict[str, float] | None = None
        self._request_index = 0
        self._width = Width()  # every vector of this run as long as the first answer's
        # Vectors of all zeros met by similarity(): their cosine is undefined, which the run notes.
        self._zero_vectors = 0
        # What the server's reported counts are (tokens, or characters or words), judged request by request.
        self.counts = CountCheck()

    @property
    def api(self) -> Api:
        """The API this client speaks: what the server answered on connect, or --api before it (auto: asked then)."""
        if self._found is not None:
            return self._found.api
        if self.spec.api == "auto":
            raise RuntimeError("the server's API is found on connect: resolve() or load() first")
        return self.spec.api

    @property
    def capabilities(self) -> Capabilities:
        # llama.cpp's native /embedding reports no token counts; OpenAI's and Ollama's APIs say them in the answer, TEI's in a header.
        # Asked before the connect too (auto: the API is not known yet, and no count is promised).
        api = self._found.api if self._found is not None else self.spec.api
        return Capabilities(reports_tokens=api in ("openai", "ollama", "tei"), has_tokenizer=False, local_device=False,
                            server_process=True)

    # -- before the run ------------------------------------------------------------------------------
    def resolve(self) -> None:
        """Before the run: the URL answers (one sentence if not), and the local server's process is known."""
        protocol.api_key(self.spec)  # a key no header can carry is refused before anything is sent
        self._reach()
        if self.server_pid is not None:
            import psutil

            if not psutil.pid_exists(self.server_pid):
                raise UserError(f"--server-pid {self.server_pid}: no such process on this machine")
        if self.server_pid is None:
            parts = urlsplit(self.spec.url)
            if parts.hostname in LOCAL_HOSTS:
                port = parts.port or (443 if parts.scheme == "https" else 80)
                self.server_pid = find_listening_pid(port)

    def declared_prompts(self) -> dict[str, str] | None:
        return self.prompts

    @property
    def prompts(self) -> dict[str, str]:
        if self._prompts is None:
            self._prompts = {}
            if self.spec.prompts_from:
                declared = declared_prompts_of(self.spec.prompts_from)
                if declared is None:
                    raise UserError(f"--prompts-from '{self.spec.prompts_from}': its prompts cannot be read without downloading it")
                self._prompts = declared
        return self._prompts

    @property
    def max_seq_length(self) -> int | None:
        settings = self._props.get("default_generation_settings")
        n = settings.get("n_ctx") if isinstance(settings, dict) else None
        if not is_count(n):
            n = self._props.get("n_ctx")
        return int(n) if is_count(n) and n else None

    def redact(self, text: str) -> str:
        """``text`` with every credential of this server replaced by ***: the one pass every message from
        the server or the connection goes through before it leaves the target (or, for the load
        generator's records, before the load workload keeps them)."""
        return protocol.redact_secrets(self.spec, text)

    # -- the connection ---------------------------------------------------------------------------------
    def _new_client(self) -> Any:
        import httpx

        limits = httpx.Limits(max_keepalive_connections=64, max_connections=256)
        return httpx.Client(
            base_url=strip_credentials(self.base),
            headers={**protocol.BASE_HEADERS, **protocol.auth_header(self.spec)},
            auth=protocol.basic_auth(self.spec),
            timeout=httpx.Timeout(self.spec.timeout_s, connect=min(10.0, self.spec.timeout_s)),
            limits=limits,
            transport=_transport(limits),
        )

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self._new_client()
        return self._client

    def load(self, ctx: RunContext) -> None:
        """Reach the server once (its health or model list), learn what it says of itself."""
        self._stop = ctx.cancel_event
        with ctx.phase("connect", self.url):
            self._reach()
        self._metrics_start = self.read_counters()

    def count_from_here(self, ctx: RunContext) -> None:
        """Read llama.cpp's start counters again, now: the run's /metrics totals (ServerMetrics) then cover
        what follows, not what came before it (a warm-up), so that they divide by the timed requests alone."""
        if self._metrics_start is None:  # no /metrics at the connect: there is nothing to count
            return
        with ctx.phase(COUNTERS_PHASE, "llama.cpp /metrics: the totals count from here, after the warm-up"):
            self._metrics_start = self.read_counters(stoppable=True)  # a stop then leaves the run without totals

    def _bound(self, timeout_s: float | None = None, *, stoppable: bool = True) -> _Bound:
        """A request's bound: --timeout (or ``timeout_s``) from now, and the run's stop unless ``stoppable`` is False."""
        return _Bound(self.spec.timeout_s if timeout_s is None else timeout_s, self._stop if stoppable else None)

    def _get(self, path: str, limit: int = protocol.MAX_INFO_BYTES, bound: _Bound | None = None) -> tuple[int, bytes, str]:
        """A GET's status, its body read to no more than ``limit`` bytes, and the URL path that answered,
        all within ``bound`` (by default --timeout, ended by a stop)."""
        client = self.client  # made before the bound starts: a new client's setup (httpx's import) is not the request
        bound = bound or self._bound()
        with _bounded(bound), client.stream("GET", path, extensions={"trace": bound.trace}) as r:
            return r.status_code, _read_capped(r, limit), r.url.path

    def _reach(self) -> None:
        """One sentence (a UserError) for every way the server can fail to be one, before anything is measured."""
        try:
            self._reach_once()
        except UserError as exc:
            raise UserError(self.redact(str(exc))) from None

    def _reach_once(self) -> None:
        import httpx

        where = ""

        def get(path: str) -> tuple[int, bytes, str]:
            nonlocal where
            where = path  # what a failure of the connection names
            status, body, answered = self._get(path)
            return status, body, self.redact(answered)

        try:
            self._found = discover(get, self.url, self.spec.api, self._model_name)
        except httpx.ConnectError as exc:
            raise UserError(f"cannot connect to {self.url}: {reason(exc, self.redact)} (is the server running?)") from None
        except httpx.TimeoutException as exc:
            raise UserError(f"{self.url}{where} did not answer in time ({reason(exc, self.redact)})") from None
        except (UnicodeError, httpx.InvalidURL) as exc:  # a host name no resolver takes (IDNA: an empty or long label)
            raise UserError(f"cannot connect to {self.url}: its host name is not valid ({reason(exc, self.redact)})") from None
        except httpx.HTTPError as exc:  # closed without answering, a broken HTTP answer …
            raise UserError(f"the connection to {self.url} failed at {where}: {reason(exc, self.redact)}") from None
        except _Oversize as exc:
            raise UserError(f"{self.url}{where} answered with too much ({exc}): is it an embedding server?") from None
        except BadBody:
            raise UserError(f"{self.url}{where} answered with something that is not JSON: is it an embedding server?") from None
        except BadShape as exc:
            raise UserError(f"{self.url}{where} is not what an embedding server answers ({exc}): is it a llama.cpp server?") from None
        self._props = self._found.props
        if self._model_name is None:
            self._model_name = self._found.model
        if not self.counts.has_counter and not self.counts.requests:
            # The server is reached twice (resolve, then load): its tokenizer is found and read once.
            self.counts = CountCheck(*self._counter())

    def check_counts_with(self, model: str) -> None:
        """Check the server's counts with ``model``'s tokenizer (--compare-model, the model it is said to serve), where
        no tokenizer checks them yet and no count was judged."""
        if self.counts.has_counter or self.counts.requests:
            return
        from .local import tokenizer_folder

        folder = tokenizer_folder(model) if model != "bundled" else Path(bundled_model_dir())
        counter = folder_counter(folder) if folder is not None else None
        if counter is not None:
            self.counts = CountCheck(counter, "all-MiniLM-L6-v2 (bundled)" if model == "bundled" else model)

    def _counter(self) -> tuple[Counter | None, str | None]:
        """A tokenizer of the served model to check the server's counts with: --prompts-from's folder, or llama.cpp's own
        /tokenize where the server is llama.cpp (asked only for the first requests' texts)."""
        if self.spec.prompts_from:
            from .local import tokenizer_folder

            folder = tokenizer_folder(self.spec.prompts_from)
            counter = folder_counter(folder) if folder is not None else None
            if counter is not None:
                return counter, self.spec.prompts_from
        if self._found is not None and self._found.software == "llama.cpp":
            def tokenize(texts: Sequence[str]) -> int | None:
                lengths = self._tokenize(texts, None)
                return sum(lengths) if len(lengths) == len(texts) else None

            return tokenize, "llama.cpp's /tokenize"
        return None, None

    def read_counters(self, *, stoppable: bool = False) -> dict[str, float] | None:
        """llama.cpp's own counters from /metrics (started with --metrics); None when it is off. Asked at the
        run's start and end, and at the end even after a stop (briefly: a stop ends the run within 2 s);
        ``stoppable``: asked mid-run, where a stop ends the wait at once."""
        if self.api != "llama":
            return None
        stopped = self._stop is not None and self._stop.is_set()
        limit = min(STOPPED_METRICS_S if stopped else METRICS_S, self.spec.timeout_s)
        try:
            status, body, _ = self._get("/metrics", bound=self._bound(limit, stoppable=stoppable))
        except Exception:  # the counters are extra facts: a server that fails them fails nothing else
            return None
        if status != 200:
            return None
        out: dict[str, float] = {}
        for line in body.decode("utf-8", "replace").splitlines():
            if line.startswith("#") or not line.strip():
                continue
            name, _, value = line.rpartition(" ")
            try:
                number = float(value)
            except ValueError:
                continue
            # A rate over no time yet reads NaN or Inf; JSON holds neither, and a snapshot holding one as null
            # could not be read back: a counter without a number is left out.
            if math.isfinite(number):
                out[name.strip()] = number
        return out

    # -- facts ---------------------------------------------------------------------------------------------
    def describe(self) -> TargetFacts:
        facts: dict[str, Any] = {
            "backend": "http",
            # Before the connect (the run's first facts) an API of auto is not known yet; the facts after it say it.
            "api": self._found.api if self._found is not None else self.spec.api,
            "api_path": self.payload([])[0] if self._found is not None or self.spec.api != "auto" else None,
            "api_found": self._found.how if self._found is not None else None,
            "server_software": self._found.software if self._found is not None else None,
            "url": self.url,
            # The server's own name for its model, which it could make anything.
            "model_name": self.redact(self._model_name or self._server_model_file() or self.url),
            "server_pid": self.server_pid,
            "prompts_from": self.spec.prompts_from,
            "prompt_names": tuple(sorted(self.prompts)),
            "timeout_s": self.spec.timeout_s,
            "max_errors": self.spec.max_errors,
            "api_key_env": self.spec.api_key_env,  # the variable's name only, never its value
        }
        if self._props:
            facts["server_n_ctx"] = self.max_seq_length
            build = self._props.get("build_info")
            # Only plain values are taken from /props: a server's nested value is no build name.
            facts["server_build"] = clip(self.redact(str(build)), MODEL_ID_CHARS) if isinstance(build, (str, int, float)) else None
            facts["server_model_file"] = self._server_model_file()
        return TargetFacts(**facts)

    def _server_model_file(self) -> str | None:
        path = self._props.get("model_path")
        return clip(self.redact(os.path.basename(path)), MODEL_ID_CHARS) if isinstance(path, str) and path else None

    def default_prompt_for(self, mode: EncodeMode) -> str | None:
        return default_prompt_name(self.prompts, mode)

    @property
    def last_prompt(self) -> str | None:
        return self._last_prompt

    # -- work ----------------------------------------------------------------------------------------------
    def prompt_text(self, mode: EncodeMode, prompt_name: str | None, prompt: str | None) -> str | None:
        """Prompts are applied client-side, as sentence-transformers applies them for a local model."""
        return resolve_prompt_text(self.prompts, prompt_name or self.default_prompt_for(mode), prompt,
                                   "the prompts known for this server (--prompts-from MODEL)")

    def encode(
        self,
        ctx: RunContext,
        texts: Sequence[str],
        *,
        mode: EncodeMode = "plain",
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int = 32,
        label: str = "encode",
        group: str = "",
        warmup: bool = False,
    ) -> EncodeOutcome:
        prefix = self.prompt_text(mode, prompt_name, prompt)
        self._last_prompt = prefix
        inputs = [(prefix or "") + t for t in texts]
        call_index = ctx.next_call_index()
        vectors: list[np.ndarray] = []
        # Unknown until the server says: a server that reports no counts leaves the total unknown, not 0.
        tokens_total: int | None = 0
        batches = 0
        start = time.perf_counter_ns()
        for b, lo in enumerate(range(0, len(inputs), batch_size)):
            ctx.check_cancel()
            chunk = inputs[lo : lo + batch_size]
            vecs, tokens, took_ns = self.request(ctx, chunk, call_index=call_index, warmup=warmup, group=group)
            vectors.append(vecs)
            tokens_total = known_sum(tokens_total, tokens)
            batches += 1
            # A server pads (or not) as it likes: padding is not measurable from here.
            ctx.emit(
                BatchTimed(t_ns=ctx.now(), phase_id=ctx.phase_id, call_index=call_index, batch_index=b, items=len(chunk),
                           tokens=tokens, padded_tokens=None, duration_ns=took_ns, warmup=warmup, group=group)
            )
        duration = time.perf_counter_ns() - start
        ctx.emit(
            EncodeTimed(t_ns=ctx.now(), phase_id=ctx.phase_id, call_index=call_index, label=label, items=len(texts),
                        tokens=tokens_total, words=sum(len(t.split()) for t in texts), duration_ns=duration, warmup=warmup,
                        group=group)
        )
        # Every answer's rows have the run's one length (parse checks it), so they stack.
        embeddings = np.concatenate(vectors) if vectors else np.asarray([], dtype=np.float32)
        return EncodeOutcome(embeddings=embeddings, duration_ns=duration, tokens=tokens_total, batches=batches)

    def request(
        self, ctx: RunContext | None, chunk: list[str], *, call_index: int = 0, warmup: bool = False, group: str = ""
    ) -> tuple[np.ndarray, int | None, int]:
        """One request, retried while --max-errors allows; each try is a RequestTimed event.
        Returns the vectors (one row per text), the tokens the server reported, and the answered try's duration."""
        while True:
            outcome = self.try_request(chunk)
            if ctx is not None:
                ctx.emit(outcome.event(ctx, call_index, self._request_index, warmup, group))
                if outcome.decided:  # what the counts are, said as soon as it is known: the dashboard's labels say it
                    verdict = self.counts.result()
                    if verdict is not None:
                        ctx.emit(Result(t_ns=ctx.now(), result=verdict))
            self._request_index += 1
            if not outcome.error_kind and outcome.vectors is not None:
                return outcome.vectors, outcome.tokens, outcome.duration_ns
            self.errors += 1
            self.errors_by_kind[outcome.error_kind] = self.errors_by_kind.get(outcome.error_kind, 0) + 1
            if self.errors > self.spec.max_errors:
                raise ServerFault(f"request failed ({outcome.error_kind}): {outcome.error}" + (
                    f"; {self.errors} failed requests, more than --max-errors {self.spec.max_errors}" if self.spec.max_errors else ""))

    def payload(self, chunk: list[str]) -> tuple[str, dict[str, Any]]:
        """The path and body of one request for ``chunk`` (the load workload sends the same bodies)."""
        return protocol.request_payload(self.api, chunk, self._model_name, self._found.prefix if self._found is not None else "/v1")

    def try_request(self, chunk: list[str]) -> RequestOutcome:
        """One request, never raising for what the server or the connection did: the vectors, or the failure's
        kind and one sentence (a request past --timeout is a "timeout"). A stop of the run while it is under
        way raises RunCancelled within STOP_POLL_S: the request is then no one's failure and is not counted."""
        path, body = self.payload(chunk)
        data = orjson.dumps(body)
        client = self.client  # made before the clock starts: a new client's setup is not the request
        status: int | None = None
        raw = b""

        def failed(kind: str, message: str) -> RequestOutcome:
            # Every failure's sentence passes here: whatever part of it came from the server is redacted.
            return RequestOutcome(duration_ns=time.perf_counter_ns() - t0, items=len(chunk), sent=len(data), received=len(raw),
                                  status=status, error_kind=kind, error=self.redact(message))

        t0 = time.perf_counter_ns()
        # --timeout from here, for the connect (if one is needed), the sending and every byte of the answer.
        bound = _Bound(self.spec.timeout_s, self._stop, t0 / 1e9)  # perf_counter_ns and perf_counter: one clock
        try:
            with _bounded(bound), client.stream("POST", path, content=data, extensions={"trace": bound.trace}) as r:
                status = r.status_code
                # Of an error answer only the start is read, and read to its limit without refusing it.
                if 200 <= status < 300:
                    raw = _read_capped(r, protocol.MAX_ANSWER_BYTES)
                else:
                    raw = _read_capped(r, protocol.MAX_ERROR_BYTES, cut=True)
                phrase, location, answered = r.reason_phrase or "", r.headers.get("location", ""), r.url.path
                header_tokens = protocol.header_tokens(self.api, r.headers)
            received = time.perf_counter_ns() - t0
        except RunCancelled:  # the run was stopped while this request was under way: it is no failure of the server's
            raise
        except Exception as exc:  # whatever stopped the answer arriving is this request's failure, not the run's crash
            return failed(_classify(exc), reason(exc, self.redact))
        answer = protocol.classify_answer(status, raw, len(chunk), self.api, reason_phrase=phrase, location=location,
                                          path=answered, width=self._width, redact=self.redact)
        if isinstance(answer, Failure):
            return failed(answer.kind, answer.message)
        took = time.perf_counter_ns() - t0
        reported = answer.tokens if answer.tokens is not None else header_tokens
        tokens, decided = self.counts.take(chunk, reported)  # after the clock: a check against a tokenizer is not the request
        return RequestOutcome(duration_ns=took, items=len(chunk), sent=len(data), received=len(raw), status=status,
                              vectors=answer.matrix, tokens=tokens, received_ns=received, decided=decided)

    def parse(self, parsed: Any, n: int) -> tuple[np.ndarray, int | None]:
        """A decoded answer as (n × dim float32 matrix, tokens reported), its dim the same as the run's
        earlier answers; a BadShape otherwise."""
        vectors, tokens = embeddings_of(parsed, n, self.api)
        if n:
            self._width.check(int(vectors.shape[1]))
        return vectors, tokens

    def token_lengths(self, texts: Sequence[str], prompt: str | None) -> list[int]:
        """llama.cpp's own tokenizer through /tokenize; nothing for other servers."""
        if self.api != "llama" or len(texts) > 2000:
            return []
        return self._tokenize(texts, prompt)

    def _tokenize(self, texts: Sequence[str], prompt: str | None) -> list[int]:
        """The token count of each text (``prompt`` before it) by llama.cpp's /tokenize, with the special tokens; [] when
        any one fails."""
        out = []
        client = self.client
        for t in texts:
            bound = self._bound()
            try:
                with _bounded(bound), client.stream("POST", "/tokenize", json={"content": (prompt or "") + t, "add_special": True},
                                                    extensions={"trace": bound.trace}) as r:
                    tokens = orjson.loads(_read_capped(r, protocol.MAX_INFO_BYTES))["tokens"]
            except RunCancelled:
                raise
            except Exception:  # token counts are extra facts: without them the run reports none
                return []
            if not isinstance(tokens, list):
                return []
            out.append(len(tokens))
        return out

    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Cosine similarity of every row of ``a`` with every row of ``b``.

        A server may send a vector of all zeros, which has no direction: its cosine with anything is
        undefined. It scores 0, as sentence-transformers' cos_sim scores it for a local model (its
        normalization leaves a zero vector zero), and finish() notes how many there were. NaN would
        not do: it has no place in the snapshot's JSON.
        """
        # float64: the squares of float32's largest numbers and of its subnormals stay in range.
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        norm_a = np.linalg.norm(a, axis=1, keepdims=True)
        norm_b = np.linalg.norm(b, axis=1, keepdims=True)
        self._zero_vectors += int((norm_a == 0).sum() + (norm_b == 0).sum())
        with np.errstate(all="ignore"):  # a zero row is divided by 1 below: nothing should warn; if it did, not on stderr
            a = a / np.where(norm_a > 0, norm_a, 1.0)
            b = b / np.where(norm_b > 0, norm_b, 1.0)
            return np.asarray(a @ b.T)

    def finish(self, ctx: RunContext) -> None:
        """The request errors (first: they are this client's own count, and nothing the server does at the end
        may cost them), and what the server counted while the run went on (its /metrics)."""
        ctx.emit(Result(t_ns=ctx.now(), result=RequestErrors(errors=self.errors, errors_by_kind=dict(self.errors_by_kind))))
        verdict = self.counts.result()
        if verdict is not None:  # with every request's tally
            ctx.emit(Result(t_ns=ctx.now(), result=verdict))
            if verdict.counts != "tokens":
                ctx.emit(Note(t_ns=ctx.now(), level="warning", text=(
                    f"the server reports its texts' {verdict.counts} where tokens belong ({verdict.matched} of {verdict.requests} "
                    f"requests' counts equal their {verdict.counts}): no tokens/s is made of them"
                    + (" (infinity counts tokens when started with --lengths-via-tokenize)" if verdict.counts == "characters"
                       and self._found is not None and self._found.software == "infinity" else ""))))
        if self._zero_vectors:
            ctx.emit(Note(t_ns=ctx.now(), level="warning", text=(
                f"the server sent {self._zero_vectors} vector(s) of all zeros: a zero vector's cosine similarity is "
                "undefined, and its scores read 0 (as sentence-transformers scores it); its ranking means nothing")))
        end = self.read_counters()
        if self._metrics_start is not None and end is not None:
            delta = {k: end[k] - self._metrics_start.get(k, 0.0) for k in end if k.startswith("llamacpp:")}
            ctx.emit(Result(t_ns=ctx.now(), result=ServerMetrics(start=self._metrics_start, end=end, delta=delta)))

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


@dataclass
class RequestOutcome:
    duration_ns: int
    items: int
    sent: int
    received: int
    status: int | None
    vectors: np.ndarray | None = None  # float32, one row per text, when the request succeeded
    tokens: int | None = None
    error_kind: str = ""
    error: str = ""
    received_ns: int | None = None
    decided: bool = False  # this request's count decided what the server's counts are (CountCheck.take)

    def event(self, ctx: RunContext, call_index: int, request_index: int, warmup: bool, group: str = "") -> RequestTimed:
        return RequestTimed(
            t_ns=ctx.now(), phase_id=ctx.phase_id, call_index=call_index, request_index=request_index, items=self.items,
            duration_ns=self.duration_ns, status=self.status, bytes_sent=self.sent, bytes_received=self.received,
            tokens=self.tokens, received_ns=self.received_ns, error_kind=self.error_kind, error=self.error, warmup=warmup,
            group=group,
        )
